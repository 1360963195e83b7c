"""Several storegate processes on one database behave as one server (PostgreSQL); retention and
`storegate db migrate` are safe with several of them at once."""

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest

from storegate.ids import IdMinter
from storegate.settings import Settings
from storegate.store.factory import make_store
from tests.fakes import REPO_ROOT, FakeBackend
from tests.pg import PostgresServer
from tests.server import Storegate
from tests.store.test_contract import completion

MSG = [{"role": "user", "content": "replicated"}]


@pytest.fixture
def replicas(fake: FakeBackend, postgres: PostgresServer) -> Iterator[tuple[Storegate, Storegate]]:
    url = postgres.create_database()
    one, two = Storegate(fake.url, db_url=url), Storegate(fake.url, db_url=url)
    with ThreadPoolExecutor(2) as pool:  # start together: migrations must not collide
        list(pool.map(lambda s: s.start(), (one, two)))
    yield one, two
    one.stop()
    two.stop()


def test_two_replicas_are_one_server(replicas: tuple[Storegate, Storegate]) -> None:
    one, two = replicas
    with one.client() as a, two.client() as b, ThreadPoolExecutor(8) as pool:
        made = list(pool.map(lambda i: (a, b)[i % 2].chat.completions.create(
            model="fake-model", messages=MSG, store=True, metadata={"r": "1", "i": str(i)}).id, range(40)))  # fmt: skip
        assert len(set(made)) == 40
        for i, cid in enumerate(made):
            other = (b, a)[i % 2]
            assert other.chat.completions.retrieve(cid).metadata == {"r": "1", "i": str(i)}
        assert b.chat.completions.update(made[0], metadata={"r": "2"}).metadata == {"r": "2"}
        assert a.chat.completions.retrieve(made[0]).metadata == {"r": "2"}
        a.chat.completions.delete(made[1])
        with pytest.raises(openai.NotFoundError):
            b.chat.completions.retrieve(made[1])
        stable = sorted(made[2:])
        assert [c.id for c in b.chat.completions.list(metadata={"r": "1"}, limit=100).data] == stable


def test_a_revocation_reaches_every_replica_at_once(replicas: tuple[Storegate, Storegate]) -> None:
    one, two = replicas
    assert one.cli("keys", "create", "--project", "stays").returncode == 0  # else revoking opens the door
    out = one.cli("keys", "create", "--project", "shared")
    assert out.returncode == 0, out.stderr
    secret = out.stdout.strip().splitlines()[-1]
    key_id = next(w for w in out.stdout.split() if w.startswith("key_"))
    with one.client(api_key=secret) as a, two.client(api_key=secret) as b:
        for _ in range(3):  # both replicas now remember the key
            a.chat.completions.list()
            b.chat.completions.list()
        assert two.cli("keys", "revoke", key_id).returncode == 0
        for client in (a, b):
            with pytest.raises(openai.AuthenticationError):
                client.chat.completions.list()


def test_paginated_walk_sees_each_once_while_replicas_write(replicas: tuple[Storegate, Storegate]) -> None:
    one, two = replicas
    with one.client() as a, two.client() as b:
        stable = [a.chat.completions.create(model="fake-model", messages=MSG, store=True,
                                            metadata={"walk": "1"}).id for _ in range(30)]  # fmt: skip
        doomed = stable[5::7]
        stop = threading.Event()

        def churn() -> None:
            for i in range(200):
                if stop.is_set():
                    return
                (a, b)[i % 2].chat.completions.create(model="fake-model", messages=MSG, store=True,
                                                      metadata={"walk": "1"})  # fmt: skip

        writer = threading.Thread(target=churn)
        writer.start()
        try:
            seen: list[str] = []
            after = None
            for page_number in range(100):
                client = (a, b)[page_number % 2]
                page = client.chat.completions.list(metadata={"walk": "1"}, limit=4, order="asc",
                                                    **({"after": after} if after else {}))  # fmt: skip
                seen += [c.id for c in page.data]
                if page_number == 1:
                    for cid in doomed:
                        b.chat.completions.delete(cid)
                if not page.has_more:
                    break
                after = page.data[-1].id
        finally:
            stop.set()
            writer.join(60)
        assert len(seen) == len(set(seen)), "no completion twice"
        assert seen == sorted(seen), "in creation order"
        missing = set(stable) - set(seen) - set(doomed)
        assert not missing, "every completion that stayed is seen"


def test_concurrent_db_migrate(postgres: PostgresServer) -> None:
    url = postgres.create_database()
    cmd = [sys.executable, "-m", "storegate", "db", "migrate", "--db", url]
    procs = [subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True) for _ in range(4)]
    outs = [p.communicate(timeout=60)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0]
    assert sum("applied migrations" in o for o in outs) == 1, outs


def _seed_old(db_url: str, count: int, days_ago: float) -> list[str]:
    minter = IdMinter(lambda: int((time.time() - days_ago * 86_400) * 1e9))

    async def main() -> list[str]:
        store = make_store(Settings(db=db_url))
        await store.open()
        try:
            made = [completion(project="default", metadata={"old": "1"}, minter=minter) for _ in range(count)]
            await asyncio.gather(*(store.insert(c) for c in made))
            return [c.id for c in made]
        finally:
            await store.close()

    return asyncio.run(main())


def test_retention_removes_old_keeps_recent_and_serves(fake: FakeBackend, fresh_db_url: str | None) -> None:
    sg = Storegate(
        fake.url, db_url=fresh_db_url, args=["--retention-days", "2", "--retention-interval", "0.2"]
    )
    old = _seed_old(sg.db_url, 1200, days_ago=3)
    young = _seed_old(sg.db_url, 5, days_ago=1)
    sg.start()
    try:
        with sg.client() as client:
            deadline = time.monotonic() + 90
            while client.chat.completions.list(metadata={"old": "1"}, limit=100).data[0].id in old:
                client.chat.completions.create(model="fake-model", messages=MSG)  # served meanwhile
                assert time.monotonic() < deadline, "retention did not finish"
            assert [c.id for c in client.chat.completions.list(metadata={"old": "1"}).data] == young
            fresh = client.chat.completions.create(model="fake-model", messages=MSG, store=True)
            time.sleep(0.5)
            assert client.chat.completions.retrieve(fresh.id).id == fresh.id
    finally:
        sg.stop()
