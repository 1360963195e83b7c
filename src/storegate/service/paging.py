"""Cursor paging shared by the completions list and the messages list: limit, order, after."""

from collections.abc import Mapping

import orjson

from storegate.errors import InvalidRequest
from storegate.store.base import Order, RenderedPage

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


def parse_paging(args: Mapping[str, str]) -> tuple[int, Order, str | None]:
    raw = args.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        # Plain digits, with an optional minus: not the spaces, '+' or '_' that int() also takes.
        digits = raw.removeprefix("-")
        if not (digits.isascii() and digits.isdigit()):
            raise InvalidRequest(f"Invalid 'limit': expected an integer, but got {raw!r} instead.",
                                 param="limit", code="invalid_type")  # fmt: skip
        limit = int(raw) if len(raw) <= 6 else MAX_LIMIT + 1  # (int() refuses over 4300 digits)
        if limit < 1:
            raise InvalidRequest(f"Invalid 'limit': integer below minimum value. Expected a value >= 1,"
                                 f" but got {limit} instead.", param="limit", code="integer_below_min_value")  # fmt: skip
        if limit > MAX_LIMIT:
            raise InvalidRequest(f"Invalid 'limit': integer above maximum value. Expected a value <= {MAX_LIMIT},"
                                 f" but got {limit} instead.", param="limit", code="integer_above_max_value")  # fmt: skip
    order = args.get("order", "asc")
    if order not in ("asc", "desc"):
        raise InvalidRequest(f"Invalid 'order': expected one of 'asc' or 'desc', but got {order!r} instead.",
                             param="order", code="invalid_value")  # fmt: skip
    return limit, "asc" if order == "asc" else "desc", args.get("after")


def list_object(page: RenderedPage) -> bytes:
    """The list of stored completions around its items (already JSON, as parts), in one join: with
    store.base.rendered_rows's parts, no body is copied before it (measured when rendering each body then
    joining the page: 26 -> 9 us for a page of 20)."""
    first = orjson.dumps(page.first_id) if page.first_id is not None else b"null"
    last = orjson.dumps(page.last_id) if page.last_id is not None else b"null"
    return b"".join((b'{"object":"list","data":[', *page.parts, b'],"first_id":', first, b',"last_id":', last,
                     b',"has_more":', b"true}" if page.has_more else b"false}"))  # fmt: skip


def page_body(items: list[tuple[str, bytes]], has_more: bool) -> bytes:
    """A list object from already-serialized items, without parsing them."""
    first = orjson.dumps(items[0][0]) if items else b"null"
    last = orjson.dumps(items[-1][0]) if items else b"null"
    data = b",".join(body for _, body in items)
    return (b'{"object":"list","data":[' + data + b'],"first_id":' + first + b',"last_id":' + last
            + b',"has_more":' + (b"true" if has_more else b"false") + b"}")  # fmt: skip
