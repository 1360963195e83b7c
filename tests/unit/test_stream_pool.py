"""backends/stream.py against a scripted raw HTTP server on loopback: events as they arrive, keep-alive
reuse and when not to, bodies ended by a close, [DONE] without the end of the message, timeouts (and
none while we stopped reading), error bodies, and every way a response can break."""

import asyncio
import gc
import re
import ssl
import weakref
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from storegate.backends.stream import StreamPool
from storegate.errors import BackendFailed, BackendTimeout, StoregateError

Answer = Callable[[asyncio.StreamWriter], Awaitable[bool]]  # True: close the connection afterwards
HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
END = b"0\r\n\r\n"
GZIPPED = HEAD.replace(b"\r\n\r\n", b"\r\nContent-Encoding: gzip\r\n\r\n")


def chunk(payload: bytes) -> bytes:
    return b"%x\r\n%b\r\n" % (len(payload), payload)


def events(*datas: bytes) -> bytes:
    return b"".join(chunk(b"data: " + d + b"\n\n") for d in datas)


def send(*parts: bytes, close: bool = False, pause: float = 0.0) -> Answer:
    async def answer(writer: asyncio.StreamWriter) -> bool:
        for i, part in enumerate(parts):
            if i and pause:
                await asyncio.sleep(pause)
            writer.write(part)
            await writer.drain()
        return close

    return answer


class Script:
    """Answers each request with the next answer; counts connections and keeps the requests."""

    def __init__(self, *answers: Answer) -> None:
        self.answers = list(answers)
        self.connections = 0
        self.closed = 0  # connections the client closed
        self.requests: list[bytes] = []

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            while self.answers:
                head = await reader.readuntil(b"\r\n\r\n")
                found = re.search(rb"Content-Length: (\d+)", head)
                body = await reader.readexactly(int(found.group(1)) if found else 0)
                self.requests.append(head + body)
                if await self.answers.pop(0)(writer):
                    return  # and close
            await reader.read()  # hold the connection until the client closes it
            self.closed += 1
        except (asyncio.IncompleteReadError, ConnectionError):
            self.closed += 1
        finally:
            writer.close()


