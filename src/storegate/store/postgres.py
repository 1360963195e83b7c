"""The PostgreSQL store (asyncpg pool): the same tables and queries as SQLite, for several stateless
replicas on one database. Each write is one transaction; migrations run under an advisory lock.
"""

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from operator import itemgetter
from typing import Any

import asyncpg
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
    rendered,
)
from storegate.store.batch import Batcher
from storegate.store.migrate import migrations
from storegate.store.pg_listen import CONNECTION_FAILURES, KeyListener
from storegate.store.sql import COUNT_CAP, Filter, Tag, count_sql, filters, list_sql, tags

log = logging.getLogger("storegate.store")

_MIGRATION_LOCK = 0x53746F7265  # "Store": one advisory lock id for every storegate
_INSERT = """
WITH c AS (
    INSERT INTO completions (id, project, created, model, response_model, backend, backend_id, incomplete,
                             metadata, body, request)
    VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING id
), t AS (
    INSERT INTO completion_tags SELECT $2, k, n, v, $1 FROM unnest($12::text[], $13::bytea[], $14::bytea[]) AS x(k, n, v)
)
INSERT INTO messages SELECT $1, i, m FROM unnest($15::int[], $16::bytea[]) AS y(i, m)
"""
_KEY_COLUMNS = "id, project, prefix, rpm, created, last_used, revoked"
_GET_MANY = "SELECT id, body, metadata, project FROM completions WHERE id = ANY($1::text[])"
_id = itemgetter(0)
_MESSAGES = {
    order: "SELECT m.idx, m.item FROM completions c LEFT JOIN LATERAL (SELECT idx, item FROM messages"
    f" WHERE completion_id = c.id AND idx {'>' if order == 'asc' else '<'} $3 ORDER BY idx {order.upper()}"
    " LIMIT $4) m ON true WHERE c.id = $1 AND c.project = $2"
    for order in ("asc", "desc")
}
_Queries = list[ListQuery]  # (`list` in the class below is the method)
_Pages = list[RenderedPage]
_EMPTY = RenderedPage((), None, None, False)
_ABOVE_EVERY_ID = "\x7f"  # ids are printable ASCII: under the "C" collation every id sorts below DEL
# Pages of one filter each, one row of the unnest per page: its tag walk (an index scan with the
# page's limit) and each id's completion (OFFSET 0 keeps it a lookup per id: never a join the
# planner could turn into a scan of completions). `i` says which page a row is.
# Each page comes back as one row: its ids (limit + 1 at most, to tell has_more), their ranks in the
# walk, and its first `limit` completions already as the API's JSON (base.spliced, comma-separated:
# PostgreSQL's CPU on its own core, not the event loop's); null for an empty page. One aggregate
# step per joined row feeds the three, so they stay aligned. Unsorted (False), they take the rows in
# the order the walk feeds them; SQL does not promise that order, so the caller checks the ranks
# (1, 2, 3, ... proves the order, and that no tag lost its completion in the join) and asks a page
# that fails again on its own, then uses the sorted variant (True) from then on. Sorting the bodies
# costs PostgreSQL ~70 us more per page (in-process, 1M: 306 against 234 us). Measured (1M store, 16
# pages a statement, 6 rounds alternating, the same pages byte for byte): this process's CPU per
# page 189 -> 117 us against three arrays per page made into rows and rendered here; PostgreSQL's
# 250 -> 234 us.
_LIST_MANY = {
    (order, ordered): f"""
SELECT q.i, a.ranks, a.ids, a.items
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::bytea[], $5::text[], $6::text[], $7::text[], $8::int[])
     WITH ORDINALITY AS q(project, kind, name, value, gt, ge, lt, lim, i)
CROSS JOIN LATERAL (
    SELECT array_agg(w.n{by}) AS ranks, array_agg(w.id{by}) AS ids,
           string_agg('{{"metadata":'::bytea || c.metadata || ','::bytea || substring(c.body FROM 2), ','::bytea{by})
             FILTER (WHERE w.n < q.lim) AS items
    FROM (
        SELECT t0.id, row_number() OVER (ORDER BY t0.id {order.upper()}) AS n FROM completion_tags t0
        WHERE t0.project = q.project AND t0.kind = q.kind AND t0.name = q.name AND t0.value = q.value
          AND t0.id > q.gt AND t0.id >= q.ge AND t0.id < q.lt
        ORDER BY t0.id {order.upper()} LIMIT q.lim
    ) w
    CROSS JOIN LATERAL (SELECT c.body, c.metadata FROM completions c WHERE c.id = w.id OFFSET 0) c
) a
"""
    for order in ("asc", "desc")
    for ordered, by in ((False, ""), (True, " ORDER BY w.n"))
}
_LIST_BATCH = 16  # pages in one _LIST_MANY at most (see PostgresStore.__init__)
_COUNT = count_sql(lambda n: f"${n}")
_TAG_INSERT = "INSERT INTO completion_tags VALUES ($1, $2, $3, $4, $5) ON CONFLICT DO NOTHING"
_TAG_DELETE = (
    "DELETE FROM completion_tags WHERE project = $1 AND kind = $2 AND name = $3 AND value = $4 AND id = $5"
)


