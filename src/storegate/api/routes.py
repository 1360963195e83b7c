"""The routes of the contract; handlers are named after OpenAI's operationIds."""

import asyncio
from importlib import resources

from aiohttp import web

from storegate.api.context import STREAM_FAILURE, client_key, project, request_id, services
from storegate.api.middleware import JSON
from storegate.errors import RequestTimeout
from storegate.service import ChatStream, list_models

OPENAPI = resources.files("storegate.api").joinpath("openapi.json").read_bytes()
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def _json(body: bytes) -> web.Response:
    return web.Response(body=body, content_type=JSON)


async def _body(request: web.Request) -> bytes:
    """The whole body, or 408 when the client does not send it in time (a slow or stuck upload)."""
    if request.content.is_eof():  # all of it came with the headers (nearly always): no wait, no timer
        return await request.read()
    try:
        async with asyncio.timeout(services(request).body_timeout):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout("The request body was not received in time.", code="request_timeout") from None


async def create_chat_completion(request: web.Request) -> web.StreamResponse:
    with services(request).gate.slot():
        raw = await _body(request)
        chat = services(request).chat
        result = await chat.create(raw, project=project(request), request_id=request_id(request),
                                   client_key=client_key(request))  # fmt: skip
        if isinstance(result, bytes):
            return _json(result)
        return await _send_stream(request, result)


class _Client:
    """The client's connection as a stream's Output: frames go straight onto its socket, in the
    transfer coding aiohttp announced (chunked for HTTP/1.1), after the headers aiohttp sent."""

    def __init__(self, request: web.Request, response: web.StreamResponse) -> None:
        self._transport = request.transport
        self._protocol = request.protocol
        self._writer = request.writer
        self._chunked = response.headers.get("Transfer-Encoding") == "chunked"

    @property
    def gone(self) -> bool:
        return self._transport is None or self._transport.is_closing()

    def send(self, frame: bytes) -> bool:
        transport = self._transport
        if transport is None or transport.is_closing():
            return False  # the client left: the stream's drain sees it and ends the relay
        transport.write(b"%x\r\n%b\r\n" % (len(frame), frame) if self._chunked else frame)
        return not self._protocol.writing_paused

    async def drain(self) -> None:
        await self._writer.drain()


async def _send_stream(request: web.Request, stream: ChatStream) -> web.StreamResponse:
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
        # aiohttp 3.14's prepare() has sent the headers already; an aiohttp that buffers them flushes
        # them here, so they always precede the frames written straight to the socket.
        await response.write(b"")
        last = await stream.relay(_Client(request, response))
        if stream.failure_reason is not None:
            request[STREAM_FAILURE] = stream.failure_reason  # for the access log (middleware.handle)
        await response.write(last)
        await response.write_eof()
    except ConnectionError:  # the client left while we wrote to it (what was stored stays stored)
        await stream.abandon()
        return response
    except asyncio.CancelledError:  # the client left while we waited for the backend
        await stream.abandon()
        raise
    return response


async def list_chat_completions(request: web.Request) -> web.Response:
    return _json(await services(request).stored.list(project(request), list(request.query.items())))


async def get_chat_completion(request: web.Request) -> web.Response:
    return _json(await services(request).stored.get(project(request), request.match_info["completion_id"]))


async def update_chat_completion(request: web.Request) -> web.Response:
    cid = request.match_info["completion_id"]
    return _json(await services(request).stored.update(project(request), cid, await _body(request)))


async def delete_chat_completion(request: web.Request) -> web.Response:
    return _json(await services(request).stored.delete(project(request), request.match_info["completion_id"]))


async def get_chat_completion_messages(request: web.Request) -> web.Response:
    cid = request.match_info["completion_id"]
    return _json(await services(request).stored.messages(project(request), cid, list(request.query.items())))


async def list_models_route(request: web.Request) -> web.Response:
    return _json(await list_models(services(request).router, client_key(request)))


async def healthz(request: web.Request) -> web.Response:
    return _json(b'{"status":"ok"}')


async def readyz(request: web.Request) -> web.Response:
    await services(request).store.ping()  # a StoregateError leaves as its 503 (middleware.handle)
    return _json(b'{"status":"ready"}')


async def openapi(request: web.Request) -> web.Response:
    return _json(OPENAPI)


def add_routes(app: web.Application) -> None:
    app.router.add_post("/v1/chat/completions", create_chat_completion)
    app.router.add_get("/v1/chat/completions", list_chat_completions, allow_head=False)
    app.router.add_get("/v1/chat/completions/{completion_id}", get_chat_completion, allow_head=False)
    app.router.add_post("/v1/chat/completions/{completion_id}", update_chat_completion)
    app.router.add_delete("/v1/chat/completions/{completion_id}", delete_chat_completion)
    app.router.add_get("/v1/chat/completions/{completion_id}/messages", get_chat_completion_messages,
                       allow_head=False)  # fmt: skip
    app.router.add_get("/v1/models", list_models_route, allow_head=False)
    app.router.add_get("/healthz", healthz, allow_head=False)
    app.router.add_get("/readyz", readyz, allow_head=False)
    app.router.add_get("/openapi.json", openapi, allow_head=False)