async def serve(script: Script) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(script.handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


def pool_for(port: int, read_timeout: float = 5.0, total: float | None = None, *,
             origin: str = "http://127.0.0.1") -> StreamPool:  # fmt: skip
    return StreamPool("b", f"{origin}:{port}/v1/chat/completions", connect_timeout=2,
                      read_timeout=read_timeout, total_timeout=total)  # fmt: skip


async def exchange(
    pool: StreamPool, on_event: Callable[..., Any] | None = None, grace: float = 0.0
) -> list[bytes]:
    got: list[bytes] = []
    response = await pool.request(b'{"stream":true}', {"X-Request-Id": "req_1"})
    assert response.status == 200 and response.is_event_stream

    def sink(data: bytes) -> None:
        got.append(data)
        if on_event is not None:
            on_event(response, data)

    response.attach(sink)
    try:
        await response.done()
    finally:
        response.close(grace)
    return got


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(asyncio.wait_for(coro, 20))  # type: ignore[arg-type]


def two_in_a_row(script: Script, first: list[bytes], second: list[bytes], *, connections: int,
                 on_event: Callable[..., Any] | None = None, grace: float = 0.0, between: float = 0.0,
                 read_timeout: float = 5.0) -> int:  # fmt: skip
    """Two exchanges through one pool, `between` seconds apart; checks both streams' events and how
    many connections the backend saw. Returns the backend's port."""

    async def main() -> int:
        server, port = await serve(script)
        async with server:
            pool = pool_for(port, read_timeout=read_timeout)
            assert await exchange(pool, on_event, grace) == first
            if between:
                await asyncio.sleep(between)
            assert await exchange(pool) == second
            pool.close()
        assert script.connections == connections
        return port

    result: int = run(main())
    return result


def test_events_arrive_and_a_kept_alive_connection_is_reused() -> None:
    script = Script(send(HEAD + events(b"1", b"2"), events(b"[DONE]") + END), send(HEAD + events(b"3") + END))
    port = two_in_a_row(script, [b"1", b"2", b"[DONE]"], [b"3"], connections=1)
    first = script.requests[0]
    assert first.startswith(b"POST /v1/chat/completions HTTP/1.1\r\n")
    assert f"Host: 127.0.0.1:{port}\r\n".encode() in first and b"X-Request-Id: req_1\r\n" in first
    assert first.endswith(b'\r\n\r\n{"stream":true}')


def test_a_connection_the_backend_will_close_is_not_reused() -> None:
    closing = HEAD.replace(b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n")
    script = Script(send(closing + events(b"1") + END, close=True), send(HEAD + events(b"2") + END))
    two_in_a_row(script, [b"1"], [b"2"], connections=2)


def test_an_idle_connection_closed_by_the_backend_is_replaced() -> None:
    script = Script(send(HEAD + events(b"1") + END, close=True), send(HEAD + events(b"2") + END))
    # the close reaches us while the connection is idle, between the two
    two_in_a_row(script, [b"1"], [b"2"], connections=2, between=0.1)


def test_a_body_ended_by_the_close_delivers_every_event() -> None:
    async def main() -> None:
        head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n\r\n"
        script = Script(send(head, b"data: 1\n\n", b"data: 2\n\ndata: [DONE]\n\n", close=True, pause=0.05))
        server, port = await serve(script)
        async with server:
            assert await exchange(pool_for(port)) == [b"1", b"2", b"[DONE]"]

    run(main())


def test_stop_returns_at_done_even_if_the_message_stays_open() -> None:
    async def main() -> None:
        script = Script(send(HEAD + events(b"1", b"[DONE]")), send(HEAD + events(b"2") + END))

        def on_event(response: Any, data: bytes) -> None:
            if data == b"[DONE]":
                response.stop()

        server, port = await serve(script)
        async with server:
            pool = pool_for(port, read_timeout=10)
            assert await exchange(pool, on_event) == [b"1", b"[DONE]"]
            assert await exchange(pool) == [b"2"]  # the unfinished connection was not reused
            pool.close()
        assert script.connections == 2

    run(main())


def test_a_silent_backend_times_out() -> None:
    async def main() -> None:
        server, port = await serve(Script(send(HEAD + events(b"1"))))
        async with server:
            with pytest.raises(BackendTimeout):
                await exchange(pool_for(port, read_timeout=0.3))
        server2, port2 = await serve(Script(send(b"HTTP/1.1 200 OK\r\n")))  # headers never finish
        async with server2:
            with pytest.raises(BackendTimeout):
                await exchange(pool_for(port2, read_timeout=0.3))

    run(main())


def test_the_total_timeout_holds_even_while_events_flow() -> None:
    async def main() -> None:
        parts = [HEAD] + [events(b"x")] * 20 + [END]
        server, port = await serve(Script(send(*parts, pause=0.05)))
        async with server:
            with pytest.raises(BackendTimeout):
                await exchange(pool_for(port, read_timeout=5, total=0.4))

    run(main())


def test_no_read_timeout_while_we_have_stopped_reading() -> None:
    async def main() -> None:
        server, port = await serve(
            Script(send(HEAD + events(b"1"), events(b"2"), events(b"3") + END, pause=0.15))
        )
        loop = asyncio.get_running_loop()

        def on_event(response: Any, data: bytes) -> None:
            if data == b"1":  # a slow client: stop reading for longer than the read timeout
                response.pause()
                loop.call_later(0.9, response.resume)

        async with server:
            assert await exchange(pool_for(port, read_timeout=0.4), on_event) == [b"1", b"2", b"3"]

    run(main())


def test_an_error_answer_is_read_whole() -> None:
    async def main() -> None:
        body = b'{"error": {"message": "slow down"}}'
        answer = b"HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\nRetry-After: 7\r\n"
        server, port = await serve(Script(send(answer + b"Content-Length: %d\r\n\r\n" % len(body), body)))
        async with server:
            response = await pool_for(port).request(b"{}", {})
            assert (response.status, response.is_event_stream) == (429, False)
            assert response.headers["retry-after"] == "7"
            assert await response.body() == body
            response.close()

    run(main())


@pytest.mark.parametrize(
    ("answer", "when"),
    [
        pytest.param(send(b"this is not HTTP\r\n\r\n"), "request", id="malformed"),
        pytest.param(send(b"", close=True), "request", id="closed-before-answering"),
        pytest.param(send(HEAD + events(b"1") + b"5\r\nda", close=True), "done", id="cut-mid-chunk"),
        pytest.param(send(HEAD + events(b"1") + b"zz\r\n"), "done", id="bad-chunk-size"),
        pytest.param(send(GZIPPED), "request", id="compressed"),
    ],
)
def test_a_broken_response_fails_cleanly(answer: Answer, when: str) -> None:
    async def main() -> None:
        server, port = await serve(Script(answer))
        async with server:
            pool = pool_for(port)
            if when == "request":
                with pytest.raises(BackendFailed):
                    await pool.request(b"{}", {})
            else:
                with pytest.raises(BackendFailed):
                    await exchange(pool)

    run(main())


def test_a_sink_failure_fails_the_response_and_drops_the_connection() -> None:
    async def main() -> None:
        script = Script(send(HEAD + events(b"1", b"bad", b"3") + END), send(HEAD + events(b"4") + END))

        def on_event(response: Any, data: bytes) -> None:
            if data == b"bad":
                raise BackendFailed("a bad event")

        server, port = await serve(script)
        async with server:
            pool = pool_for(port)
            with pytest.raises(BackendFailed, match="a bad event"):
                await exchange(pool, on_event)
            assert await exchange(pool) == [b"4"]
            pool.close()
        assert script.connections == 2

    run(main())


def test_a_bug_in_the_sink_fails_the_response_and_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        def on_event(response: Any, data: bytes) -> None:
            raise KeyError(data)

        server, port = await serve(Script(send(HEAD + events(b"1") + END)))
        async with server:
            with pytest.raises(BackendFailed, match="KeyError"):
                await exchange(pool_for(port), on_event)

    run(main())
    assert "failed on our side" in caplog.text


def test_nothing_listening_and_line_breaks_in_headers_are_refused() -> None:
    async def main() -> None:
        server, port = await serve(Script())
        server.close()
        await server.wait_closed()
        with pytest.raises(BackendFailed, match="refused"):
            await pool_for(port).request(b"{}", {})
        with pytest.raises(StoregateError, match="control character"):
            await pool_for(port).request(b"{}", {"Authorization": "Bearer x\r\nX-Evil: 1"})

    run(main())


def test_https_checks_the_backend_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ca = trustme.CA()
    server_ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("localhost").configure_cert(server_ssl)
    ca_file = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_file))

    async def main() -> None:
        script = Script(send(HEAD + events(b"1") + END))
        server = await asyncio.start_server(script.handle, "127.0.0.1", 0, ssl=server_ssl)
        port = server.sockets[0].getsockname()[1]
        async with server:
            with pytest.raises(BackendFailed, match="TLS"):  # a CA the system does not trust
                await pool_for(port, origin="https://localhost").request(b"{}", {})
            monkeypatch.setenv("SSL_CERT_FILE", str(ca_file))
            assert await exchange(pool_for(port, origin="https://localhost")) == [b"1"]
        assert f"Host: localhost:{port}\r\n".encode() in script.requests[0]

    run(main())


