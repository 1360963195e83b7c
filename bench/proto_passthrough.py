"""EXPERIMENT, not shipped: what would a protocol-level pass-through for streams buy?

The measurement that justified src/storegate/backends/stream.py. When it was written (commit
00e9b7c), storegate forwarded a streamed chunk through aiohttp's client (its parser, a StreamReader,
a wake-up of the handler's task on the next event-loop pass), three async generators and aiohttp's
StreamWriter: ~100 µs of CPU per chunk at 64 streams, against ~24 µs for a bare TCP relay. Run
against today's storegate, which streams the same way with timeouts, flow control and a pool, it
shows what that care costs. This prototype is
storegate itself (same app, middleware, checks, reassembly, durable SQLite insert before [DONE]) with
one change for `stream: true`: the backend's response is read by a plain asyncio.Protocol with
httptools' parser (llhttp), and each SSE event is framed and written to the client's socket from
inside `data_received`, with no task switch. Non-streamed requests are untouched.

It handles only what the bench's fake backend does (plain HTTP, 200, chunked SSE) and has no
backpressure, timeouts or error mapping, so it must not be served to anyone. It exists to put a
number on the next design step before building it properly.

    .venv/bin/pip install httptools        # not a storegate dependency
    .venv/bin/python bench/proto_passthrough.py [--rounds 3] [--seconds 6]

Runs the fake backend (`--stamp`), storegate and this prototype side by side (each on its own SQLite
file), alternates 64- and 1-stream runs of sse_client.py (--legs) between them, and prints CPU per
stream and the time to first chunk's legs. Measured 2026-11-26: bench/analysis/2026-11-26T0917Z.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "stack")]


# ---------------------------------------------------------------------------------------- the server


def serve(port: int, db: str, backend: str) -> None:
    import httptools
    import uvloop
    from aiohttp import web

    from storegate.api import routes
    from storegate.api.context import project, request_id, services
    from storegate.app import create_app
    from storegate.service.call import prepare
    from storegate.service.streaming import DONE, ChatStream
    from storegate.settings import from_sources

    original = routes.create_chat_completion

    class Backend(asyncio.Protocol):
        """One keep-alive connection to the backend; SSE events go to `sink` as they are parsed."""

        def __init__(self) -> None:
            self.parser = httptools.HttpResponseParser(self)
            self.transport: asyncio.Transport | None = None
            self.status: asyncio.Future[int] | None = None
            self.done: asyncio.Future[None] | None = None
            self.sink: Any = None
            self.early: list[bytes] = []
            self.pending = b""
            self.data: list[bytes] = []

        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport  # type: ignore[assignment]

        def data_received(self, data: bytes) -> None:
            self.parser.feed_data(data)

        def connection_lost(self, exc: Exception | None) -> None:
            for fut in (self.status, self.done):
                if fut is not None and not fut.done():
                    fut.set_exception(ConnectionError("backend closed"))
            self.transport = None

        # httptools callbacks
        def on_headers_complete(self) -> None:
            assert self.status is not None
            self.status.set_result(self.parser.get_status_code())

        def on_body(self, body: bytes) -> None:
            lines = (self.pending + body).split(b"\n")
            self.pending = lines.pop()
            for raw in lines:
                line = raw.rstrip(b"\r")
                if not line:
                    if self.data:
                        event = b"\n".join(self.data)
                        self.data = []
                        if self.sink is None:
                            self.early.append(event)
                        else:
                            self.sink(event)
                elif line.startswith(b"data:"):
                    self.data.append(line[6:] if line[5:6] == b" " else line[5:])

        def on_message_complete(self) -> None:
            assert self.done is not None
            if not self.done.done():
                self.done.set_result(None)

        def start(self, request: bytes) -> None:
            loop = asyncio.get_running_loop()
            self.status, self.done = loop.create_future(), loop.create_future()
            self.sink, self.early, self.pending, self.data = None, [], b"", []
            assert self.transport is not None
            self.transport.write(request)

        def attach(self, sink: Any) -> None:
            self.sink = sink
            early, self.early = self.early, []
            for event in early:
                sink(event)

    idle: list[Backend] = []

    async def connection(host: str, port: int) -> Backend:
        while idle:
            conn = idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                return conn
        _, proto = await asyncio.get_running_loop().create_connection(Backend, host, port)
        return proto

    async def create_chat_completion(request: web.Request) -> web.StreamResponse:
        raw = await request.read()
        chat = services(request).chat
        call = prepare(raw, project=project(request), request_id=request_id(request), router=chat._router,
                       minter=chat._minter, store_default=chat._store_default)  # fmt: skip
        if not call.stream:
            # the shipped path, re-reading nothing: the body was read above and is cached by aiohttp
            return await original(request)
        url = urlsplit(call.backend.chat_url)
        host, bport = url.hostname or "127.0.0.1", url.port or 80
        head = (f"POST {url.path} HTTP/1.1\r\nHost: {host}:{bport}\r\nContent-Type: application/json\r\n"
                f"Accept-Encoding: identity\r\nX-Request-Id: {call.request_id}\r\n"
                f"Content-Length: {len(call.forward)}\r\n\r\n").encode()  # fmt: skip
        backend = await connection(host, bport)
        backend.start(head + call.forward)
        assert backend.status is not None and backend.done is not None
        status = await backend.status
        if status != 200:
            raise RuntimeError(f"prototype: backend answered {status}")
        stream = ChatStream(call, None, services(request).store)  # type: ignore[arg-type]
        response = web.StreamResponse(headers=routes.SSE_HEADERS)
        await response.prepare(request)
        writer = response._payload_writer
        assert writer is not None
        writer.send_headers()  # type: ignore[attr-defined]
        client = request.transport
        assert client is not None
        finished = False

        def sink(event: bytes) -> None:
            nonlocal finished
            if event == b"[DONE]":
                finished = True
                return
            frame = stream._frame(event)
            if frame is not None:
                client.write(b"%x\r\n%b\r\n" % (len(frame), frame))

        backend.attach(sink)
        await backend.done
        idle.append(backend)
        if not finished:
            raise RuntimeError("prototype: the stream ended without [DONE]")
        task = stream._persist(None)
        if task is not None:
            await asyncio.shield(task)
        await response.write(DONE)
        await response.write_eof()
        return response

    import logging

    logging.basicConfig(level="INFO", format="%(message)s", stream=sys.stderr)  # `serve`'s default
    routes.create_chat_completion = create_chat_completion  # type: ignore[assignment]
    settings = from_sources({"db": db, "backend_url": backend, "host": "127.0.0.1", "port": port}, os.environ)
    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    web.run_app(create_app(settings), host="127.0.0.1", port=port, loop=loop, print=None, access_log=None,
                handler_cancellation=True)  # fmt: skip


# ----------------------------------------------------------------------------------- the measurement


def _cpu(pid: int) -> float:
    from procs import CLK_TCK

    f = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(f[11]) + int(f[12])) / CLK_TCK


def measure(rounds: int, seconds: float) -> int:
    import harness
    from procs import Server, free_port

    tmp = Path(tempfile.mkdtemp(prefix="storegate-proto-"))
    fake_port = free_port()
    fake = Server(name="fake", port=fake_port, log=tmp / "fake.log", cwd=str(HERE), argv=[
        harness.PY, str(HERE / "fakeup.py"), str(fake_port), "--chunks", str(harness.CHUNKS),
        "--delay", str(harness.CHUNK_DELAY), "--stamp",
    ])  # fmt: skip
    backend = f"http://{harness.HOST}:{fake_port}/v1"
    sg = harness.storegate_server("storegate", tmp, f"sqlite:///{tmp / 'sg.db'}", backend)
    proto_port = free_port()
    proto = Server(name="proto", port=proto_port, log=tmp / "proto.log", cwd=str(HERE.parent), argv=[
        harness.PY, str(Path(__file__).resolve()), "serve", str(proto_port), f"sqlite:///{tmp / 'proto.db'}",
        backend,
    ])  # fmt: skip
    servers = [fake, sg, proto]
    body = tmp / "body.json"
    body.write_bytes(harness.chat_body(True, 3, stream=True))

    def run(port: int, pid: int, conns: int, secs: float) -> dict[str, Any]:
        argv = [harness.PY, str(HERE / "sse_client.py"), f"http://{harness.HOST}:{port}/v1/chat/completions",
                str(body), str(conns), str(secs), str(harness.CHUNKS), "--legs"]  # fmt: skip
        c0 = _cpu(pid)
        out = subprocess.run(argv, capture_output=True, text=True, timeout=secs + 60, check=False)
        c1 = _cpu(pid)
        line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON:")), None)
        if out.returncode != 0 or line is None:
            raise RuntimeError(f"sse_client failed: {out.stdout[-800:]} {out.stderr[-800:]}")
        rec: dict[str, Any] = json.loads(line[5:])
        if rec["errors"] or rec["bad_chunk_count"]:
            raise RuntimeError(f"bad run on port {port}: {line[:600]}")
        rec["cpu_us_per_stream"] = (c1 - c0) / rec["streams"] * 1e6
        return rec

    rows: list[dict[str, Any]] = []
    try:
        harness.start_servers(servers, sg.port, proto_port)
        targets = [("storegate", sg.port, sg.pgid), ("prototype", proto_port, proto.pgid)]
        for _, port, pid in targets:
            run(port, pid, 8, 1.5)
        for rnd in range(rounds):
            order = targets if rnd % 2 == 0 else targets[::-1]
            for conns in (64, 1):
                for name, port, pid in order:
                    rec = run(port, pid, conns, seconds if conns > 1 else seconds * 2 / 3)
                    row = {"round": rnd, "target": name, "conns": conns, "cpu_us": rec["cpu_us_per_stream"],
                           "streams_per_s": rec["streams_per_s"],
                           **{k: rec[k]["p50_ms"] for k in ("ttft", "leg_in", "leg_out")}}  # fmt: skip
                    rows.append(row)
                    print(f"round {rnd} {name:9s} c={conns:<2d} cpu/stream {row['cpu_us']:7.0f} us  "
                          f"streams/s {row['streams_per_s']:6.1f}  ttft {row['ttft']:6.2f}  in {row['leg_in']:5.2f}  "
                          f"out {row['leg_out']:5.2f} ms (p50)", flush=True)  # fmt: skip
        print(f"prototype stored {_stored(tmp / 'proto.db')} completions")
    finally:
        for server in reversed(servers):
            server.stop()
    print(f"\nMedians over {rounds} rounds")
    print("| target | c | CPU per stream (µs) | streams/s | ttft p50 | in | out |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for conns in (64, 1):
        for name in ("storegate", "prototype"):
            mine = [r for r in rows if r["target"] == name and r["conns"] == conns]
            m = {k: statistics.median(r[k] for r in mine) for k in ("cpu_us", "streams_per_s", "ttft", "leg_in",
                                                                   "leg_out")}  # fmt: skip
            print(f"| {name} | {conns} | {m['cpu_us']:,.0f} | {m['streams_per_s']:.1f} | {m['ttft']:.2f} | "
                  f"{m['leg_in']:.2f} | {m['leg_out']:.2f} |")  # fmt: skip
    return 0


def _stored(path: Path) -> int:
    import sqlite3

    with sqlite3.connect(path) as conn:
        return int(conn.execute("SELECT count(*) FROM completions").fetchone()[0])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "serve":
        serve(int(sys.argv[2]), sys.argv[3], sys.argv[4])
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0)
    args = ap.parse_args()
    return measure(args.rounds, args.seconds)


if __name__ == "__main__":
    sys.exit(main())
