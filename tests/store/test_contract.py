"""The Store contract, one suite for every implementation: the same calls, the same answers."""

import asyncio
import os
import sqlite3
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import asyncpg
import orjson
import pytest

from storegate.errors import StoreUnavailable, Unauthorized
from storegate.ids import IdMinter, id_floor
from storegate.service.keys import Keys
from storegate.service.paging import list_object
from storegate.service.retention import Retention
from storegate.settings import Settings
from storegate.store import ApiKey, ListQuery, MessagesQuery, NewCompletion, Store
from storegate.store import postgres as postgres_store
from storegate.store.base import rendered
from storegate.store.factory import make_store
from storegate.store.sqlite import KEY_TRIGGERS
from tests.pg import PostgresServer, pg_bin

Body = Callable[[Store], Awaitable[None]]


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'contract.db'}"
    else:
        pg: PostgresServer = request.getfixturevalue("postgres")
        yield pg.create_database()


def run(url: str, body: Body) -> None:
    async def main() -> None:
        store = make_store(Settings(db=url))
        await store.open()
        try:
            await body(store)
        finally:
            await store.close()

    asyncio.run(main())


MINTER = IdMinter()


def completion(project: str = "p", model: str = "m", metadata: dict[str, str] | None = None,
               messages: int = 2, response_model: str | None = None, minter: IdMinter = MINTER) -> NewCompletion:  # fmt: skip
    cid, created = minter.mint()
    return NewCompletion(
        project=project, id=cid, created=created, model=model, response_model=response_model, backend="b",
        backend_id="x", incomplete=False, metadata=metadata or {}, body=orjson.dumps({"id": cid, "object": "chat.completion", "created": created, "model": model, "choices": []}),
        request=b'{"model":"m"}', messages=[orjson.dumps({"i": i}) for i in range(messages)],
    )  # fmt: skip


def q(**kw: object) -> ListQuery:
    base = ListQuery(project="p", model=None, metadata={}, after=None, limit=20, order="asc")
    return replace(base, **kw)  # type: ignore[arg-type]


def test_insert_get_roundtrip_is_byte_exact(store_url: str) -> None:
    async def body(store: Store) -> None:
        c = completion(metadata={"a": "1"})
        await store.insert(c)
        row = await store.get("p", c.id)
        assert row is not None and row.body == c.body and orjson.loads(row.metadata) == {"a": "1"}
        assert await store.get("other", c.id) is None
        assert await store.get("p", "chatcmpl-" + "0" * 29) is None

    run(store_url, body)


def test_list_orders_pages_and_filters(store_url: str) -> None:
    async def body(store: Store) -> None:
        made = [completion(model="m1" if i % 2 else "m2", metadata={"i": str(i), "even": str(i % 2 == 0)},
                           response_model="r1") for i in range(7)]  # fmt: skip
        await asyncio.gather(*(store.insert(c) for c in made))
        await store.insert(completion(project="other", model="m1"))
        ids = [c.id for c in made]
        page = await store.list(q(limit=3))
        assert [r.id for r in page.items] == ids[:3] and page.has_more
        page = await store.list(q(limit=3, after=ids[2]))
        assert [r.id for r in page.items] == ids[3:6] and page.has_more
        page = await store.list(q(limit=3, after=ids[5]))
        assert [r.id for r in page.items] == ids[6:] and not page.has_more
        page = await store.list(q(order="desc", limit=4))
        assert [r.id for r in page.items] == ids[::-1][:4]
        page = await store.list(q(order="desc", after=ids[3]))
        assert [r.id for r in page.items] == ids[:3][::-1]
        assert [r.id for r in (await store.list(q(model="m1"))).items] == ids[1::2]
        assert len((await store.list(q(model="r1"))).items) == 7
        assert [r.id for r in (await store.list(q(metadata={"even": "True"}))).items] == ids[::2]
        both = await store.list(q(model="m2", metadata={"even": "True", "i": "4"}))
        assert [r.id for r in both.items] == [ids[4]]
        assert (await store.list(q(metadata={"i": "4", "even": "False"}))).items == []
        assert [r.id for r in (await store.list(q(id_from=ids[3]))).items] == ids[3:]
        assert [r.id for r in (await store.list(q(id_before=ids[3]))).items] == ids[:3]
        assert (await store.list(q(id_from=id_floor(made[0].created + 10**6)))).items == []

    run(store_url, body)


