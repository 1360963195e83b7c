"""A streamed create: pass each chunk on as it arrives (with our id and clock), reassemble, store.

Each event is framed and handed to the client's connection inside the backend connection's
`data_received` (backends/stream.py), so a chunk costs no task switch on its way through. The
completion is durable before the client sees `data: [DONE]`. A stream cut short by either side is
stored as far as it got, marked incomplete; the client then gets an error event and no [DONE].
"""

import asyncio
import logging
from typing import Any, Protocol

import orjson

from storegate.backends.stream import Response
from storegate.errors import BackendFailed, BackendTimeout, StoregateError
from storegate.service.call import Call
from storegate.service.reassembly import Reassembly, chunk_choices
from storegate.store import Store

log = logging.getLogger("storegate.stream")
DONE = b"data: [DONE]\n\n"


DONE_GRACE = 1.0  # after [DONE], how long the backend may take to end its message and keep the connection


class Output(Protocol):
    """Where the frames go: the client's connection."""

    @property
    def gone(self) -> bool:
        """The client has left (its connection is closing or closed)."""

    def send(self, frame: bytes) -> bool:
        """Write one SSE frame now; False once the client's buffer is over its limit."""

    async def drain(self) -> None:
        """Until the client's buffer is back under its limit (raises ConnectionError if it left)."""


class BackendStreamError(StoregateError):
    """The backend sent an error event mid-stream; its (scrubbed) error object is passed on."""

    log_safe = False

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(str(error.get("message") or "the backend failed mid-stream"))
        self.error = error

    def body(self) -> bytes:
        return orjson.dumps({"error": self.error})


class ChatStream:
    def __init__(self, call: Call, response: Response, store: Store) -> None:
        self._call = call
        self._response = response
        self._store = store
        self._assembly = Reassembly()
        self._backend_id: Any = None
        self._persisting: asyncio.Task[None] | None = None
        self._done = False
        self._client_gone = False
        self._choices: set[int] = set()  # the indexes of the choices the backend sent
        self._finished: set[int] = set()  # those it gave a finish_reason
        self._draining: asyncio.Task[None] | None = None
        # Why the stream ended in an error event, for the access log (its status stays 200): our own
        # message, never a backend's words, which could echo what the client sent.
        self.failure_reason: str | None = None

    async def relay(self, out: Output) -> bytes:
        """Send every chunk as it arrives; once the backend is done, store the completion (durably)
        and return the last frame to send: [DONE], or an error event (then the stream is stored as
        far as it got, marked incomplete). Cancelled (the client left): the backend is dropped."""
        response = self._response

        def on_event(data: bytes) -> None:
            if self._done or self._client_gone:
                return
            if out.gone:
                self._left()
                return
            if data == b"[DONE]":
                self._done = True
                response.stop()
                return
            frame = self._frame(data)  # a StoregateError here fails the response
            if frame is not None and not out.send(frame) and self._draining is None:
                response.pause()
                self._draining = asyncio.ensure_future(self._drain(out))

        failure: StoregateError | None = None
        response.attach(on_event)
        try:
            await response.done()
        except StoregateError as exc:
            # Without its traceback: that holds this frame, which holds `failure` (and through it the
            # stream and the request), a cycle only the cycle collector would free.
            failure = exc.with_traceback(None)
        finally:
            if self._draining is not None:
                self._draining.cancel()
            response.close(DONE_GRACE if self._done and not self._client_gone else 0.0)
        if self._client_gone:
            raise ConnectionResetError("the client left mid-stream")
        if failure is None and not self._done and not (self._choices and self._choices <= self._finished):
            # A clean end without [DONE] after every choice finished is the whole answer (some servers
            # never send it; the SDKs end the stream either way); with a choice unfinished, a cut.
            failure = BackendFailed(f"backend {self._call.backend.name!r} ended the stream without [DONE]"
                                    " before every choice finished")  # fmt: skip
        if failure is not None:
            self.failure_reason = _reason(failure)
            await self._persist_quietly(
                "backend_timeout" if isinstance(failure, BackendTimeout) else "backend_error"
            )
            return b"data: " + failure.body() + b"\n\n"
        task = self._persist(None)
        if task is not None:
            try:
                await asyncio.shield(task)
            except StoregateError as exc:
                self.failure_reason = _reason(exc)
                return b"data: " + exc.body() + b"\n\n"
        return DONE

    async def _drain(self, out: Output) -> None:
        try:
            await out.drain()
        except ConnectionError:
            self._left()
            return
        finally:
            self._draining = None
        self._response.resume()

    def _left(self) -> None:
        """The client left: end the relay now (the caller stores what was produced)."""
        self._client_gone = True
        self._response.stop()

    async def abandon(self) -> None:
        """The client left: drop the backend, store what was produced, marked incomplete."""
        self._response.close()
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
        for index, choice in chunk_choices(chunk):  # (stored or not: whether the answer was whole)
            self._choices.add(index)
            if choice.get("finish_reason") is not None:
                self._finished.add(index)
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


def _reason(failure: StoregateError) -> str:
    if isinstance(failure, BackendStreamError):
        return "the backend sent an error event mid-stream"
    return failure.message
