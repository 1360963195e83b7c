"""The benchmark's fake model backend: a raw uvloop protocol speaking just enough HTTP/1.1.

Run as `python fakeup.py PORT [--chunks 50] [--delay 0.010]`. It is a separate process and does
as little as possible per request, so that "direct to the backend" is a floor, not a cost:

- POST .../chat/completions, non-streamed: a fixed ~650-byte chat.completion (only the id varies);
- POST .../chat/completions with "stream": true: response headers at once, then exactly CHUNKS
  chat.completion.chunk events, chunk k sent at t0 + k * DELAY (an absolute schedule, so gaps do
  not drift), then a usage chunk if stream_options.include_usage asked for one, then [DONE];
- GET .../models: one model; GET /ceiling: a fixed ~300-byte body (wrk's own ceiling on this box).

With `--stamp`, a stream's first chunk carries two wall-clock times (time.time()) in place of its
system_fingerprint, "ARRIVED/SENT": when the request arrived and when that chunk was written. A client
on the same machine can then split its time to first chunk into the way in, the backend's own wait
and the way out (bench/ttft_legs.py). Without it every byte is as before.

Keep-alive, Content-Length and chunked request bodies; no pipelining while a stream is open (the
next request waits in the buffer until the stream ends, as HTTP/1.1 requires).
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import time
from typing import Any, ClassVar, cast

import orjson

MODEL = "bench-model"
CREATED = 1741570283
_ids = itertools.count(1)

_COMPLETION_HEAD = b'{"id":"chatcmpl-fake'
_COMPLETION_TAIL = orjson.dumps(
    {
        "object": "chat.completion",
        "created": CREATED,
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": "A wooden boardwalk runs through a green meadow under a blue sky.",
                    "refusal": None,
                    "annotations": [],
                },
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": 1117,
            "completion_tokens": 46,
            "total_tokens": 1163,
            "prompt_tokens_details": {"cached_tokens": 0, "audio_tokens": 0},
            "completion_tokens_details": {"reasoning_tokens": 0, "audio_tokens": 0},
        },
        "service_tier": "default",
        "system_fingerprint": "fp_fc9f1d7035",
    }
)[1:]  # without its "{": the id goes first

CEILING_BODY = orjson.dumps({"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED,
                                                          "owned_by": "bench"}] * 3, "has_more": False})  # fmt: skip
MODELS_BODY = orjson.dumps(
    {"object": "list", "data": [{"id": MODEL, "object": "model", "created": CREATED, "owned_by": "bench"}]}
)


def _head(status: str, ctype: bytes, length: int | None) -> bytes:
    framing = b"Transfer-Encoding: chunked\r\n" if length is None else b"Content-Length: %d\r\n" % length
    return b"HTTP/1.1 " + status.encode() + b"\r\nContent-Type: " + ctype + b"\r\n" + framing + b"\r\n"


def _fixed(body: bytes, status: str = "200 OK") -> bytes:
    return _head(status, b"application/json", len(body)) + body


CEILING = _fixed(CEILING_BODY)
MODELS = _fixed(MODELS_BODY)
NOT_FOUND = _fixed(b'{"error":{"message":"not found","type":"invalid_request_error"}}', "404 Not Found")
BAD = _fixed(b'{"error":{"message":"bad request","type":"invalid_request_error"}}', "400 Bad Request")
SSE_HEAD = (
    b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\n"
    b"Transfer-Encoding: chunked\r\n\r\n"
)


def completion(n: int) -> bytes:
    body = _COMPLETION_HEAD + str(n).encode() + b'",' + _COMPLETION_TAIL
    return b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%b" % (len(body), body)


def _chunk_templates(chunks: int) -> list[tuple[bytes, bytes]]:
    """(before id, after id) of each SSE event's JSON: chunk 1 carries the role, the last one the
    finish_reason with an empty delta, every other one a word."""
    out = []
    for k in range(chunks):
        if k == 0:
            delta: dict[str, Any] = {"role": "assistant", "content": "w0 ", "refusal": None}
        elif k == chunks - 1:
            delta = {}
        else:
            delta = {"content": f"w{k} "}
        doc = {"object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
               "system_fingerprint": "fp_fc9f1d7035",
               "choices": [{"index": 0, "delta": delta, "logprobs": None,
                            "finish_reason": "stop" if k == chunks - 1 else None}]}  # fmt: skip
        out.append((b'{"id":"chatcmpl-fake', b'",' + orjson.dumps(doc)[1:]))
    return out


USAGE_TAIL = b'",' + orjson.dumps({"object": "chat.completion.chunk", "created": CREATED, "model": MODEL,
                                   "choices": [], "usage": {"prompt_tokens": 20, "completion_tokens": 50,
                                                            "total_tokens": 70}})[1:]  # fmt: skip


def _sse(payload: bytes) -> bytes:
    event = b"data: " + payload + b"\n\n"
    return b"%x\r\n%b\r\n" % (len(event), event)


SSE_DONE = _sse(b"[DONE]") + b"0\r\n\r\n"


class FakeBackend(asyncio.Protocol):
    chunks = 50
    delay = 0.010
    stamp = False
    templates: ClassVar[list[tuple[bytes, bytes]]] = []

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        self.buf = b""
        self.streaming = False
        self.timer: asyncio.TimerHandle | None = None
        self.loop = asyncio.get_running_loop()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if not self.streaming:
            self._drain()

    def _drain(self) -> None:
        out: list[bytes] = []
        while not self.streaming:
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                break
            head = self.buf[:end].decode("latin-1")
            lines = head.split("\r\n")
            parts = lines[0].split(" ")
            if len(parts) != 3:
                out.append(BAD)
                self.buf = b""
                break
            method, path = parts[0], parts[1]
            length = 0
            chunked = False
            for line in lines[1:]:
                name, _, value = line.partition(":")
                lname = name.strip().lower()
                if lname == "content-length":
                    length = int(value.strip())
                elif lname == "transfer-encoding" and "chunked" in value.lower():
                    chunked = True
            start = end + 4
            if chunked:
                body_or_none = self._dechunk(start)
                if body_or_none is None:
                    break  # wait for the rest of the body
                body, consumed = body_or_none
                self.buf = self.buf[consumed:]
            else:
                if len(self.buf) < start + length:
                    break
                body = self.buf[start : start + length]
                self.buf = self.buf[start + length :]
            out.append(self._answer(method, path, body))
        if out:
            self.transport.write(b"".join(x for x in out if x))

    def _dechunk(self, pos: int) -> tuple[bytes, int] | None:
        parts = []
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                return None
            size = int(buf[pos:eol].split(b";")[0], 16)
            if size == 0:
                end = buf.find(b"\r\n\r\n", eol)  # trailers, if any, end with an empty line
                if end < 0:
                    if len(buf) >= eol + 4 and buf[eol : eol + 4] == b"\r\n\r\n":
                        return b"".join(parts), eol + 4
                    return None
                return b"".join(parts), end + 4
            if len(buf) < eol + 2 + size + 2:
                return None
            parts.append(buf[eol + 2 : eol + 2 + size])
            pos = eol + 2 + size + 2

    def _answer(self, method: str, path: str, body: bytes) -> bytes:
        if method == "POST" and path.endswith("/chat/completions"):
            try:
                doc = orjson.loads(body)
            except orjson.JSONDecodeError:
                return BAD
            n = next(_ids)
            if isinstance(doc, dict) and doc.get("stream") is True:
                opts = doc.get("stream_options")
                usage = isinstance(opts, dict) and opts.get("include_usage") is True
                self._start_stream(n, usage)
                return b""
            return completion(n)
        if method == "GET" and path == "/ceiling":
            return CEILING
        if method == "GET" and path.endswith("/models"):
            return MODELS
        return NOT_FOUND

    def _start_stream(self, n: int, usage: bool) -> None:
        self.streaming = True
        arrived = time.time()
        self.transport.write(SSE_HEAD)
        ident = str(n).encode()
        t0 = self.loop.time()

        def send(k: int) -> None:
            self.timer = None
            if self.transport.is_closing():
                return
            pre, post = self.templates[k]
            if k == 0 and self.stamp:
                post = post.replace(b'"fp_fc9f1d7035"', b'"%.6f/%.6f"' % (arrived, time.time()))
            frames = [_sse(pre + ident + post)]
            if k + 1 < len(self.templates):
                self.timer = self.loop.call_at(t0 + (k + 2) * self.delay, send, k + 1)
            else:
                if usage:
                    frames.append(_sse(b'{"id":"chatcmpl-fake' + ident + USAGE_TAIL))
                frames.append(SSE_DONE)
            self.transport.write(b"".join(frames))
            if self.timer is None:
                self.streaming = False
                if self.buf:
                    self._drain()

        self.timer = self.loop.call_at(t0 + self.delay, send, 0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("port", type=int)
    ap.add_argument("--chunks", type=int, default=50)
    ap.add_argument("--delay", type=float, default=0.010, help="seconds before each chunk")
    ap.add_argument("--stamp", action="store_true", help="first chunk's system_fingerprint: ARRIVED/SENT")
    args = ap.parse_args()
    FakeBackend.chunks = args.chunks
    FakeBackend.delay = args.delay
    FakeBackend.stamp = args.stamp
    FakeBackend.templates = _chunk_templates(args.chunks)

    import uvloop

    async def serve() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(FakeBackend, "127.0.0.1", args.port, backlog=2048)
        async with server:
            await server.serve_forever()

    uvloop.run(serve())


if __name__ == "__main__":
    main()