def test_update_replaces_metadata_and_its_filters(store_url: str) -> None:
    async def body(store: Store) -> None:
        c = completion(metadata={"a": "1", "b": "2"})
        await store.insert(c)
        row = await store.update_metadata("p", c.id, {"c": "3"})
        assert row is not None and orjson.loads(row.metadata) == {"c": "3"} and row.body == c.body
        assert (await store.list(q(metadata={"a": "1"}))).items == []
        assert [r.id for r in (await store.list(q(metadata={"c": "3"}))).items] == [c.id]
        assert await store.update_metadata("other", c.id, {"x": "y"}) is None
        cleared = await store.update_metadata("p", c.id, {})
        assert cleared is not None and orjson.loads(cleared.metadata) == {}

    run(store_url, body)


def test_delete_removes_everything(store_url: str) -> None:
    async def body(store: Store) -> None:
        c = completion(metadata={"a": "1"})
        await store.insert(c)
        assert not await store.delete("other", c.id)
        assert await store.delete("p", c.id)
        assert not await store.delete("p", c.id)
        assert await store.get("p", c.id) is None
        assert (await store.list(q())).items == [] and (await store.list(q(metadata={"a": "1"}))).items == []
        assert (await store.list(q(model="m"))).items == []
        assert await store.list_messages(MessagesQuery("p", c.id, None, 20, "asc")) is None

    run(store_url, body)


def test_messages_page_both_ways(store_url: str) -> None:
    async def body(store: Store) -> None:
        c = completion(messages=5)
        await store.insert(c)
        page = await store.list_messages(MessagesQuery("p", c.id, None, 2, "asc"))
        assert page is not None and [i for i, _ in page.items] == [0, 1] and page.has_more
        page = await store.list_messages(MessagesQuery("p", c.id, 1, 10, "asc"))
        assert page is not None and [i for i, _ in page.items] == [2, 3, 4] and not page.has_more
        page = await store.list_messages(MessagesQuery("p", c.id, None, 2, "desc"))
        assert page is not None and [i for i, _ in page.items] == [4, 3]
        page = await store.list_messages(MessagesQuery("p", c.id, 3, 10, "desc"))
        assert page is not None and [i for i, _ in page.items] == [2, 1, 0]
        assert page.items[0][1] == orjson.dumps({"i": 2})
        assert await store.list_messages(MessagesQuery("other", c.id, None, 2, "asc")) is None
        assert await store.list_messages(MessagesQuery("p", MINTER.mint()[0], None, 2, "asc")) is None
        past_end = [MessagesQuery("p", c.id, 4, 2, "asc"), MessagesQuery("p", c.id, 0, 2, "desc")]
        for query in past_end:  # a page past the end is empty, not None (nor is one without messages)
            end = await store.list_messages(query)
            assert end is not None and end.items == [] and not end.has_more
        bare = completion(messages=0)
        await store.insert(bare)
        empty = await store.list_messages(MessagesQuery("p", bare.id, None, 2, "desc"))
        assert empty is not None and empty.items == [] and not empty.has_more

    run(store_url, body)


