"""Keys remembers what the store said about a key only while the store's key epoch stands still, and
never across a change that happened during the lookup. The store here is a real SQLite store; the
epoch is steered by committing from a second connection, as `storegate keys` does."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storegate.errors import RateLimited, Unauthorized
from storegate.service.keys import DEFAULT_PROJECT, Keys
from storegate.store.sqlite import SQLiteStore


class CountingStore(SQLiteStore):
    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.path = path
        self.lookups = 0
        self.change_during_lookup: str | None = None

    async def find_key(self, secret_hash: bytes) -> tuple[object, bool]:  # type: ignore[override]
        self.lookups += 1
        found = await super().find_key(secret_hash)
        if self.change_during_lookup is not None:
            _commit(self.path, self.change_during_lookup)
            self.change_during_lookup = None
        return found


def _commit(path: str, sql: str) -> None:
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute(sql)
    finally:
        conn.close()


async def _next_request() -> None:
    """A request sent after a commit is read in a later pass of the event loop than the commit."""
    await asyncio.sleep(0)


def test_lookups_are_remembered_until_the_epoch_moves(tmp_path: Path) -> None:
    async def main() -> None:
        store = CountingStore(str(tmp_path / "k.db"))
        await store.open()
        try:
            keys = Keys(store)
            key, secret = await keys.create("alpha")
            for _ in range(5):
                await _next_request()
                assert (await keys.authenticate(f"Bearer {secret}")).project == "alpha"
            assert store.lookups <= 2, "one lookup per epoch, not one per request"

            before = store.lookups
            _commit(store.path, f"UPDATE api_keys SET revoked = 1 WHERE id = '{key.id}'")
            await _next_request()
            with pytest.raises(Unauthorized):
                await keys.authenticate(f"Bearer {secret}")
            assert store.lookups == before + 1

            # A change that lands while a lookup is in flight: the answer is used once, not kept.
            _, other = await keys.create("beta")
            await keys.authenticate(f"Bearer {other}")
            _commit(store.path, "UPDATE api_keys SET rpm = 4")  # the next request must look up...
            await _next_request()
            store.change_during_lookup = "UPDATE api_keys SET rpm = 5"  # ...and this lands meanwhile
            await keys.authenticate(f"Bearer {other}")
            n = store.lookups
            await _next_request()
            await keys.authenticate(f"Bearer {other}")
            assert store.lookups == n + 1, "what was read across an epoch change must be read again"
        finally:
            await store.close()

    asyncio.run(main())


def test_nothing_is_remembered_when_the_store_cannot_tell(tmp_path: Path) -> None:
    class Blind(CountingStore):
        def key_epoch(self) -> object:
            return None

    async def main() -> None:
        store = Blind(str(tmp_path / "k.db"))
        await store.open()
        try:
            keys = Keys(store)
            _, secret = await keys.create("alpha")
            for _ in range(4):
                await keys.authenticate(f"Bearer {secret}")
            assert store.lookups == 4
        finally:
            await store.close()

    asyncio.run(main())


def test_known_answers_only_headers_accepted_in_this_epoch(tmp_path: Path) -> None:
    """`known` (the middleware's synchronous first try) answers a header without a lookup only when
    this epoch already accepted that exact header, and still counts its key's rate limit."""

    async def main() -> None:
        store = CountingStore(str(tmp_path / "k.db"))
        await store.open()
        try:
            keys = Keys(store)
            assert keys.known(None) is None, "nothing is known before a lookup"
            assert (await keys.authenticate(None)).project == DEFAULT_PROJECT
            await _next_request()
            open_door = keys.known("Bearer anything")
            assert open_door is not None and open_door.project == DEFAULT_PROJECT and open_door.key_id is None

            key, secret = await keys.create("alpha", rpm=3)  # keys are now required: the epoch moves
            await _next_request()
            assert keys.known(None) is None and keys.known("Bearer anything") is None
            with pytest.raises(Unauthorized):
                await keys.authenticate(None)
            assert (await keys.authenticate(f"Bearer {secret}")).project == "alpha"  # 1 of 3
            lookups = store.lookups
            await _next_request()
            hit = keys.known(f"Bearer {secret}")  # 2 of 3
            assert hit is not None and (hit.project, hit.key_id) == ("alpha", key.id)
            assert keys.known(f"Bearer {secret}x") is None, "another header is looked up"
            assert keys.known(f"bearer {secret}") is None, "only the exact header that was accepted"
            assert store.lookups == lookups
            assert keys.known(f"Bearer {secret}") is not None  # 3 of 3
            with pytest.raises(RateLimited):
                keys.known(f"Bearer {secret}")

            _commit(store.path, f"UPDATE api_keys SET revoked = 1 WHERE id = '{key.id}'")
            await _next_request()
            assert keys.known(f"Bearer {secret}") is None, "a revocation is seen on the next request"
            with pytest.raises(Unauthorized):
                await keys.authenticate(f"Bearer {secret}")

            # Accepted while keys changed: not remembered, the next request looks it up again.
            _, other = await keys.create("beta")
            await _next_request()
            store.change_during_lookup = "UPDATE api_keys SET rpm = 5"
            assert (await keys.authenticate(f"Bearer {other}")).project == "beta"
            await _next_request()
            assert keys.known(f"Bearer {other}") is None
        finally:
            await store.close()

    asyncio.run(main())
