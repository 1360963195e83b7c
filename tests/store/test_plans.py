"""A list's cost must not depend on PostgreSQL's plan cache. asyncpg prepares every statement once per
connection, and after five runs PostgreSQL may keep a generic plan, made without knowing how rare the
filter is. Such a plan once merge-joined whole tag ranges (thousands of rows for a page of 20). Here
the list queries run under a forced generic plan, over a filter that matches all and one that matches
few, and must still read about a page's worth of buffers."""

import asyncio
import re

import asyncpg
import pytest

from storegate.store.base import ListQuery
from storegate.store.postgres import _LIST_MANY, PostgresStore
from storegate.store.sql import filters, list_sql
from tests.pg import PostgresServer
from tests.store.test_contract import completion

ROWS = 4000
RARE_EVERY = 200  # 20 rare rows: one page


def _literal(value: object) -> str:
    if isinstance(value, bytes):
        return "'\\x" + value.hex() + "'::bytea"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


def _type(value: object) -> str:
    return "bytea" if isinstance(value, bytes) else "int" if isinstance(value, int) else "text"


async def _stored(url: str) -> None:
    """ROWS completions of model m, every one tagged all=1, one in RARE_EVERY tagged rare=yes."""
    store = PostgresStore(url)
    await store.open()
    sem = asyncio.Semaphore(16)

    async def insert(i: int) -> None:
        async with sem:
            rare = "yes" if i % RARE_EVERY == 0 else "no"
            await store.insert(completion(model="m", metadata={"all": "1", "rare": rare}))

    await asyncio.gather(*(insert(i) for i in range(ROWS)))
    await store.close()


@pytest.mark.parametrize("walk", ["rare", "rare+common", "model+rare"])
def test_generic_plans_read_a_page_not_the_store(postgres: PostgresServer, walk: str) -> None:
    url = postgres.create_database()

    async def main() -> None:
        await _stored(url)
        metadata = {"rare": "yes"} | ({"all": "1"} if "common" in walk else {})
        query = ListQuery(project="p", model="m" if "model" in walk else None, metadata=metadata,
                          after=None, limit=20, order="desc")  # fmt: skip
        rarest = [f for f in filters(query, str.encode) if f[1] == b"rare"]
        sql, params = list_sql(query, lambda n: f"${n}", rarest + [f for f in filters(query, str.encode)
                                                                   if f not in rarest])  # fmt: skip
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ANALYZE")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE page({', '.join(_type(v) for v in params)}) AS {sql}")
            plan = "\n".join(r[0] for r in await conn.fetch(
                f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE page({', '.join(_literal(v) for v in params)})"))  # fmt: skip
        finally:
            await conn.close()
        assert "$1" in plan or "$2" in plan, "the plan must be the generic one"
        hits = int(re.search(r"Buffers: shared hit=(\d+)", plan).group(1))  # type: ignore[union-attr]
        assert hits < 600, f"a page of 20 read {hits} buffers:\n{plan}"

    asyncio.run(main())


@pytest.mark.parametrize("ordered", [False, True], ids=["as-fed", "sorted"])
@pytest.mark.parametrize("order", ["asc", "desc"])
def test_pages_asked_together_read_their_pages_not_the_store(
    postgres: PostgresServer, order: str, ordered: bool
) -> None:
    """PostgreSQL answers the one-filter pages of one event-loop pass with one statement
    (`_LIST_MANY`): under a forced generic plan, each page must still be an index walk of its tag
    and a lookup per id, never a join that scans completions."""
    url = postgres.create_database()

    async def main() -> None:
        await _stored(url)
        pages = 3
        args = [["p"] * pages, ["k"] * pages, [b"all"] * pages, [b"1"] * pages, [""] * pages, [""] * pages,
                ["\x7f"] * pages, [21] * pages]  # fmt: skip
        types = ["text[]", "text[]", "bytea[]", "bytea[]", "text[]", "text[]", "text[]", "int[]"]
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("ANALYZE")
            await conn.execute("SET plan_cache_mode = force_generic_plan")
            await conn.execute(f"PREPARE pages({', '.join(types)}) AS {_LIST_MANY[order, ordered]}")
            literals = ", ".join("ARRAY[" + ", ".join(_literal(v) for v in column) + f"]::{t}"
                                 for column, t in zip(args, types, strict=True))  # fmt: skip
            explained = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE pages({literals})")
            plan = "\n".join(r[0] for r in explained)
            rows = await conn.fetch(f"EXECUTE pages({literals})")
        finally:
            await conn.close()
        assert len(rows) == pages and all(
            len(r["ids"]) == 21 and r["items"].count(b'{"metadata":') == 20 for r in rows
        )
        assert "Seq Scan" not in plan and "Hash" not in plan, plan
        assert "Sort" not in plan, f"the rows come in the index's order, unsorted:\n{plan}"
        hits = int(re.search(r"Buffers: shared hit=(\d+)", plan).group(1))  # type: ignore[union-attr]
        assert hits < 300 * pages, f"{pages} pages of 21 read {hits} buffers:\n{plan}"

    asyncio.run(main())