def test_a_conversation_longer_than_one_statement_lands_whole(store_url: str) -> None:
    # SQLite binds at most 32,766 parameters per statement (3 per message row): 12,000 messages, sent
    # with other completions in one group commit, take two statements on the writer.
    async def body(store: Store) -> None:
        long, *others = [completion(messages=12_000), *(completion(messages=3) for _ in range(5))]
        await asyncio.gather(*(store.insert(c) for c in [long, *others]))
        seen: list[int] = []
        after = None
        for _ in range(20):
            page = await store.list_messages(MessagesQuery("p", long.id, after, 1_000, "asc"))
            assert page is not None
            seen += [i for i, _ in page.items]
            if not page.has_more:
                break
            after = seen[-1]
        assert seen == list(range(12_000))
        page = await store.list_messages(MessagesQuery("p", long.id, 10_920, 3, "asc"))
        assert page is not None and page.items == [
            (i, orjson.dumps({"i": i})) for i in (10_921, 10_922, 10_923)
        ]
        for c in others:
            page = await store.list_messages(MessagesQuery("p", c.id, None, 10, "asc"))
            assert page is not None and [i for i, _ in page.items] == [0, 1, 2]

    run(store_url, body)


def test_odd_metadata_round_trips_and_filters(store_url: str) -> None:
    odd = {"quote'\"": "'; DROP TABLE completions; --", "nul\x00key": "v\x00al", "ünï 😀": "\u202e\t\n\r"}

    async def body(store: Store) -> None:
        c = completion(metadata=odd)
        await store.insert(c)
        row = await store.get("p", c.id)
        assert row is not None and orjson.loads(row.metadata) == odd
        for key, value in odd.items():
            assert [r.id for r in (await store.list(q(metadata={key: value}))).items] == [c.id]
            assert (await store.list(q(metadata={key: value + "x"}))).items == []

    run(store_url, body)


def test_many_concurrent_writes_all_land(store_url: str) -> None:
    async def body(store: Store) -> None:
        made = [completion(metadata={"batch": "1"}) for _ in range(300)]
        await asyncio.gather(*(store.insert(c) for c in made))
        seen: list[str] = []
        after = None
        while True:
            page = await store.list(q(metadata={"batch": "1"}, limit=100, after=after))
            seen += [r.id for r in page.items]
            if not page.has_more:
                break
            after = seen[-1]
        assert seen == sorted(c.id for c in made)

    run(store_url, body)


def test_purge_takes_the_oldest_in_bounded_batches(store_url: str) -> None:
    async def body(store: Store) -> None:
        made = [completion(project="a" if i % 2 else "b", metadata={"k": "v"}) for i in range(10)]
        for c in made:
            await store.insert(c)
        cutoff = made[6].id  # the six oldest are below it
        assert await store.purge(cutoff, "a", (), 2) == 2
        assert await store.purge(cutoff, "a", (), 100) == 1
        assert await store.purge(cutoff, None, ("b",), 100) == 0
        assert await store.purge(cutoff, None, (), 100) == 3
        left = [c.id for c in made if await store.get(c.project, c.id) is not None]
        assert left == [c.id for c in made[6:]]
        assert [r.id for r in (await store.list(q(project="a", metadata={"k": "v"}))).items] == [
            c.id for c in made[6:] if c.project == "a"
        ]
        assert await store.list_messages(MessagesQuery(made[0].project, made[0].id, None, 5, "asc")) is None

    run(store_url, body)


def test_retention_applies_project_rules_then_the_default(store_url: str) -> None:
    async def body(store: Store) -> None:
        now = time.time()

        def aged(project: str, days: float) -> NewCompletion:
            return completion(project=project, minter=IdMinter(lambda: int((now - days * 86_400) * 1e9)))

        rows = {
            "a-old": aged("a", 3), "a-new": aged("a", 0.5),  # a keeps 1 day
            "b-old": aged("b", 3), "b-mid": aged("b", 1.5),  # b follows the default: 2 days
            "c-old": aged("c", 40),  # c keeps 60 days
        }  # fmt: skip
        for c in rows.values():
            await store.insert(c)
        retention = Retention(store, days=2, projects={"a": 1, "c": 60}, interval=60, clock=lambda: now)
        assert await retention.run_once() == 2
        left = {name for name, c in rows.items() if await store.get(c.project, c.id) is not None}
        assert left == {"a-new", "b-mid", "c-old"}

    run(store_url, body)


