"""Create: forward to the routed backend, store when asked, answer with our id and clock."""

from typing import Any

import orjson

from storegate.backends import Router
from storegate.errors import BackendFailed
from storegate.ids import IdMinter
from storegate.service.call import prepare
from storegate.service.records import conform
from storegate.service.streaming import ChatStream
from storegate.store import Store


class Chat:
    def __init__(self, store: Store, router: Router, *, store_default: bool) -> None:
        self._store = store
        self._router = router
        self._minter = IdMinter()
        self._store_default = store_default

    async def create(
        self, raw: bytes, *, project: str, request_id: str, client_key: str | None = None
    ) -> bytes | ChatStream:
        """The response body, or for `stream: true` a ChatStream whose backend has answered 200."""
        call = prepare(raw, project=project, request_id=request_id, router=self._router, minter=self._minter,
                       store_default=self._store_default)  # fmt: skip
        if call.stream:
            response = await call.backend.stream(call.forward, request_id, client_key)
            if not response.is_event_stream:
                response.close()
                raise BackendFailed(
                    f"backend {call.backend.name!r} did not answer the stream with an event stream"
                )
            return ChatStream(call, response, self._store)
        upstream = await call.backend.post(call.forward, request_id, client_key)
        async with upstream:
            doc = await upstream.json()
        _check_completion(doc, call.backend.name)
        backend_id = doc.get("id")
        doc["id"] = call.id
        doc["created"] = call.created
        conform(doc)
        if call.store:
            await self._store.insert(call.record(doc, backend_id, incomplete=False))
        return orjson.dumps(doc)


def _check_completion(doc: dict[str, Any], backend: str) -> None:
    choices = doc.get("choices")
    if not isinstance(choices, list) or not all(isinstance(c, dict) for c in choices):
        raise BackendFailed(f"backend {backend!r} answered something that is not a chat completion")