def stop_at_done(response: Any, data: bytes) -> None:
    if data == b"[DONE]":
        response.stop()


def test_after_done_the_end_of_the_message_may_come_later_and_keep_the_connection() -> None:
    script = Script(send(HEAD + events(b"1", b"[DONE]"), END, pause=0.2), send(HEAD + events(b"2") + END))
    # the end arrives 0.2 s after [DONE], within the grace, before the second exchange
    two_in_a_row(script, [b"1", b"[DONE]"], [b"2"], connections=1, on_event=stop_at_done, grace=1.0,
                 between=0.4)  # fmt: skip


def test_a_connection_paused_when_its_message_ended_is_reused_reading() -> None:
    def on_event(response: Any, data: bytes) -> None:
        if data == b"2":
            response.pause()  # the client fell behind on the last event; nobody resumes

    script = Script(send(HEAD + events(b"1", b"2") + END), send(HEAD + events(b"3") + END))
    two_in_a_row(script, [b"1", b"2"], [b"3"], connections=1, on_event=on_event, read_timeout=2)


def test_a_client_leaving_before_the_answer_drops_the_connection() -> None:
    async def main() -> None:
        script = Script(send(b""))  # never answers
        server, port = await serve(script)
        async with server:
            waiting = asyncio.ensure_future(pool_for(port).request(b"{}", {}))
            await asyncio.sleep(0.2)
            waiting.cancel()
            for _ in range(50):
                if script.closed:
                    break
                await asyncio.sleep(0.02)
            assert script.closed == 1

    run(main())


def test_interim_1xx_answers_are_skipped() -> None:
    async def main() -> None:
        early = b"HTTP/1.1 103 Early Hints\r\nLink: </x>; rel=preload\r\n\r\n"
        script = Script(send(b"HTTP/1.1 100 Continue\r\n\r\n", early, HEAD + events(b"1") + END, pause=0.05),
                        send(HEAD + events(b"2") + END))  # fmt: skip
        server, port = await serve(script)
        async with server:
            pool = pool_for(port)
            response = await pool.request(b"{}", {})
            assert (response.status, response.is_event_stream) == (200, True)
            assert "link" not in response.headers
            got: list[bytes] = []
            response.attach(got.append)
            await response.done()
            response.close()
            assert got == [b"1"]
            assert await exchange(pool) == [b"2"]
            pool.close()
        assert script.connections == 1

    run(main())


def test_a_second_answer_to_one_request_is_not_taken_and_the_connection_is_dropped() -> None:
    extra = b"HTTP/1.1 500 Oops\r\nContent-Length: 0\r\n\r\n"
    script = Script(send(HEAD + events(b"1") + END + extra), send(HEAD + events(b"2") + END))
    two_in_a_row(script, [b"1"], [b"2"], connections=2)


def test_a_finished_exchange_lets_go_of_its_sink() -> None:
    """Neither an idle connection nor a dropped one keeps what its last sink reaches (in storegate, the
    stream's request and text): freed by reference counting alone, with the cycle collector off."""

    class Stream:
        def sink(self, data: bytes) -> None:
            pass

    async def main() -> None:
        script = Script(send(HEAD + events(b"1") + END), send(HEAD + events(b"2") + b"5\r\nda", close=True))
        server, port = await serve(script)
        async with server:
            pool = pool_for(port)
            for kept_alive in (True, False):
                stream = Stream()
                gone = weakref.ref(stream)
                response = await pool.request(b"{}", {})
                response.attach(stream.sink)
                try:
                    await response.done()
                except BackendFailed:
                    assert not kept_alive
                response.close()
                del stream, response
                assert gone() is None, "kept alive" if kept_alive else "dropped"
            pool.close()

    gc.collect()
    gc.disable()
    try:
        run(main())
    finally:
        gc.enable()