def test_several_filters_walk_the_rarest_and_page_exactly(store_url: str) -> None:
    async def body(store: Store) -> None:
        made = [completion(model="m" if i % 3 else "rare-model", metadata={"a": "common", "b": str(i % 2)})
                for i in range(30)]  # fmt: skip
        for c in made:
            await store.insert(c)
        want = [c.id for i, c in enumerate(made) if i % 3 == 0 and i % 2 == 1]
        filt: dict[str, object] = {"model": "rare-model", "metadata": {"a": "common", "b": "1"}}
        assert [r.id for r in (await store.list(q(**filt))).items] == want
        page = await store.list(q(**filt, order="desc", limit=2))
        assert [r.id for r in page.items] == want[::-1][:2] and page.has_more
        rest = await store.list(q(**filt, order="desc", limit=10, after=want[-2]))
        assert [r.id for r in rest.items] == want[::-1][2:] and not rest.has_more
        assert (await store.list(q(model="rare-model", metadata={"a": "nope", "b": "1"}))).items == []

    run(store_url, body)


def test_reads_see_what_another_process_committed_by_the_next_pass(store_url: str) -> None:
    """SQLite's reads share one snapshot per pass of the event loop: a write committed elsewhere (a
    second store on the same database, as a replica or `storegate keys` would be) is seen by every
    read of a later pass, whatever the reads of earlier passes saw."""

    async def body(store: Store) -> None:
        other = make_store(Settings(db=store_url))
        await other.open()
        try:
            for _ in range(3):
                made = completion(metadata={"k": "v"})
                assert await store.get("p", made.id) is None
                await other.insert(made)  # resolves in a later pass than the read above
                got = await store.get("p", made.id)
                assert got is not None and got.id == made.id
                listed = await store.list(q(metadata={"k": "v"}, order="desc"))
                assert made.id in [r.id for r in listed.items]
                await other.update_metadata("p", made.id, {"k": "w"})
                got = await store.get("p", made.id)
                assert got is not None and orjson.loads(got.metadata) == {"k": "w"}
                await other.delete("p", made.id)
                assert await store.get("p", made.id) is None
        finally:
            await other.close()

    run(store_url, body)


def test_key_epoch_moves_when_another_process_changes_keys(store_url: str) -> None:
    """`key_epoch` is what lets a server remember keys: it must move when keys change elsewhere (here
    a second store on the same database, as `storegate keys` would be), and only be None when the
    store cannot tell."""

    async def body(store: Store) -> None:
        other = make_store(Settings(db=store_url))
        await other.open()
        try:
            still = store.key_epoch()
            assert still is not None and store.key_epoch() == still, "no change, no move"
            key = ApiKey(id="key_0123456789abcdef", project="p", prefix="sg-abcd", rpm=None, created=1,
                         last_used=None, revoked=None)  # fmt: skip
            for change in (other.add_key(key, b"h" * 32), other.revoke_key(key.id, 2)):
                before = store.key_epoch()
                await change
                for _ in range(1000):  # PostgreSQL tells by NOTIFY: it arrives (within 10 s), not returns
                    if store.key_epoch() != before:
                        break
                    await asyncio.sleep(0.01)
                assert store.key_epoch() not in (before, None)
            found, required = await store.find_key(b"h" * 32)
            assert found is not None and found.revoked == 2 and required, "a revoked key still locks the door"
        finally:
            await other.close()

    run(store_url, body)


async def _settled_epoch(store: Store) -> object:
    """The key epoch once it stopped moving (PostgreSQL's notifications arrive, not return)."""
    epoch = store.key_epoch()
    for _ in range(50):
        await asyncio.sleep(0.02)
        if store.key_epoch() == epoch:
            return epoch
        epoch = store.key_epoch()
    raise AssertionError("the key epoch never settled")


