"""Keys remembers what the store said about a key only while the store's key epoch stands still, and
never across a change that happened during the lookup. The store here is a real SQLite store; the
epoch is steered by committing from a second connection, as `storegate keys` does."""

import asyncio
import sqlite3
from pathlib import Path

import pytest

from storegate.errors import Unauthorized
from storegate.service.keys import Keys
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
