"""Every response gets an x-request-id; every failure leaves as OpenAI's error envelope; one JSON
log line per request (method, path, status, duration: never headers or bodies, so never a key), with
the reason when the failure was ours (5xx, or a stream's error event)."""

import asyncio
import logging
import time

import orjson
from aiohttp import web
from aiohttp.typedefs import Handler

from storegate.api.accesslog import AccessLog
from storegate.api.context import CLIENT_KEY, PROJECT, REQUEST_ID, SERVICES, STREAM_FAILURE
from storegate.errors import (
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    PayloadTooLarge,
    StoregateError,
    envelope,
)
from storegate.ids import request_id

log = logging.getLogger("storegate.http")
ACCESS_LOG = web.AppKey("access_log", AccessLog)
JSON = "application/json"


def error_response(exc: StoregateError) -> web.Response:
    return web.Response(status=exc.status, body=exc.body(), content_type=JSON, headers=exc.headers)


def _from_http(exc: web.HTTPException, request: web.Request) -> StoregateError:
    where = f"{request.method} {request.path}"
    if exc.status == 404:
        return NotFound(f"Invalid URL ({where})")
    if exc.status == 405:
        wrong = MethodNotAllowed(f"Invalid method for URL ({where})", code="method_not_supported")
        if "Allow" in exc.headers:  # the methods the route takes (RFC 9110: a 405 must say them)
            wrong.headers = {**wrong.headers, "Allow": exc.headers["Allow"]}
        return wrong
    if exc.status == 413:
        limit = request.app._client_max_size
        return PayloadTooLarge(
            f"Request body too large: the limit is {limit} bytes.", code="request_too_large"
        )
    error = InvalidRequest(exc.reason or "Bad request")
    error.status = exc.status
    return error


@web.middleware
async def handle(request: web.Request, handler: Handler) -> web.StreamResponse:
    request[REQUEST_ID] = request_id()
    started = time.perf_counter()
    status = 500
    reason: str | None = None  # why a request failed on our side: the store, a backend, a bug
    try:
        response = await handler(request)
        status = response.status
        if type(response) is web.StreamResponse:  # a stream (only they are), which may have failed
            reason = request.get(STREAM_FAILURE)
        return response
    except StoregateError as exc:
        status = exc.status
        if status >= 500:  # our own words only (errors.py: never a secret, never a body)
            reason = (
                exc.message if exc.log_safe else f"{type(exc).__name__} (in the backend's words: not logged)"
            )
        return error_response(exc)
    except web.HTTPException as exc:
        error = _from_http(exc, request)
        status = error.status
        return error_response(error)
    except asyncio.CancelledError:
        status = 499  # the client closed the connection
        raise
    except Exception as exc:
        reason = f"unhandled {type(exc).__name__}"  # its traceback is logged here
        log.exception("unhandled error in %s %s", request.method, request.path)
        body = envelope("The server had an error while processing your request.", "server_error")
        return web.Response(status=500, body=body, content_type=JSON)
    finally:
        if AccessLog.enabled():
            line = {"request_id": request[REQUEST_ID], "method": request.method, "path": request.path,
                    "status": status, "ms": round((time.perf_counter() - started) * 1000, 2)}  # fmt: skip
            if reason is not None:
                line["error"] = reason
            request.app[ACCESS_LOG].add(orjson.dumps(line))


@web.middleware
async def authenticate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every /v1 route needs a key once any key exists; the key decides the project."""
    if request.path.startswith("/v1/"):
        keys = request.app[SERVICES].keys
        authorization = request.headers.get("Authorization")
        principal = keys.known(authorization)
        if principal is None:
            principal = await keys.authenticate(authorization)
        request[PROJECT] = principal.project
        if principal.key_id is None and authorization is not None:  # the header is the client's own
            request[CLIENT_KEY] = authorization
    return await handler(request)


async def add_request_id(request: web.Request, response: web.StreamResponse) -> None:
    response.headers["x-request-id"] = request.get(REQUEST_ID) or request_id()