def test_key_epoch_stands_still_while_completions_and_key_uses_are_written(store_url: str) -> None:
    """Only a key change may move `key_epoch`: completions written, updated and deleted, here or by
    another process, and a key's last-use stamp, leave it alone, so a server under write load keeps
    what it knows of keys instead of looking every key up again."""

    async def body(store: Store) -> None:
        other = make_store(Settings(db=store_url))
        await other.open()
        try:
            key = ApiKey(id="key_00000000000000ab", project="p", prefix="sg-abcd", rpm=None, created=1,
                         last_used=None, revoked=None)  # fmt: skip
            await store.add_key(key, b"k" * 32)
            before = await _settled_epoch(store)
            assert before is not None
            for writer in (store, other):
                made = completion(metadata={"k": "v"})
                await writer.insert(made)
                await writer.update_metadata("p", made.id, {"k": "w"})
                await writer.delete("p", made.id)
                await writer.touch_key(key.id, 5)
            await asyncio.sleep(0.2)  # long enough for a notification, had one been sent
            assert store.key_epoch() == before
            await other.revoke_key(key.id, 6)
            for _ in range(500):
                if store.key_epoch() != before:
                    break
                await asyncio.sleep(0.02)
            assert store.key_epoch() not in (before, None), "a revocation moves it"
        finally:
            await other.close()

    run(store_url, body)


def test_a_server_answers_an_accepted_key_from_memory_until_keys_change(store_url: str) -> None:
    """On both stores, `Keys.known` (the middleware's first try) answers a key it accepted without a
    store lookup while the key epoch stands still, and stops the moment another process revokes it."""

    async def body(store: Store) -> None:
        lookups = 0
        find_key = store.find_key

        async def counted(secret_hash: bytes) -> tuple[ApiKey | None, bool]:
            nonlocal lookups
            lookups += 1
            return await find_key(secret_hash)

        store.find_key = counted  # type: ignore[method-assign]
        other = make_store(Settings(db=store_url))
        await other.open()
        try:
            keys = Keys(store)
            key, secret = await keys.create("alpha")
            await _settled_epoch(store)
            header = f"Bearer {secret}"
            assert (await keys.authenticate(header)).project == "alpha"
            seen = lookups
            for _ in range(5):
                await asyncio.sleep(0)
                hit = keys.known(header)
                assert hit is not None and (hit.project, hit.key_id) == ("alpha", key.id)
            assert lookups == seen, "no lookup while the keys stand still"
            before = store.key_epoch()
            await other.revoke_key(key.id, 2)
            for _ in range(500):
                if store.key_epoch() != before:
                    break
                await asyncio.sleep(0.02)
            assert keys.known(header) is None
            with pytest.raises(Unauthorized):
                await keys.authenticate(header)
        finally:
            await other.close()

    run(store_url, body)


def test_sqlite_key_epoch_moves_on_any_change_to_api_keys(tmp_path: Path) -> None:
    """On SQLite the epoch is a counter moved by triggers: a change made without storegate (rows
    deleted by hand while no server runs, as the README allows) moves it too; last_used does not."""
    url = f"sqlite:///{tmp_path / 'k.db'}"

    async def body(store: Store) -> None:
        key = ApiKey(id="key_00000000000000cd", project="p", prefix="sg-abcd", rpm=None, created=1,
                     last_used=None, revoked=None)  # fmt: skip
        await store.add_key(key, b"c" * 32)
        await asyncio.sleep(0)
        before = store.key_epoch()
        with sqlite3.connect(tmp_path / "k.db") as db:
            db.execute("UPDATE api_keys SET last_used = 7")
        await asyncio.sleep(0)
        assert store.key_epoch() == before
        with sqlite3.connect(tmp_path / "k.db") as db:
            db.execute("DELETE FROM api_keys")
        await asyncio.sleep(0)
        assert store.key_epoch() not in (before, None)
        assert await store.find_key(b"c" * 32) == (None, False)

    run(url, body)


