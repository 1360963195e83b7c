"""One backend: its pooled aiohttp client for non-streamed creates and /models, its protocol-level
connections for streams (stream.py), and the mapping of its failures to our error tree.

Keys never appear in an error: anything a backend says is scrubbed of its key before it is raised.
"""

from collections.abc import Callable
from types import TracebackType
from typing import Any

import aiohttp
import orjson
from aiohttp.http import SERVER_SOFTWARE

from storegate.backends.stream import Response, StreamPool
from storegate.errors import BackendFailed, BackendRejected, BackendTimeout, StoregateError
from storegate.settings import BackendConfig

_PASSED_HEADERS = ("Retry-After", "retry-after-ms")
_TRANSPORT = (aiohttp.ClientError, TimeoutError, orjson.JSONDecodeError)


class Backend:
    def __init__(self, config: BackendConfig, *, connect_timeout: float, read_timeout: float,
                 total_timeout: float | None = None) -> None:  # fmt: skip
        self.config = config
        self.name = config.name
        self.chat_url = config.url + "/chat/completions"
        self.models_url = config.url + "/models"
        headers = {"Content-Type": "application/json"}
        if config.key:
            headers["Authorization"] = f"Bearer {config.key}"
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=60),
            headers=headers,
            timeout=aiohttp.ClientTimeout(
                total=total_timeout, sock_connect=connect_timeout, sock_read=read_timeout
            ),
            auto_decompress=True,
        )
        self._streams = StreamPool(config.name, self.chat_url, connect_timeout=connect_timeout,
                                   read_timeout=read_timeout, total_timeout=total_timeout)  # fmt: skip

    def scrub(self, text: str) -> str:
        return text.replace(self.config.key, "***") if self.config.key else text

    def _headers(self, client_key: str | None, extra: dict[str, str]) -> dict[str, str]:
        """The client's own Authorization replaces ours only where the operator allowed it."""
        if client_key and self.config.pass_client_key:
            extra["Authorization"] = client_key
        return extra

    async def post(self, body: bytes, request_id: str, client_key: str | None = None) -> "Upstream":
        """POST a chat completion; returns the open response once its status is 200. `client_key` is
        the client's Authorization header when it may be passed on (no storegate keys exist)."""
        headers = self._headers(client_key, {"X-Request-Id": request_id})
        try:
            resp = await self._session.post(self.chat_url, data=body, headers=headers)
        except _TRANSPORT as exc:
            raise self.failure(exc) from None
        if resp.status != 200:
            try:
                raise await self._rejection(resp)
            finally:
                resp.release()
        return Upstream(self, resp)

    async def stream(self, body: bytes, request_id: str, client_key: str | None = None) -> Response:
        """POST a streamed chat completion; returns the open response once its status is 200. The
        same headers as `post` sends (aiohttp's default User-Agent included)."""
        headers = {"User-Agent": SERVER_SOFTWARE, "X-Request-Id": request_id}
        if self.config.key:
            headers["Authorization"] = f"Bearer {self.config.key}"
        response = await self._streams.request(body, self._headers(client_key, headers))
        if response.status != 200:
            try:
                raw = await response.body()
            finally:
                response.close()
            raise self._rejection_of(response.status, raw, lambda name: response.headers.get(name.lower()))
        return response

    async def models(self, client_key: str | None = None) -> list[dict[str, Any]]:
        try:
            async with self._session.get(self.models_url, headers=self._headers(client_key, {})) as resp:
                if resp.status != 200:
                    raise await self._rejection(resp)
                doc = orjson.loads(await resp.read())
        except _TRANSPORT as exc:
            raise self.failure(exc) from None
        data = doc.get("data") if isinstance(doc, dict) else None
        if not isinstance(data, list):
            raise BackendFailed(f"backend {self.name!r} answered /models without a data list")
        return [m for m in data if isinstance(m, dict) and isinstance(m.get("id"), str)]

    def failure(self, exc: Exception) -> StoregateError:
        """Map a transport failure (one of _TRANSPORT) to the error the client gets."""
        if isinstance(exc, TimeoutError):
            return BackendTimeout(f"backend {self.name!r} timed out")
        if isinstance(exc, aiohttp.ClientConnectorError):
            return BackendFailed(f"backend {self.name!r} refused the connection")
        if isinstance(exc, orjson.JSONDecodeError):
            return BackendFailed(f"backend {self.name!r} answered something that is not JSON")
        return BackendFailed(f"backend {self.name!r} failed: {type(exc).__name__}")

    async def _rejection(self, resp: aiohttp.ClientResponse) -> StoregateError:
        try:
            raw = await resp.read()
        except _TRANSPORT as exc:
            return self.failure(exc)
        return self._rejection_of(resp.status, raw, resp.headers.get)

    def _rejection_of(self, status: int, raw: bytes, header: Callable[[str], str | None]) -> StoregateError:
        if status >= 500:
            return BackendFailed(f"backend {self.name!r} failed with status {status}")
        headers = {h: value for h in _PASSED_HEADERS if (value := header(h)) is not None}
        error = _envelope_error(raw)
        if error is None:
            text = self.scrub(raw[:500].decode("utf-8", "replace"))
            error = {"message": f"backend {self.name!r} answered {status}: {text}"}
        else:
            error = {k: self.scrub(v) if isinstance(v, str) else v for k, v in error.items()}
        return BackendRejected(status, error, headers)

    async def close(self) -> None:
        self._streams.close()
        await self._session.close()


def _envelope_error(raw: bytes) -> dict[str, Any] | None:
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    error = doc.get("error") if isinstance(doc, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return error
    if isinstance(error, str):  # Ollama and llama.cpp's shape: {"error": "message"}
        return {"message": error}
    return None


class Upstream:
    """An open 200 response from a backend to a non-streamed create: read it whole."""

    def __init__(self, backend: Backend, resp: aiohttp.ClientResponse) -> None:
        self.backend = backend
        self._resp = resp

    def close(self) -> None:
        """Drop the connection: the backend stops generating."""
        self._resp.close()

    async def __aenter__(self) -> "Upstream":
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        # Closing (not releasing) an unfinished response drops the connection: the backend stops.
        if exc_type is not None or not self._resp.content.at_eof():
            self._resp.close()
        else:
            self._resp.release()

    async def json(self) -> dict[str, Any]:
        try:
            doc = orjson.loads(await self._resp.read())
        except _TRANSPORT as exc:
            raise self.backend.failure(exc) from None
        if not isinstance(doc, dict):
            raise BackendFailed(f"backend {self.backend.name!r} answered JSON that is not an object")
        return doc
