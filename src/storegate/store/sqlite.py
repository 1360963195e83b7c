"""The SQLite store: reads run directly on the event loop (fastest, measured); writes go to one
writer process in group commits (store/writer.py says why a process; store/sqlite_writer.py is
it). WAL mode, so reads never wait for writes.
"""

import asyncio
import json
import logging
import os
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from operator import itemgetter
from typing import Any

import orjson

from storegate.errors import StoreUnavailable
from storegate.store.base import (
    ApiKey,
    ListQuery,
    MessagesQuery,
    NewCompletion,
    Page,
    RenderedPage,
    Row,
    rendered_rows,
)
from storegate.store.migrate import apply_sqlite
from storegate.store.sql import COUNT_CAP, Filter, count_sql, filters, list_sql
from storegate.store.sqlite_writes import connect
from storegate.store.writer import HANG_TIMEOUT_S, Writer, WriterLost, WriterOverloaded, process_argv

log = logging.getLogger(__name__)
Rows = list[Any]
_COUNT = count_sql(lambda _: "?")
_PAGE_SIZE = 8192
_GET = "SELECT id, body, metadata FROM completions WHERE id = ? AND project = ?"
_HAS = "SELECT 1 FROM completions WHERE id = ? AND project = ?"
_KEY_COLUMNS = "id, project, prefix, rpm, created, last_used, revoked"
_KEY_GENERATION = "SELECT n FROM key_generation"
_first = itemgetter(0)
# What moves the key generation (migration 0003). A migration that rebuilds api_keys drops them with
# it: without all three, key_epoch says it cannot tell, and keys are looked up on every request.
KEY_TRIGGERS = ("api_keys_insert", "api_keys_update", "api_keys_delete")
_KEY_TRIGGERS = (
    "SELECT count(*) FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'api_keys'"
    f" AND name IN {KEY_TRIGGERS!r}"
)