def test_sqlite_without_its_key_triggers_remembers_no_key(tmp_path: Path) -> None:
    """A migration that rebuilds api_keys would drop its triggers with it, and the key generation
    would never move again: a store that finds any of them missing says it cannot tell (None), so
    the server looks every key up instead of trusting a counter nothing moves."""
    url = f"sqlite:///{tmp_path / 't.db'}"

    async def migrated(store: Store) -> None:
        await asyncio.sleep(0)
        assert store.key_epoch() is not None

    run(url, migrated)
    with sqlite3.connect(tmp_path / "t.db") as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'trigger'")}
        assert set(KEY_TRIGGERS) <= names
        db.execute(f"DROP TRIGGER {KEY_TRIGGERS[1]}")

    async def without(store: Store) -> None:
        await asyncio.sleep(0)
        assert store.key_epoch() is None

    run(url, without)


def test_gets_asked_together_each_get_their_own_answer(store_url: str) -> None:
    """PostgreSQL answers the gets of one pass of the event loop with one query: whatever else is in
    the batch (the same id twice, another project's id, a missing one, more ids than one query
    takes, a get whose caller left), each get answers exactly as it would alone."""

    async def body(store: Store) -> None:
        mine = [completion(project="p") for _ in range(5)]
        theirs = completion(project="q")
        for c in (*mine, theirs):
            await store.insert(c)
        missing = MINTER.mint()[0]
        asks = [("p", c.id) for c in mine] + [
            ("p", mine[0].id),
            ("p", theirs.id),
            ("q", theirs.id),
            ("p", missing),
        ]
        asks = asks * 40  # 400 gets in one pass
        leaver = asyncio.ensure_future(store.get("p", mine[1].id))
        gets = [asyncio.ensure_future(store.get(project, cid)) for project, cid in asks]
        await asyncio.sleep(0)  # every get has been asked; none answered yet
        leaver.cancel()
        rows = await asyncio.gather(*gets)
        for (project, cid), row in zip(asks, rows, strict=True):
            expected = cid in {c.id for c in mine} if project == "p" else cid == theirs.id
            assert (row is not None and row.id == cid) == expected, (project, cid)
        assert leaver.cancelled() or leaver.result().id == mine[1].id  # SQLite answers at once
        assert (await store.get("p", mine[1].id)) is not None, "the store still answers after a caller left"

    run(store_url, body)


def test_postgres_gets_fail_as_503_while_the_database_is_down_and_recover() -> None:
    """A batch of gets whose query fails: every get of it raises StoreUnavailable (503), none hangs;
    once PostgreSQL is back, gets answer again."""
    bin_dir = pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed")
    pg = PostgresServer(bin_dir).start()
    try:
        made = completion(project="p")

        async def body(store: Store) -> None:
            await store.insert(made)
            assert (await store.get("p", made.id)) is not None
            pg.halt()
            results = await asyncio.wait_for(
                asyncio.gather(*(store.get("p", made.id) for _ in range(50)), return_exceptions=True), 30
            )
            assert all(isinstance(r, StoreUnavailable) for r in results), results[:3]
            pg.resume()
            row = None
            for _ in range(100):
                try:
                    row = await store.get("p", made.id)
                    break
                except StoreUnavailable:
                    await asyncio.sleep(0.1)
            assert row is not None and row.id == made.id

        run(pg.create_database(), body)
    finally:
        pg.stop()


