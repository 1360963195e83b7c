"""The SQLite writer's group commit: one failing write in a batch fails alone."""

import asyncio
import gc
import os
import signal
import sqlite3
import subprocess
import sys
import time
import weakref
from pathlib import Path

import pytest

from storegate.errors import StoreUnavailable
from storegate.store import MessagesQuery
from storegate.store.sqlite import SQLiteStore
from storegate.store.writer import Grouped, Op, commit
from tests.store.test_contract import completion


def test_a_failing_write_fails_alone_in_its_batch(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "w.db"))
        await store.open()
        try:
            first = completion()
            await store.insert(first)
            others = [completion() for _ in range(20)]
            batch = [*others[:10], first, *others[10:]]  # `first` again: a duplicate id
            results = await asyncio.gather(*(store.insert(c) for c in batch), return_exceptions=True)
            assert isinstance(results[10], StoreUnavailable)
            assert [r for i, r in enumerate(results) if i != 10] == [None] * 20
            for c in others:
                assert await store.get("p", c.id) is not None
            page = await store.list_messages(MessagesQuery("p", first.id, None, 10, "asc"))
            assert page is not None and len(page.items) == 2, "the duplicate added no messages"
        finally:
            await store.close()

    asyncio.run(main())


def test_writes_past_the_queue_bound_are_refused(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "q.db"), queue_max=5)
        await store.open()
        try:
            results = await asyncio.gather(
                *(store.insert(completion()) for _ in range(200)), return_exceptions=True
            )
            refused = [r for r in results if isinstance(r, StoreUnavailable)]
            assert refused and all(r.headers["Retry-After"] for r in refused)
            assert results.count(None) >= 5
        finally:
            await store.close()

    asyncio.run(main())


@pytest.mark.parametrize("count", [1, 3])
def test_close_flushes_pending_writes(tmp_path: Path, count: int) -> None:
    async def main() -> list[str]:
        store = SQLiteStore(str(tmp_path / "f.db"))
        await store.open()
        made = [completion() for _ in range(count)]
        pending = [asyncio.ensure_future(store.insert(c)) for c in made]
        await asyncio.sleep(0)
        await store.close()
        await asyncio.gather(*pending)
        reopened = SQLiteStore(str(tmp_path / "f.db"))
        await reopened.open()
        try:
            return [c.id for c in made if await reopened.get("p", c.id) is not None]
        finally:
            await reopened.close()

    assert len(asyncio.run(main())) == count


def test_a_failed_group_commit_leaves_nothing_for_the_cycle_collector(tmp_path: Path) -> None:
    """Once their outcomes are dropped, the failed writes are freed by reference counting alone: no
    failure's traceback keeps a frame that keeps the batch (the writer process commits batch after
    batch; nothing of a failed one should wait for the cycle collector)."""

    class Record:
        pass

    def fail(conn: sqlite3.Connection, items: list[Record]) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    conn = sqlite3.connect(tmp_path / "g.db", isolation_level=None)
    records = [Record() for _ in range(5)]
    refs = [weakref.ref(r) for r in records]
    gc.collect()
    gc.disable()
    try:
        batch: list[tuple[Op, int]] = [(Grouped(fail, r), n) for n, r in enumerate(records)]
        del records
        outcomes = commit(conn, batch)  # one batch: fails, then replayed one by one
        assert [key for key, _, _ in outcomes] == [0, 1, 2, 3, 4]
        assert all(isinstance(error, sqlite3.OperationalError) for _, _, error in outcomes)
        del batch, outcomes
        assert [r() for r in refs] == [None] * 5
    finally:
        gc.enable()
        conn.close()


def test_a_command_the_writer_cannot_run_fails_alone(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "u.db"))
        await store.open()
        try:
            made = [completion() for _ in range(3)]
            results = await asyncio.gather(
                store.insert(made[0]), store._write("no-such-write"), store.insert(made[1]),
                store.insert(made[2]), return_exceptions=True,
            )  # fmt: skip
            assert isinstance(results[1], KeyError)
            assert [results[0], *results[2:]] == [None, None, None]
            for c in made:
                assert await store.get("p", c.id) is not None
        finally:
            await store.close()

    asyncio.run(main())


def test_when_the_writer_process_dies_its_writes_fail_and_another_takes_over(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "d.db"))
        await store.open()
        try:
            await store.insert(completion())
            first = store.writer_pid
            assert first is not None
            pending = [asyncio.ensure_future(store.insert(completion())) for _ in range(50)]
            os.kill(first, signal.SIGKILL)
            results = await asyncio.gather(*pending, return_exceptions=True)
            # Each either committed before the kill or failed: none is left waiting, none is lost.
            for result in results:
                assert result is None or isinstance(result, StoreUnavailable), result
            with pytest.raises(StoreUnavailable):
                await store.insert(completion())  # the writer is restarting
            late = completion()
            for _ in range(100):  # bounded: ~5 s
                await asyncio.sleep(0.05)
                try:
                    await store.insert(late)
                    break
                except StoreUnavailable:
                    continue
            assert store.writer_pid not in (None, first)
            assert await store.get("p", late.id) is not None
        finally:
            await store.close()

    asyncio.run(main())


_ORPHAN = """
import asyncio, os, signal, sys
from storegate.store.sqlite import SQLiteStore
from tests.store.test_contract import completion

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    kept = completion()
    await store.insert(kept)
    print(kept.id, store.writer_pid, flush=True)
    for _ in range(20):  # ~50 KB: all in the socket's buffer once sent
        store._writer.submit("insert", *sqlite_fields(completion()))
    await asyncio.sleep(0.05)  # sent (the next pass of the loop), not awaited
    os.kill(os.getpid(), signal.SIGKILL)

from storegate.store.sqlite import _fields as sqlite_fields
asyncio.run(main())
"""


def test_the_writer_process_outlives_a_killed_server_only_to_commit_what_it_was_sent(tmp_path: Path) -> None:
    """kill -9 of the server: the writer reads what was sent to the end, commits it, and exits."""
    db = str(tmp_path / "k.db")
    done = subprocess.run([sys.executable, "-c", _ORPHAN, db], capture_output=True, text=True, timeout=60,
                          cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    assert done.returncode == -signal.SIGKILL, done.stderr
    kept, pid = done.stdout.split()
    for _ in range(200):  # bounded: ~10 s
        if not Path(f"/proc/{pid}").exists() or "zombie" in Path(f"/proc/{pid}/status").read_text():
            break
        time.sleep(0.05)
    else:
        os.kill(int(pid), signal.SIGKILL)
        pytest.fail("the writer process did not end after its server was killed")

    async def count() -> tuple[bool, int]:
        store = SQLiteStore(db)
        await store.open()
        try:
            found = await store.get("p", kept) is not None
            assert store._reader is not None
            return found, store._reader.execute("SELECT count(*) FROM completions").fetchone()[0]
        finally:
            await store.close()

    found, rows = asyncio.run(count())
    assert found, "a confirmed write was lost"
    assert rows == 21, "the writer did not commit what it had been sent"