class SQLiteStore:
    def __init__(
        self,
        path: str,
        *,
        synchronous: str = "FULL",
        cache_mib: int = 64,
        queue_max: int = 10_000,
        hang_timeout: float = HANG_TIMEOUT_S,
    ) -> None:
        self._path = path
        self._synchronous = synchronous.upper()
        self._cache_kib = cache_mib * 1024
        config = json.dumps({"path": path, "synchronous": self._synchronous, "cache_kib": self._cache_kib,
                             "log_level": logging.getLogger("storegate").getEffectiveLevel()})  # fmt: skip
        self._writer = Writer(process_argv("storegate.store.sqlite_writer", config), queue_max, hang_timeout)
        self._reader: sqlite3.Connection | None = None
        self._aside: sqlite3.Connection | None = None  # used only in _aside_pool's one thread
        self._aside_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="storegate-sqlite-reader")
        self._applied: list[int] = []
        self._epoch: int | None = None
        self._in_pass = False  # the reader is inside this event-loop pass's read transaction
        self._key_triggers = False  # the key generation counter moves on key changes (checked at open)

    @property
    def migrations_applied(self) -> list[int]:
        return self._applied

    @property
    def writer_pid(self) -> int | None:
        """The writer process's, while it runs."""
        return self._writer.pid

    def _connect(self) -> sqlite3.Connection:
        return connect(self._path, self._cache_kib)

    async def open(self) -> None:
        try:
            conn = self._connect()
            try:
                # A new database's pages (an existing one keeps its own: SQLite changes the page size
                # only in a VACUUM outside WAL mode). With the request apart (migration 0004) five
                # completions share a page, and a list of 20 reads ~12 pages instead of ~23.
                conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
                conn.execute("PRAGMA journal_mode = WAL")
                self._applied = apply_sqlite(conn)
            finally:
                conn.close()
            self._reader = self._connect()
            self._reader.execute("PRAGMA query_only = 1")
            self._key_triggers = self._reader.execute(_KEY_TRIGGERS).fetchone()[0] == len(KEY_TRIGGERS)
            if not self._key_triggers:
                log.warning("the triggers on api_keys are missing: every request will look its key up")
            await self._writer.start()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite database {self._path}: {exc}") from exc

    async def close(self) -> None:
        await self._writer.stop()
        await asyncio.get_running_loop().run_in_executor(self._aside_pool, self._close_aside)
        self._aside_pool.shutdown()
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    def _close_aside(self) -> None:
        if self._aside is not None:
            self._aside.close()
            self._aside = None

    async def ping(self) -> None:
        """The file reads, and the writer process takes writes: while one is restarting (after it
        died, hung or gave up a stuck connection) or stalled on a slow disk, every write would be
        refused."""
        self._writer.ensure_open()
        with self._reading() as db:
            db.execute("SELECT 1 FROM schema_migrations LIMIT 1").fetchall()

    async def insert(self, completion: NewCompletion) -> None:
        try:
            await self._write("insert", *_fields(completion))
        except WriterLost:
            # The writer process died after this insert was sent and before it answered. Its COMMIT
            # may have returned (the answer lost with the process): then the completion is there and
            # durable (a reader sees a transaction only once its commit is in the WAL, synced first
            # with synchronous=FULL), and it is confirmed, not failed, so a client that retries does
            # not store it twice. The process is gone (its socket closed as it ended): no commit of
            # it can come after this read.
            if not self._has(completion.project, completion.id):
                raise

    async def get(self, project: str, completion_id: str) -> Row | None:
        # The hottest read: no context manager, a plain try (measured: ~2 us of 16 per call).
        try:
            found = self._snapshot().execute(_GET, (completion_id, project)).fetchone()
        except sqlite3.Error as exc:
            raise _unanswered(exc) from exc
        return Row(*found) if found else None

    def _has(self, project: str, completion_id: str) -> bool:
        with self._reading() as db:
            return db.execute(_HAS, (completion_id, project)).fetchone() is not None

    async def list(self, query: ListQuery) -> Page[Row]:
        rows = await self._rows(query)
        return Page([Row(*r) for r in rows[: query.limit]], len(rows) > query.limit)

    async def list_rendered(self, query: ListQuery) -> RenderedPage:
        # Rendered here, from the rows as SQLite returns them (no Row made for each). JSON built in SQL
        # saved ~1 of ~33 us a page of 20 at 10k (its concatenations cost SQLite nearly what they save
        # Python; bench/analysis/2026-11-27T2355Z.md): not done.
        rows = await self._rows(query)
        return rendered_rows(rows[: query.limit], len(rows) > query.limit)

    async def _rows(self, query: ListQuery) -> Rows:
        """The page's rows, (id, body, metadata) in the page's order, and one more if there is one."""
        walk = filters(query)
        if len(walk) < 2:  # one ordered index walk of ~limit rows: fastest right here on the loop
            try:  # (as in get: a plain try, not _reading's context manager, ~1 us)
                return _select(self._snapshot(), query, walk)
            except sqlite3.Error as exc:
                raise _unanswered(exc) from exc
        # probing several filters can take long: keep it off the loop, in the slow reader's thread
        return await self._read_aside(lambda db: _select(db, query, _rarest_first(db, query.project, walk)))

    async def update_metadata(self, project: str, completion_id: str, metadata: dict[str, str]) -> Row | None:
        result: Row | None = await self._write(
            "update", project, completion_id, metadata, orjson.dumps(metadata)
        )
        return result

    async def delete(self, project: str, completion_id: str) -> bool:
        return bool(await self._write("delete", project, completion_id))

    async def list_messages(self, query: MessagesQuery) -> Page[tuple[int, bytes]] | None:
        cmp = ">" if query.order == "asc" else "<"
        where = "completion_id = ?" + (f" AND idx {cmp} ?" if query.after_index is not None else "")
        params: list[Any] = [query.completion_id]
        if query.after_index is not None:
            params.append(query.after_index)
        with self._reading() as db:
            if not db.execute(
                "SELECT 1 FROM completions WHERE id = ? AND project = ?", (query.completion_id, query.project)
            ).fetchone():
                return None
            rows = db.execute(
                f"SELECT idx, item FROM messages WHERE {where} ORDER BY idx {query.order} LIMIT ?",
                (*params, query.limit + 1),
            ).fetchall()
        return Page([(r[0], r[1]) for r in rows[: query.limit]], len(rows) > query.limit)

    async def purge(self, before_id: str, project: str | None, exclude: tuple[str, ...], limit: int) -> int:
        purged: int = await self._write("purge", before_id, project, exclude, limit)
        return purged

    async def add_key(self, key: ApiKey, secret_hash: bytes) -> None:
        await self._write("add_key", key.id, key.project, secret_hash, key.prefix, key.rpm, key.created)

    async def list_keys(self) -> tuple[ApiKey, ...]:
        with self._reading() as db:
            rows = db.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, id").fetchall()
        return tuple(ApiKey(*r) for r in rows)

    async def revoke_key(self, key_id: str, when: int) -> bool:
        return bool(await self._write("revoke_key", key_id, when))

    async def find_key(self, secret_hash: bytes) -> tuple[ApiKey | None, bool]:
        with self._reading() as db:
            rows = db.execute(
                f"SELECT {_KEY_COLUMNS}, EXISTS (SELECT 1 FROM api_keys)"
                " FROM (SELECT 1) LEFT JOIN api_keys ON hash = ?",
                (secret_hash,),
            ).fetchone()
        return (ApiKey(*rows[:7]) if rows[0] is not None else None), bool(rows[7])

    async def touch_key(self, key_id: str, when: int) -> None:
        await self._write("touch_key", key_id, when)

    def key_epoch(self) -> object:
        """The key generation: a counter that triggers on api_keys move on every change to a key
        (migration 0003), made by this process or any other (`storegate keys`). A completion
        written meanwhile does not move it: under write load keys are not looked up again.
        (SQLite's data_version, used before, moved on every commit by another connection, this
        process's writer included: at one stream at a time, the key lookup it caused per request
        cost ~60 us of the ~0.7 ms between a request's arrival and its forwarding.)

        It is read once per pass of the event loop, by the first request of the pass to ask, and
        forgotten at the start of the next pass (call_soon is FIFO). Every request of a pass was
        read from its socket before the pass began, so a request sent after a key change committed
        always sees that change.

        It is read inside the pass's snapshot when a read already began one (key lookups then read
        that same state), else on its own: a pass that only authenticates (creates, streams) holds
        no snapshot that would keep the writer's checkpoints from restarting the WAL. A key lookup
        later in the pass begins a snapshot no older than the epoch, so what is remembered under an
        epoch is never older than it."""
        if self._epoch is None and self._reader is not None:
            try:
                row = self._reader.execute(_KEY_GENERATION).fetchone() if self._key_triggers else None
            except sqlite3.Error:
                return None
            if row is None:  # no counter, or one nothing moves: remember nothing, look keys up always
                return None
            self._epoch = row[0]
            if not self._in_pass:
                asyncio.get_running_loop().call_soon(self._forget_epoch)
        return self._epoch

    def _forget_epoch(self) -> None:
        self._epoch = None

    def _snapshot(self) -> sqlite3.Connection:
        """The reader, inside this pass's read transaction: every read of one pass of the event loop
        shares one snapshot, begun at its first read and ended at the start of the next pass
        (call_soon is FIFO), which also forgets the pass's key epoch. Measured: a read transaction per
        statement costs three system calls (two fcntl locks on the -shm file and a stat); bench/ab,
        c=64: retrieve 216 -> 194 us of CPU, list 432 -> 385 (10k store), 227 -> 213 and 498 -> 455
        (1M store)."""
        reader = self._reader
        if reader is None:
            raise StoreUnavailable("the store is not open")
        if not self._in_pass:
            reader.execute("BEGIN")  # deferred: the snapshot is taken by the pass's first read
            self._in_pass = True
            asyncio.get_running_loop().call_soon(self._end_pass)
        return reader

    def _end_pass(self) -> None:
        self._in_pass = False
        self._epoch = None
        reader = self._reader
        if reader is not None and reader.in_transaction:
            try:
                reader.execute("COMMIT")
            except sqlite3.Error:
                log.exception("ending a read transaction failed; rolling it back")
                # A read transaction left open would serve this snapshot forever: never keep it.
                try:
                    reader.execute("ROLLBACK")
                except sqlite3.Error:
                    log.exception("rolling back a read transaction failed")

    async def _read_aside(self, read: Callable[[sqlite3.Connection], Rows]) -> Rows:
        def run() -> Rows:
            if self._aside is None:
                self._aside = self._connect()
                self._aside.execute("PRAGMA query_only = 1")
            return read(self._aside)

        try:
            return await asyncio.get_running_loop().run_in_executor(self._aside_pool, run)
        except sqlite3.Error as exc:
            raise _unanswered(exc) from exc

    @contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        try:
            yield self._snapshot()
        except sqlite3.Error as exc:
            raise _unanswered(exc) from exc

    async def _write(self, name: str, *args: Any) -> Any:
        """Run the command `name` (sqlite_writes.WRITES) in the writer process; its result once committed."""
        try:
            future = self._writer.submit(name, *args)
        except WriterOverloaded:
            raise StoreUnavailable("the store is overloaded; retry shortly", retry_after=1) from None
        try:
            # Not shielded: a caller that leaves (cancelled) cancels only its wait; the write goes on
            # in the writer process, and its answer is dropped (writer._Link.data_received).
            return await future
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"the store could not write: {exc}") from exc