def test_lists_asked_together_answer_as_each_alone(store_url: str) -> None:
    """PostgreSQL walks the one-filter pages of one event-loop pass in one statement, and writes their
    JSON itself: every mix of orders, cursors, id bounds, limits, filters, projects and a two-filter
    page in the same pass must page exactly as each list asked alone does, byte for byte as the rows
    of `list` spliced here."""

    async def body(store: Store) -> None:
        made = [completion(model="m1" if i % 3 else "m2", metadata={"even": str(i % 2 == 0), "i": str(i)})
                for i in range(30)]  # fmt: skip
        for c in made:
            await store.insert(c)
        other = completion(project="other", model="m1", metadata={"even": "True"})
        await store.insert(other)
        bare = completion(model="m1", metadata={})  # its JSON on a page: "metadata":{}
        await store.insert(bare)
        ids = [c.id for c in made]
        queries = [
            q(order=order, limit=limit, after=after, id_from=lo, id_before=hi, model=model, metadata=meta)
            for order in ("asc", "desc")
            for limit in (1, 4, 100)
            for after in (None, ids[9], ids[20])
            for lo, hi in ((None, None), (ids[5], None), (None, ids[25]), (ids[12], ids[14]))
            for model, meta in (
                (None, {"even": "True"}),
                ("m1", {}),
                (None, {"i": "7"}),
                (None, {"even": "no"}),
                ("m2", {"even": "False"}),
            )
        ] + [q(project="other", metadata={"even": "True"}), q(project="nobody", model="m1")]
        everything = [*made, other, bare]

        def expected(query: ListQuery) -> tuple[list[str], bool]:
            found = sorted(
                c.id for c in everything
                if c.project == query.project and query.model in (None, c.model, c.response_model)
                and query.metadata.items() <= c.metadata.items()
                and (query.after is None or (c.id > query.after if query.order == "asc" else c.id < query.after))
                and (query.id_from is None or c.id >= query.id_from)
                and (query.id_before is None or c.id < query.id_before)
            )  # fmt: skip
            found = found[::-1] if query.order == "desc" else found
            return found[: query.limit], len(found) > query.limit

        alone = [await store.list(query) for query in queries]
        alone_json = [await store.list_rendered(query) for query in queries]
        together = await asyncio.gather(*(store.list_rendered(query) for query in queries))
        for query, one, one_json, many in zip(queries, alone, alone_json, together, strict=True):
            assert ([r.id for r in one.items], one.has_more) == expected(query), query
            assert list_object(one_json) == list_object(rendered(one)), query
            assert list_object(many) == list_object(rendered(one)), query
            doc = orjson.loads(list_object(many))
            assert [d["id"] for d in doc["data"]] == [r.id for r in one.items], query
            assert (doc["first_id"], doc["last_id"], doc["has_more"]) == (
                one.items[0].id if one.items else None,
                one.items[-1].id if one.items else None,
                one.has_more,
            ), query
        assert sum(len(p.items) for p in alone) > 500, "the grid pages through real rows"

    run(store_url, body)


