"""Administration commands on a database: keys, migrations, compaction. Each opens the store, acts,
closes; compaction works on the SQLite file itself, alone."""

import asyncio
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from storegate.service.keys import Keys
from storegate.settings import Settings
from storegate.store import Store
from storegate.store.factory import SQLITE_PREFIX, open_store, sqlite_path
from storegate.store.sqlite import compact as sqlite_compact


@asynccontextmanager
async def _store(settings: Settings) -> AsyncIterator[Store]:
    store = await open_store(settings)
    try:
        yield store
    finally:
        await store.close()


async def migrate(settings: Settings) -> int:
    async with _store(settings) as store:
        applied = store.migrations_applied
    print(f"applied migrations {applied}" if applied else "the database is up to date")
    return 0


async def compact(settings: Settings) -> int:
    """SQLite only: migrate and rewrite the file, holding it alone (store/sqlite.py's compact)."""
    if not settings.db.startswith(SQLITE_PREFIX):
        print("storegate: db compact is for SQLite files; PostgreSQL reclaims space by (auto)vacuum,"
              " and the README says how to rewrite rows stored before its migration 0004", file=sys.stderr)  # fmt: skip
        return 2
    path = sqlite_path(settings.db)
    before, after, old_page, new_page, applied = await asyncio.get_running_loop().run_in_executor(
        None, sqlite_compact, path
    )
    if applied:
        print(f"applied migrations {applied}")
    print(f"compacted {path}: {before:,} -> {after:,} bytes, pages of {old_page} -> {new_page} bytes")
    return 0


async def create_key(settings: Settings, project: str, rpm: int | None) -> int:
    async with _store(settings) as store:
        key, secret = await Keys(store).create(project, rpm)
    print(f"created {key.id} for project {key.project}; the key is shown once, keep it now:")
    print(secret)
    return 0


async def list_keys(settings: Settings) -> int:
    async with _store(settings) as store:
        keys = await store.list_keys()
    print(f"{'id':<22} {'project':<20} {'prefix':<8} {'rpm':>6} {'created':<20} {'last used':<20} revoked")
    for k in keys:
        rpm = str(k.rpm) if k.rpm is not None else "-"
        print(f"{k.id:<22} {k.project:<20} {k.prefix:<8} {rpm:>6} {_when(k.created):<20} "
              f"{_when(k.last_used):<20} {_when(k.revoked)}")  # fmt: skip
    return 0


async def revoke_key(settings: Settings, key_id: str) -> int:
    async with _store(settings) as store:
        done = await store.revoke_key(key_id, int(time.time()))
    if not done:
        print(f"storegate: no active key {key_id}", file=sys.stderr)
        return 1
    print(f"revoked {key_id}")
    return 0


def _when(at: int | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(at)) if at is not None else "-"
