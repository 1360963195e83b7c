"""Scenario 2 servers: a fake upstream and an aiohttp.web proxy with two HTTP client libraries.

Run as `python apps_proxy.py upstream PORT` or `python apps_proxy.py {proxy-aiohttp|proxy-httpx} PORT URL`.
The proxy forwards the POST body verbatim and returns the upstream body and status.
`granian_proxy_app` is the same aiohttp.ClientSession proxy as a Starlette app, for granian
(upstream URL from $STACK_BENCH_UPSTREAM): it checks whether granian's faster floor survives
once the handler does the real hop.
"""

from __future__ import annotations

import os
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import aiohttp
from aiohttp import web
from common import COMPLETION_BODY, serve_aiohttp
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

ROUTE = "/v1/chat/completions"
_JSON = {"Content-Type": "application/json"}


def run_upstream(port: int) -> None:
    async def chat(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=COMPLETION_BODY, content_type="application/json")

    async def make_app() -> web.Application:
        app = web.Application()
        app.router.add_post(ROUTE, chat)
        return app

    serve_aiohttp(make_app, port)


def _client_session() -> aiohttp.ClientSession:
    connector = aiohttp.TCPConnector(limit=100, keepalive_timeout=60)
    return aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=30))


def run_proxy_aiohttp(port: int, upstream: str) -> None:
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def chat(request: web.Request) -> web.Response:
        body = await request.read()
        session = request.app[session_key]
        async with session.post(upstream, data=body, headers=_JSON) as resp:
            payload = await resp.read()
            return web.Response(body=payload, status=resp.status, content_type="application/json")

    async def make_app() -> web.Application:
        app = web.Application()
        app[session_key] = _client_session()

        async def close(app: web.Application) -> None:
            await app[session_key].close()

        app.on_cleanup.append(close)
        app.router.add_post(ROUTE, chat)
        return app

    serve_aiohttp(make_app, port)


def run_proxy_httpx(port: int, upstream: str) -> None:
    import importlib.util

    import httpx

    # Recorded by the orchestrator: does httpcore find sniffio in this process?
    print(f"sniffio_available={importlib.util.find_spec('sniffio') is not None}", flush=True)

    client_key = web.AppKey("client", httpx.AsyncClient)

    async def chat(request: web.Request) -> web.Response:
        body = await request.read()
        resp = await request.app[client_key].post(upstream, content=body, headers=_JSON)
        return web.Response(body=resp.content, status=resp.status_code, content_type="application/json")

    async def make_app() -> web.Application:
        app = web.Application()
        limits = httpx.Limits(max_connections=100, max_keepalive_connections=100, keepalive_expiry=60)
        app[client_key] = httpx.AsyncClient(limits=limits, timeout=30.0)

        async def close(app: web.Application) -> None:
            await app[client_key].aclose()

        app.on_cleanup.append(close)
        app.router.add_post(ROUTE, chat)
        return app

    serve_aiohttp(make_app, port)


_granian_state: dict[str, aiohttp.ClientSession] = {}


@asynccontextmanager
async def _lifespan(app: Starlette) -> AsyncIterator[None]:
    _granian_state["session"] = _client_session()
    try:
        yield
    finally:
        await _granian_state.pop("session").close()


async def _starlette_chat(request: Request) -> Response:
    body = await request.body()
    upstream = os.environ["STACK_BENCH_UPSTREAM"]
    async with _granian_state["session"].post(upstream, data=body, headers=_JSON) as resp:
        payload = await resp.read()
        return Response(content=payload, status_code=resp.status, media_type="application/json")


granian_proxy_app = Starlette(routes=[Route(ROUTE, _starlette_chat, methods=["POST"])], lifespan=_lifespan)


def main(argv: list[str]) -> None:
    kind, port = argv[1], int(argv[2])
    if kind == "upstream":
        run_upstream(port)
    elif kind == "proxy-aiohttp":
        run_proxy_aiohttp(port, argv[3])
    elif kind == "proxy-httpx":
        run_proxy_httpx(port, argv[3])
    else:
        raise SystemExit(f"unknown kind {kind!r}")


if __name__ == "__main__":
    main(sys.argv)