def test_postgres_pages_fed_out_of_order_are_asked_again(
    postgres: PostgresServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The batched list statement renders each page in the order PostgreSQL feeds its rows, which SQL
    does not promise. A plan that feeds them in another order (forced here: each walk re-sorted the
    other way) must still give every page in order: asked again alone the first time, said once,
    and from then on sorted by PostgreSQL in the one statement."""
    url = postgres.create_database()

    def flip(order: str, sql: str) -> str:
        other = "DESC" if order == "asc" else "ASC"
        sql = sql.replace(
            "    FROM (\n        SELECT t0.id", "    FROM (SELECT * FROM (\n        SELECT t0.id"
        )
        return sql.replace("    ) w\n", f"    ) w0 ORDER BY w0.id {other}) w\n")

    flipped = {key: flip(key[0], sql) for key, sql in postgres_store._LIST_MANY.items()}
    assert all(flipped[k] != postgres_store._LIST_MANY[k] for k in flipped), "the statement's shape changed"
    monkeypatch.setattr(postgres_store, "_LIST_MANY", flipped)
    alone_calls: list[ListQuery] = []
    page_alone = postgres_store._page

    async def counted(conn: Any, query: ListQuery, walk: Any) -> Any:
        alone_calls.append(query)
        return await page_alone(conn, query, walk)

    monkeypatch.setattr(postgres_store, "_page", counted)

    async def body(store: Store) -> None:
        for i in range(12):
            await store.insert(completion(metadata={"k": "v", "i": str(i)}))
        queries = [q(metadata={"k": "v"}, order=o, limit=n) for o in ("asc", "desc") for n in (1, 5, 20)]
        alone = [rendered(await store.list(query)) for query in queries]
        with caplog.at_level("WARNING", logger="storegate.store"):
            for round_ in range(3):
                alone_calls.clear()
                together = await asyncio.gather(*(store.list_rendered(query) for query in queries))
                for query, one, many in zip(queries, alone, together, strict=True):
                    assert list_object(many) == list_object(one), (round_, query)
                if round_ == 0:  # every page walks two rows at least (limit + 1): each is asked again alone
                    assert len(alone_calls) == len(queries), alone_calls
                else:
                    assert alone_calls == [], "sorted by PostgreSQL now: no page is asked alone"
        said = [r for r in caplog.records if "out of the walk's order" in r.getMessage()]
        assert len(said) == 1, said

    run(url, body)


def test_postgres_batched_pages_survive_a_tag_without_its_completion(postgres: PostgresServer) -> None:
    """A tag row whose completion is gone (not something storegate writes: a hand edit, a partial
    restore) drops out of the join after the walk has ranked it; a batched page must then read as
    the same page asked alone, not shift its items against its ids."""
    url = postgres.create_database()

    async def body(store: Store) -> None:
        made = [completion(metadata={"k": "v"}) for _ in range(6)]
        for c in made:
            await store.insert(c)
        conn = await asyncpg.connect(url)
        try:
            await conn.execute("DELETE FROM messages WHERE completion_id = $1", made[2].id)
            await conn.execute("DELETE FROM completions WHERE id = $1", made[2].id)
        finally:
            await conn.close()
        queries = [q(metadata={"k": "v"}, order=o, limit=n) for o in ("asc", "desc") for n in (1, 2, 3, 20)]
        alone = [rendered(await store.list(query)) for query in queries]
        together = await asyncio.gather(*(store.list_rendered(query) for query in queries))
        for query, one, many in zip(queries, alone, together, strict=True):
            assert list_object(many) == list_object(one), query
        assert not store._sorted_pages  # type: ignore[attr-defined]  # a gap is no reason to sort

    run(url, body)


def test_postgres_keeps_the_body_in_the_row_and_moves_the_request_out(postgres: PostgresServer) -> None:
    """A row over ~2 KB: PostgreSQL moves a value out of line into the TOAST table. It must be the
    raw request, which nothing reads on the hot paths, not the body every retrieve and list reads
    (migration 0004; with the default storage the larger value, here the body, went)."""
    url = postgres.create_database()
    cid, created = MINTER.mint()
    # Random hex: PostgreSQL's compression gains nothing on it, so values move out whole.
    made = replace(completion(), id=cid, created=created, body=os.urandom(900).hex().encode(),
                   request=os.urandom(300).hex().encode())  # fmt: skip

    async def body(store: Store) -> None:
        await store.insert(made)
        row = await store.get("p", cid)
        assert row is not None and row.body == made.body
        conn = await asyncpg.connect(url)
        try:
            toast = await conn.fetchval(
                "SELECT reltoastrelid::regclass::text FROM pg_class WHERE oid = 'completions'::regclass"
            )
            out_of_line = await conn.fetchval(f"SELECT coalesce(sum(length(chunk_data)), 0) FROM {toast}")
        finally:
            await conn.close()
        assert out_of_line == len(made.request), (out_of_line, len(made.request), len(made.body))

    run(url, body)
