"""The Store protocol every storage backend implements, and the records that cross it.

The store keeps bytes it is given and hands them back; it knows nothing of HTTP or OpenAI's wire
format beyond the filterable columns named here, and one rule for reading a completion back as one
JSON object (`spliced`), which a list page may have the database apply (`RenderedPage`).
"""

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Generic, Literal, NamedTuple, Protocol, TypeVar

Order = Literal["asc", "desc"]
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class NewCompletion:
    project: str
    id: str
    created: int
    model: str
    response_model: str | None
    backend: str
    backend_id: str | None
    incomplete: bool
    metadata: dict[str, str]
    body: bytes
    request: bytes
    messages: list[bytes]


class Row(NamedTuple):
    """A stored completion as the store hands it back: its body and its current metadata (JSON). A
    named tuple, not a frozen dataclass: a page makes 21 of them, at ~0.5 us each instead of ~1."""

    id: str
    body: bytes
    metadata: bytes


def spliced(body: bytes, metadata: bytes) -> bytes:
    """A stored completion as one JSON object: its body (kept without metadata, which changes) with its
    current metadata spliced in first, neither of them parsed."""
    return b'{"metadata":' + metadata + b"," + body[1:]


class RenderedPage(NamedTuple):
    """A list page in JSON: `parts` concatenate to its completions as `spliced` makes them, in the
    page's order, separated by commas. PostgreSQL builds them in its query (one part: its CPU, not
    the event loop's); `rendered_rows` builds them from rows, as parts joined once by the caller."""

    parts: Sequence[bytes | memoryview]
    first_id: str | None
    last_id: str | None
    has_more: bool


@dataclass(frozen=True, slots=True)
class ListQuery:
    project: str
    model: str | None
    metadata: dict[str, str]
    after: str | None
    limit: int
    order: Order
    id_from: str | None = None
    id_before: str | None = None


@dataclass(frozen=True, slots=True)
class MessagesQuery:
    project: str
    completion_id: str
    after_index: int | None
    limit: int
    order: Order


@dataclass(frozen=True, slots=True)
class ApiKey:
    """A key as stored: never its secret, only the secret's hash and a short prefix to recognise it."""

    id: str
    project: str
    prefix: str
    rpm: int | None
    created: int
    last_used: int | None
    revoked: int | None


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    has_more: bool


def rendered(page: Page[Row]) -> RenderedPage:
    """`rendered_rows` for a Page of Rows (PostgreSQL's pages and the tests')."""
    return rendered_rows(page.items, page.has_more)


def rendered_rows(items: Sequence[tuple[str, bytes, bytes]], has_more: bool) -> RenderedPage:
    """A page of rows, each (id, body, metadata) as a Row or as the store's own tuple, in JSON, as parts
    (no body is copied until the caller's one join)."""
    parts: list[bytes | memoryview] = []
    for _, body, metadata in items:
        parts += (b'{"metadata":', metadata, b",", memoryview(body)[1:], b",")
    if parts:
        parts.pop()  # the last item's comma
    return RenderedPage(parts, items[0][0] if items else None, items[-1][0] if items else None, has_more)


class Store(Protocol):
    """Completions by project. Every method raises StoreUnavailable when the store cannot answer."""

    async def open(self) -> None:
        """Connect and apply pending migrations."""

    @property
    def migrations_applied(self) -> list[int]:
        """The migration versions the last open() applied."""
        ...

    async def close(self) -> None: ...

    async def ping(self) -> None: ...

    async def insert(self, completion: NewCompletion) -> None:
        """Returns once the completion is durable."""

    async def get(self, project: str, completion_id: str) -> Row | None: ...

    async def list(self, query: ListQuery) -> Page[Row]: ...

    async def list_rendered(self, query: ListQuery) -> RenderedPage:
        """The same page as `list`, in JSON: what the API's list object carries."""

    async def update_metadata(
        self, project: str, completion_id: str, metadata: dict[str, str]
    ) -> Row | None: ...

    async def delete(self, project: str, completion_id: str) -> bool: ...

    async def list_messages(self, query: MessagesQuery) -> Page[tuple[int, bytes]] | None:
        """None when the completion does not exist in the project."""

    async def add_key(self, key: ApiKey, secret_hash: bytes) -> None: ...

    async def list_keys(self) -> tuple[ApiKey, ...]: ...

    async def revoke_key(self, key_id: str, when: int) -> bool:
        """False when there is no such key or it was already revoked."""

    async def find_key(self, secret_hash: bytes) -> tuple[ApiKey | None, bool]:
        """The key with this hash (revoked or not), and whether any key was ever created (revoked ones
        count: revoking every key must not open the door again)."""

    async def touch_key(self, key_id: str, when: int) -> None:
        """Record a use; callers throttle this, it is a write."""

    def key_epoch(self) -> object:
        """A value that changes whenever api_keys may have changed, by any process or replica, before
        that change can be read here; None when the store cannot tell (nothing may be cached then).
        It is read on every request, so it must be cheap and must not block for long."""

    async def purge(self, before_id: str, project: str | None, exclude: tuple[str, ...], limit: int) -> int:
        """Delete up to `limit` of the oldest completions with ids below `before_id` (in `project`, or
        in every project but `exclude`), with their messages; returns how many went."""