def compact(path: str) -> tuple[int, int, int, int, list[int]]:
    """Apply pending migrations, then rewrite the whole file (VACUUM) on the page size a new database
    gets: pages that deletes and migration 0004's rebuild freed go back to the OS, and a store created
    with 4 KiB pages gets the 8 KiB ones. All of it on one connection that holds the file alone
    (exclusive locking, rollback journal: VACUUM cannot change the page size in WAL mode). While any
    other connection has the file open (a server, a `storegate` command), SQLite refuses to leave WAL
    mode, and nothing is changed, migrations included. An interrupted run is rolled back by the next
    open. Returns the file's bytes and page size before and after, and the migrations applied."""
    if not os.path.isfile(path):
        raise StoreUnavailable(f"no SQLite database at {path}")
    before = os.path.getsize(path)
    try:
        conn = sqlite3.connect(path, isolation_level=None, timeout=0)
    except sqlite3.Error as exc:
        raise StoreUnavailable(f"cannot open SQLite database {path}: {exc}") from exc
    try:
        try:
            conn.execute("PRAGMA locking_mode = EXCLUSIVE")  # once taken, no lock is let go until close
            conn.execute("PRAGMA journal_mode = DELETE")
        except sqlite3.Error as exc:
            hint = ": stop what uses it first" if "locked" in str(exc) else ""
            raise StoreUnavailable(f"cannot compact {path}: {exc}{hint}") from exc
        try:
            old_page = conn.execute("PRAGMA page_size").fetchone()[0]
            applied = apply_sqlite(conn)
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")
            conn.execute("VACUUM")
            new_page = conn.execute("PRAGMA page_size").fetchone()[0]
        except sqlite3.Error as exc:
            # Each migration it finished stays applied (each is a transaction); the rest rolls back.
            raise StoreUnavailable(f"compacting {path} failed: {exc}") from exc
        finally:
            try:
                conn.execute("PRAGMA journal_mode = WAL")
            except sqlite3.Error:  # harmless: every open sets WAL mode again
                log.exception("could not put %s back in WAL mode", path)
    finally:
        conn.close()
    return before, os.path.getsize(path), old_page, new_page, applied


