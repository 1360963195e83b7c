"""Stored completions: list, retrieve, update metadata, delete, and list a completion's messages.

Bodies come back from the store as bytes and are spliced, never parsed, on the way out.
"""

from collections.abc import Sequence

import orjson

from storegate.errors import InvalidRequest, not_found
from storegate.ids import id_floor, is_completion_id, message_id, parse_message_id
from storegate.service.call import parse_object
from storegate.service.metadata import validate_metadata
from storegate.service.paging import list_object, page_body, parse_paging
from storegate.store import ListQuery, MessagesQuery, Store
from storegate.store.base import spliced

Params = Sequence[tuple[str, str]]
_LIST_PARAMS = frozenset({"model", "metadata", "after", "limit", "order", "created_after", "created_before"})


class StoredCompletions:
    def __init__(self, store: Store) -> None:
        self._store = store

    async def list(self, project: str, params: Params) -> bytes:
        args = dict(params)
        # A bare metadata=..., neither form metadata_filters reads: ignoring it would answer an unfiltered list.
        if any(key == "metadata" and value for key, value in params):
            raise InvalidRequest("Invalid 'metadata': filter with metadata[<key>]=<value>, one parameter per key.",
                                 param="metadata", code="invalid_value")  # fmt: skip
        limit, order, after = parse_paging(args)
        if after is not None and not is_completion_id(after):
            raise InvalidRequest(f"Invalid 'after': {after!r} is not a chat completion id.", param="after",
                                 code="invalid_value")  # fmt: skip
        query = ListQuery(
            project=project,
            model=args.get("model"),
            metadata=validate_metadata(metadata_filters(params)),
            after=after,
            limit=limit,
            order=order,
            id_from=_bound(args, "created_after", 1),
            id_before=_bound(args, "created_before", 0),
        )
        return list_object(await self._store.list_rendered(query))

    async def get(self, project: str, completion_id: str) -> bytes:
        row = await self._store.get(project, completion_id) if is_completion_id(completion_id) else None
        if row is None:
            raise not_found(completion_id)
        return spliced(row.body, row.metadata)

    async def update(self, project: str, completion_id: str, raw: bytes) -> bytes:
        doc = parse_object(raw)
        for key in doc:
            if key != "metadata":
                raise InvalidRequest(f"Unrecognized request argument supplied: {key}", param=key,
                                     code="unknown_parameter")  # fmt: skip
        if "metadata" not in doc:
            raise InvalidRequest("Missing required parameter: 'metadata'.", param="metadata",
                                 code="missing_required_parameter")  # fmt: skip
        metadata = validate_metadata(doc["metadata"])
        row = (
            await self._store.update_metadata(project, completion_id, metadata)
            if is_completion_id(completion_id)
            else None
        )
        if row is None:
            raise not_found(completion_id)
        return spliced(row.body, row.metadata)

    async def delete(self, project: str, completion_id: str) -> bytes:
        if not is_completion_id(completion_id) or not await self._store.delete(project, completion_id):
            raise not_found(completion_id)
        return orjson.dumps({"object": "chat.completion.deleted", "id": completion_id, "deleted": True})

    async def messages(self, project: str, completion_id: str, params: Params) -> bytes:
        limit, order, after = parse_paging(dict(params))
        if not is_completion_id(completion_id):
            raise not_found(completion_id)
        after_index = None
        if after is not None:
            after_index = parse_message_id(after, completion_id)
            if after_index is None:
                raise InvalidRequest(f"Invalid 'after': {after!r} is not a message of {completion_id}.",
                                     param="after", code="invalid_value")  # fmt: skip
        page = await self._store.list_messages(
            MessagesQuery(project, completion_id, after_index, limit, order)
        )
        if page is None:
            raise not_found(completion_id)
        return page_body([(message_id(completion_id, i), item) for i, item in page.items], page.has_more)


def metadata_filters(params: Params) -> dict[str, str]:
    """`metadata[k]=v`, as the SDKs send it; and bare `k=v` for any other name, as a client generated
    from the spec sends it (OpenAPI's default for an object in the query is form style, exploded)."""
    filters = {}
    for key, value in params:
        if key.startswith("metadata[") and key.endswith("]"):
            filters[key[9:-1]] = value
        elif key not in _LIST_PARAMS:
            filters[key] = value
    return filters


def _bound(args: dict[str, str], name: str, shift: int) -> str | None:
    """created_after=T keeps created > T, created_before=T keeps created < T, as id bounds."""
    raw = args.get(name)
    if raw is None:
        return None
    try:
        seconds = int(raw)
    except ValueError:
        raise InvalidRequest(f"Invalid '{name}': expected Unix seconds, got {raw!r}.", param=name,
                             code="invalid_type") from None  # fmt: skip
    return id_floor(seconds + shift)
