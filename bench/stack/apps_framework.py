"""Scenario 1 servers: a bare handler returning a fixed ~300-byte JSON body.

Run as `python apps_framework.py {aiohttp|uvicorn|raw} PORT`; granian serves `apps_framework:starlette_app`.
`raw` is a minimal uvloop protocol that answers every request with a canned response; it is not
a candidate, it only measures the load generator's ceiling on this machine.
"""

from __future__ import annotations

import asyncio
import sys
from typing import cast

from common import FRAMEWORK_BODY, HOST, serve_aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


async def _starlette_root(request: Request) -> Response:
    return Response(content=FRAMEWORK_BODY, media_type="application/json")


starlette_app = Starlette(routes=[Route("/", _starlette_root)])


def run_aiohttp(port: int) -> None:
    from aiohttp import web

    async def root(request: web.Request) -> web.Response:
        return web.Response(body=FRAMEWORK_BODY, content_type="application/json")

    async def make_app() -> web.Application:
        app = web.Application()
        app.router.add_get("/", root)
        return app

    serve_aiohttp(make_app, port)


def run_uvicorn(port: int) -> None:
    import uvicorn

    uvicorn.run(
        starlette_app,
        host=HOST,
        port=port,
        loop="uvloop",
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        backlog=1024,
    )


_CANNED = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
    + str(len(FRAMEWORK_BODY)).encode()
    + b"\r\n\r\n"
    + FRAMEWORK_BODY
)


class _RawProtocol(asyncio.Protocol):
    """Counts request terminators and writes one canned response per request (GET only)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's class is not a subclass
        self.tail = b""

    def data_received(self, data: bytes) -> None:
        buf = self.tail + data
        n = buf.count(b"\r\n\r\n")
        self.tail = buf[buf.rfind(b"\r\n\r\n") + 4 :] if n else buf
        if n:
            self.transport.write(_CANNED * n)


def run_raw(port: int) -> None:
    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(_RawProtocol, HOST, port, backlog=1024)
        async with server:
            await server.serve_forever()

    uvloop.run(main())


def main(argv: list[str]) -> None:
    kind, port = argv[1], int(argv[2])
    {"aiohttp": run_aiohttp, "uvicorn": run_uvicorn, "raw": run_raw}[kind](port)


if __name__ == "__main__":
    main(sys.argv)
