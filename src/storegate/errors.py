"""The error tree, and the one place an error becomes OpenAI's envelope.

Raise these anywhere below the HTTP layer; the middleware in api/ turns them into responses.
Nothing here may format a secret into a message.
"""

from typing import Any

import orjson


class StoregateError(Exception):
    status = 500
    type = "server_error"
    # The message is storegate's own words, fit for the log (the access log's "error" of a 5xx). Not
    # so for an error that carries a backend's words, which could echo what the client sent.
    log_safe = True

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return envelope(self.message, self.type, self.param, self.code)


class InvalidRequest(StoregateError):
    status = 400
    type = "invalid_request_error"


class NotFound(InvalidRequest):
    status = 404


class Unauthorized(InvalidRequest):
    status = 401


class MethodNotAllowed(InvalidRequest):
    status = 405


class PayloadTooLarge(InvalidRequest):
    status = 413


class RequestTimeout(InvalidRequest):
    status = 408


class RateLimited(StoregateError):
    status = 429
    type = "requests"

    def __init__(self, message: str, *, retry_after: int) -> None:
        super().__init__(message, code="rate_limit_exceeded", headers={"Retry-After": str(retry_after)})


class BackendFailed(StoregateError):
    """The backend failed, refused the connection, or answered something that is not OpenAI JSON."""

    status = 502
    type = "backend_error"


class BackendTimeout(StoregateError):
    status = 504
    type = "backend_timeout"


class StoreUnavailable(StoregateError):
    """The store cannot take or serve the request now; always retryable."""

    status = 503
    type = "store_unavailable"

    def __init__(self, message: str, *, retry_after: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after)})


class Overloaded(StoreUnavailable):
    """Too many requests in flight: storegate sheds load rather than queue without bound."""

    type = "overloaded"


class BackendRejected(StoregateError):
    """A backend's own 4xx, carried to the client with its status and (scrubbed) envelope."""

    log_safe = False

    def __init__(self, status: int, error: dict[str, Any], headers: dict[str, str]) -> None:
        super().__init__(
            str(error.get("message", "")),
            param=_str_or_none(error.get("param")),
            code=_str_or_none(error.get("code")),
            headers=headers,
        )
        self.status = status
        self.type = str(error.get("type") or "invalid_request_error")


def _str_or_none(value: object) -> str | None:
    if value is None:
        return None
    return value if isinstance(value, str) else str(value)


def envelope(message: str, type_: str, param: str | None = None, code: str | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def not_found(completion_id: str) -> NotFound:
    return NotFound(f"No chat completion found with id '{completion_id}'.")