async def _page(conn: "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]", query: ListQuery,
                walk: list[Filter]) -> Page[Row]:  # fmt: skip
    """One page by its own query, walking `walk` in order."""
    sql, params = list_sql(query, lambda n: f"${n}", walk)
    rows = await conn.fetch(sql, *params)
    return Page([Row(r[0], r[1], r[2]) for r in rows[: query.limit]], len(rows) > query.limit)


def _b(tag: Tag) -> tuple[str, str, bytes, bytes, str]:
    project, kind, name, value, cid = tag
    return project, kind, name.encode(), value.encode(), cid


class PostgresStore:
    def __init__(self, dsn: str, *, min_size: int = 2, max_size: int = 20) -> None:
        self._dsn = dsn
        self._min_size = min_size
        self._max_size = max_size
        self._pool: asyncpg.Pool | None = None
        self._applied: list[int] = []
        self._key_changes = KeyListener(dsn)
        # First come, first served for the pool's connections. asyncpg's pool hands a released
        # connection to whoever asks next, and a waiter woken for it can find it taken and queue
        # again at the back: under load some requests waited over a second (p99) while the
        # median was 17 ms. asyncio.Semaphore is FIFO, and with it no one waits in the pool.
        self._turns = asyncio.Semaphore(max_size)
        # Gets and one-filter lists asked during one pass of the event loop are answered together, by
        # one query each, at the start of the next pass. Measured (PostgreSQL on the same machine, 40
        # gets at once): one query per get cost ~150 us of this process's CPU and ~160 us of wall
        # time per get; one query for all 40, ~10 us and ~20 us.
        self._gets: Batcher[tuple[str, str], Row | None] = Batcher(self._answer_gets, 256)
        # Lists are batched 16 pages at most, so that the pages of a busy pass go to PostgreSQL as
        # several queries on several connections: PostgreSQL runs one query on one core, and with
        # all 64 pages in one query this process sat idle while PostgreSQL worked, then PostgreSQL
        # while this process wrote the pages. Measured (bench/run, PostgreSQL, c=64, list req/s
        # by the largest batch): 10k: 64: 1,551, 16: 2,076, 8: 2,174, 4: 1,771, 2: 1,427; 1M:
        # 64: ~1,724, 16: 2,012, 8: 1,851. The machine went from ~129% to ~160% busy.
        self._sorted_pages = False  # set once PostgreSQL has fed a page out of order (see _LIST_MANY)
        self._lists: dict[str, Batcher[ListQuery, RenderedPage]] = {
            order: Batcher(self._answer_lists, _LIST_BATCH) for order in ("asc", "desc")
        }

    @property
    def migrations_applied(self) -> list[int]:
        return self._applied

    async def open(self) -> None:
        try:
            conn = await asyncpg.connect(self._dsn, timeout=10)
            try:
                self._applied = await apply_migrations(conn)
            finally:
                await conn.close()
            self._pool = await asyncpg.create_pool(
                self._dsn, min_size=self._min_size, max_size=self._max_size, timeout=10, command_timeout=30,
                reset=_keep_session,
            )  # fmt: skip
        except CONNECTION_FAILURES as exc:
            raise StoreUnavailable(f"cannot open PostgreSQL database: {type(exc).__name__}: {exc}") from exc
        await self._key_changes.start()

    async def close(self) -> None:
        await self._gets.close()  # asks under way get their answers; later ones 503
        for batcher in self._lists.values():
            await batcher.close()
        await self._key_changes.stop()
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    @asynccontextmanager
    async def _conn(self) -> AsyncIterator["asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"]:
        if self._pool is None:
            raise StoreUnavailable("the store is not open")
        try:
            async with self._turns, self._pool.acquire() as conn:
                try:
                    yield conn
                except asyncpg.InternalClientError:
                    conn.terminate()  # its protocol state is unknown after a lost server: never reuse it
                    raise
        except CONNECTION_FAILURES as exc:
            raise StoreUnavailable(f"the store could not answer: {type(exc).__name__}") from exc

    async def ping(self) -> None:
        async with self._conn() as conn:
            await conn.fetchval("SELECT 1")

    async def insert(self, c: NewCompletion) -> None:
        models = {c.model} | ({c.response_model} if c.response_model else set())
        rows = [_b(t) for t in tags(c.project, c.id, models, c.metadata)]
        async with self._conn() as conn:
            await conn.execute(
                _INSERT, c.id, c.project, c.created, c.model, c.response_model, c.backend, c.backend_id,
                c.incomplete, orjson.dumps(c.metadata), c.body, c.request,
                [r[1] for r in rows], [r[2] for r in rows], [r[3] for r in rows],
                list(range(len(c.messages))), c.messages,
            )  # fmt: skip

    async def get(self, project: str, completion_id: str) -> Row | None:
        return await self._gets.ask((project, completion_id))

    async def _answer_gets(self, asked: list[tuple[str, str]]) -> list[Row | None]:
        async with self._conn() as conn:
            rows = await conn.fetch(_GET_MANY, list({cid for _, cid in asked}))
        found = {r[0]: r for r in rows}
        return [
            Row(r[0], r[1], r[2]) if (r := found.get(cid)) is not None and r[3] == project else None
            for project, cid in asked
        ]

    async def list(self, query: ListQuery) -> Page[Row]:
        walk = filters(query, str.encode)
        async with self._conn() as conn:
            if len(walk) > 1:  # walk the rarest filter's rows and probe the others
                counts = [await conn.fetchval(_COUNT, query.project, *f, COUNT_CAP) for f in walk]
                if 0 in counts:
                    return Page([], False)
                walk = [f for _, f in sorted(zip(counts, walk, strict=True), key=lambda pair: pair[0])]
            return await _page(conn, query, walk)

    async def list_rendered(self, query: ListQuery) -> RenderedPage:
        # The common page, one filter, is walked with the others of its pass in one statement, which
        # renders it; a page of several filters or none, from its rows here.
        if len(filters(query)) == 1:
            return await self._lists[query.order].ask(query)
        return rendered(await self.list(query))

    async def _answer_lists(self, queries: _Queries) -> _Pages:
        """One-filter pages, all of one order, in one query (`_LIST_MANY`): each page's bounds become
        the three columns it compares ids with (an absent bound compares with a value every id passes).
        A page alone takes the plain query and is rendered here: measured (with the statement's
        earlier form, three arrays per page), `_LIST_MANY` for one page cost ~840 us against ~630 for
        the plain one (PostgreSQL plans it anew), and ~170-290 us a page for 4-16 pages."""
        if len(queries) == 1:
            async with self._conn() as conn:
                return [rendered(await _page(conn, queries[0], filters(queries[0], str.encode)))]
        columns: list[list[Any]] = [[] for _ in range(8)]
        for q in queries:
            ((kind, name, value),) = filters(q, str.encode)
            after_lo = q.after if q.after is not None and q.order == "asc" else ""
            below = [b for b in (q.id_before, q.after if q.order == "desc" else None) if b is not None]
            for column, item in zip(columns, (q.project, kind, name, value, after_lo, q.id_from or "",
                                              min(below, default=_ABOVE_EVERY_ID), q.limit + 1), strict=True):  # fmt: skip
                column.append(item)
        out = [_EMPTY] * len(queries)
        async with self._conn() as conn:
            rows = await conn.fetch(_LIST_MANY[queries[0].order, self._sorted_pages], *columns)
            for i, ranks, ids, items in rows:
                if ids is None:  # the page is empty
                    continue
                q = queries[i - 1]
                if ranks != list(range(1, len(ranks) + 1)):  # out of the walk's order, or a row lost
                    self._fed_out_of_order(ranks)
                    out[i - 1] = rendered(await _page(conn, q, filters(q, str.encode)))
                    continue
                last = ids[min(len(ids), q.limit) - 1]
                out[i - 1] = RenderedPage((items,), ids[0], last, len(ids) > q.limit)
        return out

    def _fed_out_of_order(self, ranks: Sequence[int]) -> None:
        if sorted(ranks) != list(ranks):  # a gap alone is a tag whose completion is gone: nothing to change
            if not self._sorted_pages:
                log.warning("PostgreSQL fed a list page's rows out of the walk's order: such a page was asked"
                            " again alone, and list pages are sorted in PostgreSQL from now on")  # fmt: skip
            self._sorted_pages = True

    async def update_metadata(self, project: str, completion_id: str, metadata: dict[str, str]) -> Row | None:
        async with self._conn() as conn, conn.transaction():
            found = await conn.fetchrow(
                "SELECT body, metadata FROM completions WHERE id = $1 AND project = $2 FOR UPDATE",
                completion_id,
                project,
            )
            if found is None:
                return None
            await conn.executemany(
                _TAG_DELETE, [_b(t) for t in tags(project, completion_id, set(), orjson.loads(found[1]))]
            )
            encoded = orjson.dumps(metadata)
            await conn.execute("UPDATE completions SET metadata = $1 WHERE id = $2", encoded, completion_id)
            await conn.executemany(
                _TAG_INSERT, [_b(t) for t in tags(project, completion_id, set(), metadata)]
            )
        return Row(completion_id, found[0], encoded)

    async def delete(self, project: str, completion_id: str) -> bool:
        async with self._conn() as conn, conn.transaction():
            return await _delete(conn, project, completion_id)

    async def purge(self, before_id: str, project: str | None, exclude: tuple[str, ...], limit: int) -> int:
        async with self._conn() as conn, conn.transaction():
            # SKIP LOCKED: replicas purging at once share the work instead of queueing on row locks.
            doomed = await conn.fetch(
                "SELECT project, id FROM completions WHERE id < $1 AND ($2::text IS NULL OR project = $2)"
                " AND NOT (project = ANY($3::text[])) ORDER BY id LIMIT $4 FOR UPDATE SKIP LOCKED",
                before_id, project, list(exclude), limit,
            )  # fmt: skip
            for row in doomed:
                await _delete(conn, row[0], row[1])
        return len(doomed)

    async def add_key(self, key: ApiKey, secret_hash: bytes) -> None:
        async with self._conn() as conn:
            await conn.execute(
                "INSERT INTO api_keys (id, project, hash, prefix, rpm, created) VALUES ($1, $2, $3, $4, $5, $6)",
                key.id, key.project, secret_hash, key.prefix, key.rpm, key.created,
            )  # fmt: skip

    async def list_keys(self) -> tuple[ApiKey, ...]:
        async with self._conn() as conn:
            rows = await conn.fetch(f"SELECT {_KEY_COLUMNS} FROM api_keys ORDER BY created, id")
        return tuple(ApiKey(*r) for r in rows)

    async def revoke_key(self, key_id: str, when: int) -> bool:
        async with self._conn() as conn:
            done = await conn.execute(
                "UPDATE api_keys SET revoked = $1 WHERE id = $2 AND revoked IS NULL", when, key_id
            )
        return bool(done != "UPDATE 0")

    async def find_key(self, secret_hash: bytes) -> tuple[ApiKey | None, bool]:
        async with self._conn() as conn:
            row = await conn.fetchrow(
                f"SELECT (SELECT row({_KEY_COLUMNS}) FROM api_keys WHERE hash = $1),"
                " EXISTS (SELECT 1 FROM api_keys)",
                secret_hash,
            )
        assert row is not None
        return (ApiKey(*row[0]) if row[0] is not None else None), bool(row[1])

    async def touch_key(self, key_id: str, when: int) -> None:
        async with self._conn() as conn:
            await conn.execute("UPDATE api_keys SET last_used = $1 WHERE id = $2", when, key_id)

    def key_epoch(self) -> object:
        return self._key_changes.epoch

    async def list_messages(self, query: MessagesQuery) -> Page[tuple[int, bytes]] | None:
        """One round trip: the completion (no row: not found, None) and its page of messages (a row of
        nulls: none). Two queries cost a second round trip, ~100-200 us on one machine."""
        after = (
            query.after_index
            if query.after_index is not None
            else (-1 if query.order == "asc" else 2**31 - 1)
        )
        async with self._conn() as conn:
            rows = await conn.fetch(_MESSAGES[query.order], query.completion_id, query.project, after,
                                    query.limit + 1)  # fmt: skip
        if not rows:
            return None
        items = [(r[0], r[1]) for r in rows if r[0] is not None]
        items.sort(key=_id, reverse=query.order == "desc")
        return Page(items[: query.limit], len(items) > query.limit)


