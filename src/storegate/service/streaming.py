"""A streamed create: pass each chunk on as it arrives (with our id and clock), reassemble, store.

The completion is durable before the client sees `data: [DONE]`. A stream cut short by either side
is stored as far as it got, marked incomplete; the client then gets an error event and no [DONE].
"""

import asyncio
import logging
from collections.abc import AsyncGenerator
from typing import Any

import orjson

from storegate.backends import Upstream
from storegate.errors import BackendFailed, BackendTimeout, StoregateError
from storegate.service.call import Call
from storegate.service.reassembly import Reassembly
from storegate.store import Store

log = logging.getLogger("storegate.stream")
DONE = b"data: [DONE]\n\n"


class BackendStreamError(StoregateError):
    """The backend sent an error event mid-stream; its (scrubbed) error object is passed on."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or "the backend failed mid-stream"))
        self.error = error

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error})


class ChatStream:
    def __init__(self, call: Call, upstream: Upstream, store: Store) -> None:
        self._call = call
        self._upstream = upstream
        self._store = store
        self._assembly = Reassembly()
        self._backend_id: Any = None
        self._persisting: asyncio.Task[None] | None = None

    async def frames(self) -> AsyncGenerator[bytes, None]:
        """The SSE frames to send, ending with [DONE] only once a stored completion is durable."""
        failure: StoregateError | None = None
        done = False
        async with self._upstream:
            try:
                async for data in self._upstream.events():
                    if data == b"[DONE]":
                        done = True
                        break
                    frame = self._frame(data)
                    if frame is not None:
                        yield frame
            except StoregateError as exc:
                failure = exc
        if failure is None and not done:
            failure = BackendFailed(f"backend {self._call.backend.name!r} ended the stream without [DONE]")
        if failure is not None:
            await self._persist_quietly(
                "backend_timeout" if isinstance(failure, BackendTimeout) else "backend_error"
            )
            yield b"data: " + failure.body() + b"\n\n"
            return
        task = self._persist(None)
        if task is not None:
            try:
                await asyncio.shield(task)
            except StoregateError as exc:
                yield b"data: " + exc.body() + b"\n\n"
                return
        yield DONE

    async def abandon(self) -> None:
        """The client left: store what was produced, marked incomplete."""
        await self._persist_quietly("client_disconnected")

    def _frame(self, data: bytes) -> bytes | None:
        call = self._call
        try:
            chunk = orjson.loads(data)
        except orjson.JSONDecodeError:
            raise BackendFailed(f"backend {call.backend.name!r} sent malformed SSE data") from None
        if not isinstance(chunk, dict):
            raise BackendFailed(f"backend {call.backend.name!r} sent an SSE event that is not an object")
        if "error" in chunk:
            error = chunk["error"] if isinstance(chunk["error"], dict) else {"message": str(chunk["error"])}
            scrubbed = {k: call.backend.scrub(v) if isinstance(v, str) else v for k, v in error.items()}
            for key in ("message", "type", "param", "code"):
                scrubbed.setdefault(key, "server_error" if key == "type" else None)
            raise BackendStreamError(scrubbed)
        if self._backend_id is None:
            self._backend_id = chunk.get("id")
        chunk["id"] = call.id
        chunk["created"] = call.created
        if call.store:
            self._assembly.add(chunk)
        if call.strip_usage:
            if not chunk.get("choices") and chunk.get("usage") is not None:
                return None
            chunk.pop("usage", None)
        if chunk.get("system_fingerprint", "") is None:
            del chunk["system_fingerprint"]  # the spec types it as a string
        return b"data: " + orjson.dumps(chunk) + b"\n\n"

    def _persist(self, incomplete_reason: str | None) -> "asyncio.Task[None] | None":
        """Start storing (once); None when there is nothing to store."""
        if not self._call.store or self._assembly.chunks == 0:
            return None
        if self._persisting is None:
            doc = self._assembly.result(self._call.id, self._call.created, incomplete_reason)
            record = self._call.record(doc, self._backend_id, incomplete_reason is not None)
            self._persisting = asyncio.ensure_future(self._store.insert(record))
        return self._persisting

    async def _persist_quietly(self, reason: str) -> None:
        task = self._persist(reason)
        if task is None:
            return
        try:
            await asyncio.shield(task)
        except StoregateError as exc:
            log.error("could not store incomplete completion %s: %s", self._call.id, exc.message)