def _unanswered(exc: sqlite3.Error) -> StoreUnavailable:
    return StoreUnavailable(f"the store could not answer: {exc}")


def _fields(c: NewCompletion) -> tuple[Any, ...]:
    """A new completion as the writer process gets it (sqlite_writes.WRITES["insert"]): its fields in
    order, then its metadata as JSON, which the process cannot encode without orjson (pickled with
    its command, timeit: ~2.4 us, the dataclass ~6.1)."""
    return (c.project, c.id, c.created, c.model, c.response_model, c.backend, c.backend_id, c.incomplete,
            c.metadata, c.body, c.request, c.messages, orjson.dumps(c.metadata))  # fmt: skip


def _select(db: sqlite3.Connection, query: ListQuery, walk: list[Filter]) -> list[Any]:
    if not walk and (query.model is not None or query.metadata):
        return []  # a filter matched nothing
    sql, params = list_sql(query, lambda _: "?", walk, sorted_rows=not walk)
    rows = db.execute(sql, params).fetchall()
    if walk:
        rows.sort(key=_first, reverse=query.order == "desc")
    return rows


def _rarest_first(db: sqlite3.Connection, project: str, walk: list[Filter]) -> list[Filter]:
    """The filters, the one matching fewest completions first; none at all if one matches nothing."""
    counts = [db.execute(_COUNT, (project, *f, COUNT_CAP)).fetchone()[0] for f in walk]
    if 0 in counts:
        return []
    return [f for _, f in sorted(zip(counts, walk, strict=True), key=lambda pair: pair[0])]