async def _keep_session(conn: "asyncpg.Connection[asyncpg.Record]") -> None:
    """Reset on release only what can be left: a transaction interrupted by a cancelled request.
    storegate leaves no other session state (LISTEN, cursors, settings, advisory locks) on pooled
    connections, and asyncpg's default reset costs a round trip per query."""
    if conn.is_in_transaction():
        await conn.execute("ROLLBACK")


async def _delete(conn: "asyncpg.pool.PoolConnectionProxy[asyncpg.Record]", project: str, cid: str) -> bool:
    found = await conn.fetchrow(
        "DELETE FROM completions WHERE id = $1 AND project = $2 RETURNING model, response_model, metadata",
        cid,
        project,
    )
    if found is None:
        return False
    models = {found[0]} | ({found[1]} if found[1] else set())
    await conn.executemany(_TAG_DELETE, [_b(t) for t in tags(project, cid, models, orjson.loads(found[2]))])
    await conn.execute("DELETE FROM messages WHERE completion_id = $1", cid)
    return True


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply pending migrations; several replicas starting at once take turns on an advisory lock."""
    await conn.execute("SELECT pg_advisory_lock($1)", _MIGRATION_LOCK)
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations"
            " (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at BIGINT NOT NULL)"
        )
        done = {r[0] for r in await conn.fetch("SELECT version FROM schema_migrations")}
        applied = []
        for migration in migrations("postgres"):
            if migration.version in done:
                continue
            log.info("applying migration %04d_%s", migration.version, migration.name)
            async with conn.transaction():
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations VALUES ($1, $2, $3)",
                    migration.version, migration.name, int(time.time()),
                )  # fmt: skip
            applied.append(migration.version)
        return applied
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", _MIGRATION_LOCK)
