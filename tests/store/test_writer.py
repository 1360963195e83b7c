"""The SQLite writer's group commit: one failing write in a batch fails alone."""

import asyncio
import contextlib
import gc
import logging
import os
import pickle
import signal
import socket
import sqlite3
import subprocess
import sys
import threading
import time
import weakref
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from storegate.errors import StoreUnavailable
from storegate.store import MessagesQuery, NewCompletion
from storegate.store import writer as writer_module
from storegate.store.sqlite import SQLiteStore
from storegate.store.writer import Writer, WriterLost, _Link
from storegate.store.writer_process import FRAME, Grouped, Op, Wedged, _commit, commit, frames, serve
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


def _fail(db: sqlite3.Connection) -> None:
    """A write that fails on its own (its batch is then replayed a write at a time)."""
    raise sqlite3.IntegrityError("one write's own failure")


def _locked_db(path: Path) -> tuple[sqlite3.Connection, sqlite3.Connection, list[str]]:
    """A writer's connection (busy_timeout 50 ms, its BEGINs recorded) and another that can take the
    write lock from it."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)  # (serve runs it in a thread)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE t (n INTEGER PRIMARY KEY)")
    conn.execute("PRAGMA busy_timeout = 50")
    begun: list[str] = []
    conn.set_trace_callback(lambda sql: begun.append(sql) if sql.startswith("BEGIN") else None)
    return conn, sqlite3.connect(path, isolation_level=None), begun


def _inserts(count: int) -> list[tuple[Op, int]]:
    def insert(n: int) -> Op:
        def op(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO t VALUES (?)", (n,))

        return op

    return [(insert(n), n) for n in range(count)]


def _all_busy(outcomes: list[tuple[object, object, BaseException | None]], count: int) -> None:
    assert [key for key, _, _ in outcomes] == list(range(count))
    errors = [error for _, _, error in outcomes]
    assert all(
        isinstance(e, sqlite3.OperationalError) and e.sqlite_errorcode == sqlite3.SQLITE_BUSY for e in errors
    )
    assert len({id(e) for e in errors}) == count, "each caller gets its own exception"


def test_a_batch_that_cannot_get_the_write_lock_fails_after_one_wait_not_one_per_write(
    tmp_path: Path,
) -> None:
    """Another process holds the write lock past busy_timeout: no write ran, and replaying each alone
    would wait busy_timeout once more per write (512 of them: ~85 min at 10 s) while every later write
    of the server waits behind them. They all fail after the one wait."""
    conn, holder, begun = _locked_db(tmp_path / "l.db")
    try:
        holder.execute("BEGIN IMMEDIATE")
        outcomes, lock_not_had = _commit(conn, _inserts(5))
        _all_busy(outcomes, 5)
        assert len(begun) == 1 and lock_not_had  # (serve's _Patience: the writes after it need not wait)
        holder.execute("ROLLBACK")
        assert _commit(conn, _inserts(3)) == (
            [(n, None, None) for n in range(3)],
            False,
        )  # the lock is free again
    finally:
        holder.close()
        conn.close()


def test_a_replay_that_loses_the_write_lock_fails_the_writes_left_after_one_wait(tmp_path: Path) -> None:
    """A group fails on one write and is replayed one write at a time; another process takes the lock
    before the replay's first transaction: that write and those after it fail after its one wait."""
    conn, holder, begun = _locked_db(tmp_path / "r.db")
    batch = _inserts(4)

    batch[2] = (_fail, 2)

    def take_the_lock_at_the_first_replay(sql: str) -> None:
        if sql.startswith("BEGIN"):
            begun.append(sql)
            if len(begun) == 2:
                holder.execute("BEGIN IMMEDIATE")

    conn.set_trace_callback(take_the_lock_at_the_first_replay)
    try:
        outcomes, lock_not_had = _commit(conn, batch)
        _all_busy(outcomes, 4)
        assert len(begun) == 2 and lock_not_had
    finally:
        holder.close()
        conn.close()


def test_a_transaction_a_failed_rollback_left_open_is_ended_before_the_next_batch(tmp_path: Path) -> None:
    """A ROLLBACK that failed leaves a transaction open: it would refuse every later BEGIN and keep
    the write lock, a writer that answers (no watchdog fires) and never writes again."""
    conn, other, _ = _locked_db(tmp_path / "t.db")
    try:
        conn.execute("BEGIN IMMEDIATE")  # as a failed ROLLBACK would have left it
        assert commit(conn, _inserts(3)) == [(n, None, None) for n in range(3)]
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 3
    finally:
        other.close()
        conn.close()


def _deny_rollback(action: int, what: str | None, *_: object) -> int:
    """An authorizer under which SQLite refuses to prepare ROLLBACK: a real failure of it."""
    refused = action == sqlite3.SQLITE_TRANSACTION and what == "ROLLBACK"
    return sqlite3.SQLITE_DENY if refused else sqlite3.SQLITE_OK


def test_only_a_begin_refused_for_want_of_the_write_lock_counts_as_the_lock_not_had(tmp_path: Path) -> None:
    """_commit's flag for serve's _Patience: not a write's own failure, nor a BEGIN refused because a
    transaction a ROLLBACK could not end is still open (that is not another process's lock)."""
    conn, other, _ = _locked_db(tmp_path / "f.db")
    other.close()
    batch = _inserts(3)

    batch[1] = (_fail, 1)
    try:
        outcomes, lock_not_had = _commit(conn, batch)
        assert [error is None for _, _, error in outcomes] == [True, False, True] and not lock_not_had
        conn.set_authorizer(_deny_rollback)
        conn.execute("BEGIN IMMEDIATE")  # as a failed ROLLBACK would have left it
        outcomes, lock_not_had = _commit(conn, _inserts(2))
        assert all(isinstance(error, sqlite3.OperationalError) for _, _, error in outcomes)
        assert not lock_not_had
    finally:
        conn.close()


def test_a_connection_no_rollback_can_take_out_of_its_transaction_is_given_up(tmp_path: Path) -> None:
    """A batch fails on one write and its ROLLBACK fails; so does the one before its replay, whose
    BEGIN is then refused: the connection is stuck in the transaction, refuses every BEGIN and keeps
    the write lock. The batch's writes fail, answered; serve tries a ROLLBACK once more, and, that
    failing too, raises Wedged instead of going on (the writer process ends, and the server starts
    another): the next batch of the same read is neither run nor answered. The connection's close
    ends the transaction: nothing is stored, and the lock is free."""
    conn, other, begun = _locked_db(tmp_path / "w.db")
    ops = dict((key, op) for op, key in _inserts(600))

    ops[1] = _fail
    sent = [pickle.dumps((seq, "insert", (seq,))) for seq in range(600)]  # two batches: 512 + 88
    ours, theirs = socket.socketpair()
    try:
        ours.sendall(b"".join(FRAME.pack(len(data)) + data for data in sent))
        conn.set_authorizer(_deny_rollback)
        with pytest.raises(Wedged):
            serve(conn, theirs, lambda name, args: ops[args[0]])
        theirs.close()
        (answers,) = _messages(ours)  # the first batch's, answered before serve gave up
        assert [seq for seq, _, _ in answers] == list(range(512))
        assert all(isinstance(error, sqlite3.Error) for _, _, error in answers)
        assert len(begun) == 2  # the batch's, then the replay's, refused inside the open transaction
        assert conn.in_transaction
        conn.close()
        assert other.execute("SELECT count(*) FROM t").fetchone()[0] == 0
        other.execute("BEGIN IMMEDIATE")  # the write lock is free
        other.execute("ROLLBACK")
    finally:
        ours.close()
        theirs.close()
        other.close()
        conn.close()


def test_a_transaction_a_failed_rollback_left_open_is_ended_once_its_batch_is_answered(
    tmp_path: Path,
) -> None:
    """A write fails alone and its ROLLBACK fails: once its answer is sent, serve tries a ROLLBACK
    again, which ends the transaction: the write lock is free before any other write comes (an idle
    server would otherwise keep it from every other process), and the writes after it are served."""
    conn, other, _ = _locked_db(tmp_path / "o.db")
    ops = dict((key, op) for op, key in _inserts(3))

    ops[1] = _fail
    refusals = [1]  # ROLLBACK is refused once

    def deny_one_rollback(action: int, what: str | None, *rest: object) -> int:
        if refusals and _deny_rollback(action, what) == sqlite3.SQLITE_DENY:
            refusals.pop()
            return sqlite3.SQLITE_DENY
        return sqlite3.SQLITE_OK

    conn.set_authorizer(deny_one_rollback)
    sent = [pickle.dumps((seq, "insert", (seq,))) for seq in range(3)]
    frame = [FRAME.pack(len(data)) + data for data in sent]
    ours, theirs = socket.socketpair()
    serving = threading.Thread(target=serve, args=(conn, theirs, lambda name, args: ops[args[0]]))
    try:
        serving.start()
        ours.sendall(frame[1])
        (first,) = _messages(ours, 1)
        assert isinstance(first[0][2], sqlite3.IntegrityError) and not refusals
        deadline = time.monotonic() + 30
        while True:  # serve tries its ROLLBACK right after the answer
            try:
                other.execute("BEGIN IMMEDIATE")  # the write lock is free, no write since
                other.execute("ROLLBACK")
                break
            except sqlite3.OperationalError:
                assert time.monotonic() < deadline, "the write lock stayed taken"
                time.sleep(0.01)
        ours.sendall(frame[0] + frame[2])
        ours.shutdown(socket.SHUT_WR)
        serving.join(30)
        assert not serving.is_alive()
        theirs.close()
        assert [(seq, error) for message in _messages(ours) for seq, _, error in message] == [
            (0, None),
            (2, None),
        ]
        assert other.execute("SELECT n FROM t ORDER BY n").fetchall() == [(0,), (2,)]
    finally:
        ours.close()  # (serve, if still waiting for commands, sees the end of them and returns)
        serving.join(30)
        theirs.close()
        other.close()
        conn.close()


# The real writer process (sqlite_writer.main), its connection refusing ROLLBACK.
_WEDGING_WRITER = """
import sqlite3, sys
from storegate.store import sqlite_writer, sqlite_writes

connect = sqlite_writes.connect_writer

def connect_writer(*args):
    conn = connect(*args)
    conn.set_authorizer(lambda action, what, *_: sqlite3.SQLITE_DENY
                        if action == sqlite3.SQLITE_TRANSACTION and what == "ROLLBACK" else sqlite3.SQLITE_OK)
    return conn

sqlite_writes.connect_writer = connect_writer
sys.exit(sqlite_writer.main(sys.argv[1:]))
"""


def test_a_writer_process_whose_connection_is_stuck_in_a_transaction_ends_and_another_takes_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Through the real process: a write fails, and the ROLLBACKs after it fail, leaving the connection
    in its transaction. The process answers that write, then ends (status 1), rather than refuse
    every later write while it keeps the write lock; the writes after it fail and are stored nowhere;
    a new process takes over."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "x.db"))
        config = store._writer._argv[-1]  # (process_argv's last argument)
        store._writer._argv = [sys.executable, "-P", "-c", _WEDGING_WRITER, config]
        await store.open()
        try:
            first = store.writer_pid
            await store._writer.submit("add_key", "key_2", "p", b"i" * 8, "sk-y", None, 0)
            with pytest.raises(sqlite3.IntegrityError):  # answered; its ROLLBACK failed, then the next one
                await store._writer.submit("add_key", "key_2", "p", b"j" * 8, "sk-z", None, 0)
            # Sent to the process as it ends (lost), or refused (restarting):
            made = [completion(), completion()]
            inserts = await asyncio.gather(*(store.insert(c) for c in made), return_exceptions=True)
            assert all(isinstance(r, StoreUnavailable) for r in inserts), inserts
            for c in made:
                assert await store.get("p", c.id) is None
            late = completion()
            await _insert_once_a_new_writer_takes_over(store, late, "no new writer took over")
            assert store.writer_pid not in (None, first)
            assert await store.get("p", late.id) is not None
        finally:
            await store.close()

    with caplog.at_level(logging.ERROR, logger="storegate.store"):
        asyncio.run(main())
    assert "the SQLite writer process ended (exit status 1)" in caplog.text


def test_writes_queued_behind_a_lock_not_had_wait_for_it_once_not_once_per_read(tmp_path: Path) -> None:
    """Once a batch has waited busy_timeout for a write lock another process holds, the batches
    after it, of its read or of later ones, try the lock once each, without waiting, for busy_timeout
    (a deep queue would otherwise wait once per read), and busy_timeout is put back when serve ends."""
    conn, holder, _ = _locked_db(tmp_path / "s.db")
    conn.execute("PRAGMA busy_timeout = 2000")
    statements: list[str] = []
    conn.set_trace_callback(statements.append)
    ops = {key: op for op, key in _inserts(600)}
    padded = [pickle.dumps((seq, "insert", (seq, "x" * 2000))) for seq in range(600)]
    first, rest = (
        b"".join(FRAME.pack(len(data)) + data for data in part) for part in (padded[:50], padded[50:])
    )
    ours, theirs = socket.socketpair()
    serving = threading.Thread(target=serve, args=(conn, theirs, lambda name, args: ops[args[0]]))
    try:
        holder.execute("BEGIN IMMEDIATE")
        serving.start()
        ours.sendall(first)
        deadline = time.monotonic() + 30
        while "BEGIN IMMEDIATE" not in statements:  # the first read's batch is waiting for the lock
            assert time.monotonic() < deadline
            time.sleep(0.01)
        ours.sendall(rest)  # another read, or more (the answers, ~40 KB, fit the socket's buffer)
        ours.shutdown(socket.SHUT_WR)  # then the end: serve returns once it has answered them
        serving.join(60)
        assert not serving.is_alive()
        theirs.close()
        answers = [a for message in _messages(ours) for a in message]
        _all_busy(sorted(answers, key=lambda a: int(a[0])), 600)
        waits = [s for s in statements if s.startswith(("BEGIN", "PRAGMA busy_timeout"))]
        assert waits[:3] == ["PRAGMA busy_timeout", "BEGIN IMMEDIATE", "PRAGMA busy_timeout = 0"]
        assert waits[-1] == "PRAGMA busy_timeout = 2000"
        assert set(waits[3:-1]) == {"BEGIN IMMEDIATE"}, "a later batch waited again"
    finally:
        serving.join(60)
        ours.close()
        theirs.close()
        holder.close()
        conn.close()


def _messages(sock: socket.socket, count: int | None = None) -> list[Any]:
    """The messages on `sock`: all of them until it closes, or the next `count`, waiting for them."""
    data = bytearray()
    while True:
        messages, used = frames(data)
        if count is not None and len(messages) >= count:
            break
        chunk = sock.recv(1 << 20)
        if not chunk:
            assert count is None, "the socket closed first"
            break
        data += chunk
    assert used == len(data)
    return messages


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
            made = [completion() for _ in range(200)]
            pending = [asyncio.ensure_future(store.insert(c)) for c in made]
            await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)  # some confirmed, most in flight
            os.kill(first, signal.SIGKILL)
            results = await asyncio.gather(*pending, return_exceptions=True)
            confirmed = [c for c, r in zip(made, results, strict=True) if r is None]
            assert confirmed, "nothing was confirmed before the kill"
            assert all(r is None or isinstance(r, StoreUnavailable) for r in results), results
            for c in confirmed:  # a confirmed write is never lost
                assert await store.get("p", c.id) is not None
            for c, r in zip(made, results, strict=True):  # and a failed one is stored nowhere
                if r is not None:
                    assert await store.get("p", c.id) is None
            with pytest.raises(StoreUnavailable):
                await store.insert(completion())  # the writer is restarting
            late = completion()
            await _insert_once_a_new_writer_takes_over(store, late, "no new writer took over")
            assert store.writer_pid not in (None, first)
            assert await store.get("p", late.id) is not None
        finally:
            await store.close()

    asyncio.run(main())


def test_the_store_is_not_ready_while_its_writer_restarts(tmp_path: Path) -> None:
    """/readyz's ping: while a writer process that died is being replaced, every write would be
    refused (503 "restarting"), and so is the ping; once the new one takes writes, it answers again."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "p.db"))
        await store.open()
        try:
            await store.ping()
            link, pid = store._writer._link, store.writer_pid
            assert link is not None and pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(asyncio.shield(link.closed), 30)
            with pytest.raises(StoreUnavailable, match="restarting") as refused:
                await store.ping()
            assert refused.value.headers["Retry-After"] == "1"
            deadline = time.monotonic() + 30
            while True:
                await asyncio.sleep(0.05)
                try:
                    await store.ping()
                    break
                except StoreUnavailable:
                    assert time.monotonic() < deadline, "no new writer took over"
            assert store.writer_pid not in (None, pid)
            await store.insert(completion())
        finally:
            await store.close()

    asyncio.run(main())


async def _insert_once_a_new_writer_takes_over(store: SQLiteStore, made: NewCompletion, why: str) -> None:
    """Insert `made`, retrying the 503s of a restart until a new writer process takes it (30 s at most,
    else fail with `why`)."""
    deadline = time.monotonic() + 30
    while True:
        await asyncio.sleep(0.05)
        try:
            await store.insert(made)
            return
        except StoreUnavailable:
            assert time.monotonic() < deadline, why


_KILLED = """
import asyncio, os, signal, sys, time
from pathlib import Path
from storegate.store.sqlite import SQLiteStore
from tests.store.test_contract import completion

async def main():
    store = SQLiteStore(sys.argv[1])
    await store.open()
    kept = completion()
    await store.insert(kept)
    print(kept.id, store.writer_pid, flush=True)
    while not Path(sys.argv[2]).exists():  # the test holds the write lock: the writer will wait
        await asyncio.sleep(0.01)
    for n in range(600):  # ~80 KB: all in the socket's buffer once sent; two batches (512 + 88)
        store._writer.submit("add_key", f"key_{n}", "p", n.to_bytes(8, "big"), "sk-x", None, 0)
    await asyncio.sleep(0.3)  # sent (the next pass of the loop), not confirmed
    os.kill(os.getpid(), signal.SIGKILL)

asyncio.run(main())
"""


def test_the_writer_process_outlives_a_killed_server_only_to_commit_what_it_was_sent(tmp_path: Path) -> None:
    """kill -9 of the server with writes sent and unconfirmed (the writer waits on a lock the test holds):
    the writer commits all of them, two batches, though it can no longer answer, and exits cleanly."""
    db, go = str(tmp_path / "k.db"), tmp_path / "go"
    out, err = (tmp_path / "out").open("w+"), (tmp_path / "err").open("w+")  # files: the writer inherits them
    server = subprocess.Popen([sys.executable, "-c", _KILLED, db, str(go)], stdout=out, stderr=err,
                              cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not Path(out.name).read_text().strip():
            assert server.poll() is None and time.monotonic() < deadline, Path(err.name).read_text()
            time.sleep(0.02)
        kept, pid = Path(out.name).read_text().split()
        lock = sqlite3.connect(db, isolation_level=None)
        lock.execute("BEGIN IMMEDIATE")
        go.touch()
        assert server.wait(60) == -signal.SIGKILL, Path(err.name).read_text()
        lock.execute("ROLLBACK")  # the writer goes on: its first batch had waited on this lock
        lock.close()
        while Path(f"/proc/{pid}").exists() and "zombie" not in Path(f"/proc/{pid}/status").read_text():
            assert time.monotonic() < deadline, "the writer process did not end after its server was killed"
            time.sleep(0.05)
    finally:
        if server.poll() is None:
            server.kill()
        out.close()
        err.close()
    assert "Traceback" not in Path(err.name).read_text(), Path(err.name).read_text()
    check = sqlite3.connect(db)
    try:
        assert check.execute("SELECT count(*) FROM completions WHERE id = ?", (kept,)).fetchone()[0] == 1
        assert check.execute("SELECT count(*) FROM api_keys").fetchone()[0] == 600, "sent, yet not committed"
    finally:
        check.close()


def _writer_processes() -> list[int]:
    """This test process's SQLite writer children."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            if not entry.name.isdigit():
                continue
            stat, argv = (entry / "stat").read_text(), (entry / "cmdline").read_bytes()
        except OSError:
            continue
        parent = int(stat[stat.rfind(")") + 2 :].split()[1])
        if parent == os.getpid() and b"storegate.store.sqlite_writer" in argv and " Z " not in stat:
            found.append(int(entry.name))
    return found


def test_a_writer_that_ends_before_it_is_ready_fails_the_start_and_nothing_restarts_it() -> None:
    async def main() -> None:
        writer = Writer([sys.executable, "-c", "import sys; sys.exit(3)"], 10)
        with pytest.raises(StoreUnavailable, match="before it started"):
            await writer.start()
        assert writer._restart is None, "a failed start left a restart behind"
        await writer.stop()

    asyncio.run(main())


def test_stopping_while_the_writer_restarts_starts_no_other(tmp_path: Path) -> None:
    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "r.db"))
        await store.open()
        first = store.writer_pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        with pytest.raises(StoreUnavailable):  # the first write after the kill, or the restart's refusal
            for _ in range(100):
                await store.insert(completion())
                await asyncio.sleep(0.01)
        await store.close()  # within the restart's delay
        assert store.writer_pid is None
        await asyncio.sleep(1.5)  # past the restart's delay: nothing starts
        assert _writer_processes() == []

    asyncio.run(main())


def test_a_write_whose_caller_leaves_is_still_committed(tmp_path: Path) -> None:
    """A request cancelled while its write is on the way (its client left) cancels only its wait."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "c.db"))
        await store.open()
        try:
            left, after = completion(), completion()
            waiting = asyncio.ensure_future(store.insert(left))
            await asyncio.sleep(0)  # submitted: its command waits for this pass's flush
            waiting.cancel()
            await store.insert(after)  # sent after it, so committed after it
            assert waiting.cancelled()
            assert await store.get("p", left.id) is not None
            assert await store.get("p", after.id) is not None
        finally:
            await store.close()

    asyncio.run(main())


def test_an_insert_committed_by_a_writer_that_died_before_answering_is_confirmed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The writer's answer is lost (here: dropped as it arrives), the writer dies: the insert, found
    committed, is confirmed, not failed (a client told it failed would retry and store it twice)."""
    path = tmp_path / "a.db"
    received = _Link.data_received

    def ready_only(link: _Link, data: bytes) -> None:
        if not link.ready.done():
            received(link, data)

    async def main() -> None:
        store = SQLiteStore(str(path))
        await store.open()
        try:
            made = completion()
            inserting = asyncio.ensure_future(store.insert(made))
            watch = sqlite3.connect(path)
            try:
                deadline = time.monotonic() + 30
                while not watch.execute("SELECT 1 FROM completions WHERE id = ?", (made.id,)).fetchone():
                    assert time.monotonic() < deadline, "the writer never committed"
                    await asyncio.sleep(0.01)
            finally:
                watch.close()
            assert not inserting.done()  # committed, its answer dropped
            pid = store.writer_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            await asyncio.wait_for(inserting, 30)  # confirmed: no exception
            assert await store.get("p", made.id) is not None
        finally:
            await store.close()

    monkeypatch.setattr(_Link, "data_received", ready_only)
    asyncio.run(main())


@contextlib.contextmanager
def _stopped(pid: int) -> Iterator[None]:
    """The writer process `pid` stopped (SIGSTOP: hung, reading nothing, committing nothing); killed
    on the way out should the test fail before storegate kills it, so no stopped process outlives it."""
    os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


@contextlib.asynccontextmanager
async def _open_store(path: Path, hang_timeout: float) -> AsyncIterator[tuple[SQLiteStore, int]]:
    """An open store and its writer process's pid; closed on the way out."""
    store = SQLiteStore(str(path), hang_timeout=hang_timeout)
    await store.open()
    try:
        pid = store.writer_pid
        assert pid is not None
        yield store, pid
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def _insert_behind_a_lock(
    path: Path,
) -> AsyncIterator[tuple[SQLiteStore, sqlite3.Connection, NewCompletion, "asyncio.Future[None]"]]:
    """An open store with one insert sent to its writer, which waits for the write lock `lock` holds
    (up to busy_timeout): the insert is not committed until the lock is let go."""
    store = SQLiteStore(str(path))
    await store.open()
    lock = sqlite3.connect(path, isolation_level=None)
    try:
        lock.execute("BEGIN IMMEDIATE")
        made = completion()
        inserting = asyncio.ensure_future(store.insert(made))
        await asyncio.sleep(0.3)  # sent: in the process's socket, even once this side is closed
        assert not inserting.done()
        yield store, lock, made, inserting
    finally:
        lock.close()
        await store.close()


def test_a_write_behind_a_lock_held_past_busy_timeout_is_a_503_with_retry_after_and_stored_nowhere(
    tmp_path: Path,
) -> None:
    """The contract's 503 (always with Retry-After) for a lock another process holds: the writer
    process waits busy_timeout (10 s) once, fails the insert, and writes again once the lock is free
    (the writes after it try the lock without waiting, and get it)."""

    async def main() -> None:
        async with _insert_behind_a_lock(tmp_path / "k.db") as (store, lock, made, inserting):
            with pytest.raises(StoreUnavailable) as failed:
                await asyncio.wait_for(inserting, 30)
            assert failed.value.status == 503 and failed.value.headers["Retry-After"] == "1"
            assert "database is locked" in failed.value.message
            lock.execute("ROLLBACK")
            assert await store.get("p", made.id) is None
            late = completion()
            await asyncio.wait_for(store.insert(late), 30)
            assert await store.get("p", late.id) is not None

    asyncio.run(main())


def test_an_insert_not_committed_by_a_writer_that_died_fails_and_is_stored_nowhere(tmp_path: Path) -> None:
    async def main() -> None:
        async with _insert_behind_a_lock(tmp_path / "b.db") as (store, lock, made, inserting):
            pid = store.writer_pid
            assert pid is not None
            os.kill(pid, signal.SIGKILL)
            with pytest.raises(WriterLost):  # looked up and not found (sent or not, it was not committed)
                await asyncio.wait_for(inserting, 30)
            lock.execute("ROLLBACK")
            assert await store.get("p", made.id) is None

    asyncio.run(main())


def test_writes_are_settled_only_once_the_writer_process_has_ended(tmp_path: Path) -> None:
    """The link breaks on the server's side while the process lives: the process still commits what
    it read, so its writes are failed (or an insert found committed, confirmed) only once it ended."""

    async def main() -> None:
        async with _insert_behind_a_lock(tmp_path / "e.db") as (store, lock, made, inserting):
            link = store._writer._link
            assert link is not None and link._transport is not None
            link._transport.abort()  # the server's side of the link goes; the process lives on
            await asyncio.sleep(0.3)
            assert not inserting.done(), "settled while the writer could still commit it"
            lock.execute("ROLLBACK")  # the writer commits it, reaches the end of its input, and exits
            await asyncio.wait_for(inserting, 30)  # found committed: confirmed
            assert await store.get("p", made.id) is not None

    asyncio.run(main())


def test_a_writer_that_does_not_end_after_its_link_closed_is_killed_and_its_writes_fail(
    tmp_path: Path,
) -> None:
    """A hung process (here: stopped) would hold its unanswered writes forever: after the grace it is
    killed, and they are settled (looked up, not found, failed)."""
    path = tmp_path / "h.db"

    async def main() -> None:
        store = SQLiteStore(str(path), hang_timeout=0.5)
        await store.open()
        try:
            pid = store.writer_pid
            assert pid is not None
            with _stopped(pid):
                made = completion()
                inserting = asyncio.ensure_future(store.insert(made))
                await asyncio.sleep(0.1)  # sent
                link = store._writer._link
                assert link is not None and link._transport is not None
                link._transport.abort()
                with pytest.raises(WriterLost):
                    await asyncio.wait_for(inserting, 30)
            assert await store.get("p", made.id) is None
            deadline = time.monotonic() + 30  # and the restart, which waits for its end, goes on
            while store.writer_pid in (None, pid):
                assert time.monotonic() < deadline, "no new writer took over"
                await asyncio.sleep(0.05)
        finally:
            await store.close()

    asyncio.run(main())


def test_a_hung_writer_with_nothing_unanswered_is_killed_and_replaced(tmp_path: Path) -> None:
    """The restart waits for the old process to end: a hung one is killed after the grace, writes
    waiting on it or not."""

    async def main() -> None:
        async with _open_store(tmp_path / "r.db", hang_timeout=0.5) as (store, pid):
            with _stopped(pid):
                link = store._writer._link
                assert link is not None and link._transport is not None
                link._transport.abort()  # nothing sent: no write waits on it
                late = completion()
                await _insert_once_a_new_writer_takes_over(
                    store, late, "the restart waits for the hung process forever"
                )
            assert store.writer_pid not in (None, pid)
            assert await store.get("p", late.id) is not None

    asyncio.run(main())


def test_a_writer_that_hangs_while_writes_wait_is_killed_and_replaced(tmp_path: Path) -> None:
    """A writer that stops answering while serving (here: stopped) would hold its writes, and every
    later one, without limit: once it has answered nothing for hang_timeout while writes waited, it is
    killed, its unanswered insert is settled (looked up, not found, failed), and another takes over."""

    async def main() -> None:
        async with _open_store(tmp_path / "w.db", hang_timeout=0.5) as (store, pid):
            with _stopped(pid):
                made = completion()
                with pytest.raises(WriterLost):
                    await asyncio.wait_for(store.insert(made), 30)
                with pytest.raises(ProcessLookupError):  # killed and reaped
                    os.kill(pid, 0)
            assert await store.get("p", made.id) is None
            late = completion()
            await _insert_once_a_new_writer_takes_over(store, late, "no new writer took over")
            assert store.writer_pid not in (None, pid)

    asyncio.run(main())


def test_a_writer_that_is_idle_or_keeps_answering_is_not_taken_for_hung(tmp_path: Path) -> None:
    """The watchdog kills only a writer silent while writes wait: not one with nothing to do, nor one
    that answers write after write, however many looks go by."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "i.db"), synchronous="OFF", hang_timeout=0.5)
        await store.open()
        try:
            pid = store.writer_pid
            await asyncio.sleep(1.2)  # idle through two looks
            assert store.writer_pid == pid
            deadline = time.monotonic() + 1.2
            while time.monotonic() < deadline:  # busy through two more
                await store.insert(completion())
            assert store.writer_pid == pid
        finally:
            await store.close()

    asyncio.run(main())


def test_the_watchdog_kills_a_writer_only_when_writes_waited_unanswered_from_one_look_to_the_next(
    tmp_path: Path,
) -> None:
    """Its looks, one by one (the timer cancelled, the kill recorded): idle, answering, a look far
    later than due (this process was paused: the writer may have answered unread), and hung."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "l.db"), hang_timeout=60)
        await store.open()
        link = store._writer._link
        assert link is not None and link._watchdog is not None
        link._watchdog.cancel()
        killed: list[int] = []
        link.kill = lambda: killed.append(link.answers)  # type: ignore[method-assign]
        try:
            link._watch()
            link._watch()  # idle from one look to the next
            assert not killed
            link.pending[-1] = asyncio.get_running_loop().create_future()  # a write waits from here on
            link._watch()
            link.answers += 1
            link._watch()  # it answered meanwhile (others' writes)
            assert not killed
            link._due = asyncio.get_running_loop().time() - 60
            link._watch()  # silent, but this look comes a whole hang_timeout late
            assert not killed
            link._watch()  # silent, the write waiting all along
            assert killed == [link.answers]
        finally:
            try:
                waiting = link.pending.pop(-1, None)
                if waiting is not None:
                    waiting.cancel()
                if link._watchdog is not None:
                    link._watchdog.cancel()
            finally:
                await store.close()

    asyncio.run(main())


def test_a_writer_silent_while_busy_with_its_storage_is_spared_a_few_looks_and_takes_no_new_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog's looks, one by one, with what /proc says of the process given (in I/O, and its
    read and write system calls): silent while a write waits but in I/O, or making system calls (a
    commit on a slow disk), it is not killed (that would lose the answers of writes it may commit),
    and new writes and the ping get 503 until it answers. Silent and idle, it is killed; and so is one
    busy but silent for more looks than it is spared."""
    io: list[tuple[bool, int | None]] = []
    monkeypatch.setattr(writer_module, "_io_of", lambda pid: io.pop(0))

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "d.db"), hang_timeout=60)
        await store.open()
        link = store._writer._link
        assert link is not None
        killed: list[int] = []
        link.kill = lambda: killed.append(link.answers)  # type: ignore[method-assign]

        def look(in_io: bool, calls: int | None) -> None:
            io.append((in_io, calls))
            assert link._watchdog is not None
            link._watchdog.cancel()
            link._watch()

        try:
            link.pending[-1] = asyncio.get_running_loop().create_future()  # a write waits from here on
            look(False, 10)
            look(True, 10)  # silent, the write waiting all along, in I/O
            assert not killed and link.stalled
            with pytest.raises(StoreUnavailable, match="waiting on its storage") as refused:
                await store.insert(completion())
            assert refused.value.headers["Retry-After"] == "1"
            with pytest.raises(StoreUnavailable, match="waiting on its storage"):
                await store.ping()
            look(False, 12)  # still silent, not in I/O at the look, but it made system calls
            assert not killed and link.stalled
            link.data_received(b"")  # it answers (others' writes)
            assert not link.stalled
            await store.ping()
            look(False, 12)
            look(False, 12)  # silent again, idle: hung
            assert killed == [link.answers]
            killed.clear()
            link.data_received(b"")
            look(False, None)
            look(False, None)  # silent, what it does unknown (/proc/PID/io unreadable), not in I/O: hung
            assert killed == [link.answers]
            killed.clear()
            link.data_received(b"")
            look(False, 12)
            look(False, None)  # its calls unreadable at this look: no sign of progress, so hung
            assert killed == [link.answers]
            killed.clear()
            link.data_received(b"")
            look(True, None)
            for _ in range(writer_module._STALL_LOOKS):
                look(True, None)  # silent, in I/O, look after look
            assert not killed
            look(True, None)  # one look more than it is spared
            assert killed == [link.answers]
            assert link.stalled
            writer_module._Link.kill(link)  # the real kill: it is then being replaced, not waited on
            with pytest.raises(StoreUnavailable, match="restarting"):
                await store.insert(completion())
        finally:
            try:
                waiting = link.pending.pop(-1, None)
                if waiting is not None:
                    waiting.cancel()
                if link._watchdog is not None:
                    link._watchdog.cancel()
            finally:
                await store.close()

    asyncio.run(main())


@pytest.mark.skipif(
    not os.path.exists("/proc/self/io"), reason="no /proc/PID/io (not Linux, or no I/O accounting)"
)
def test_what_proc_says_of_a_process_is_read_right() -> None:
    """The state after the command's name, whatever that name holds; the read and write system calls;
    and nothing, for a process that is gone."""
    assert writer_module._state(b"7 (sqlite) D 1 7 7 0 -1") == b"D"
    assert writer_module._state(b"7 (a) D (x) S 1 7 7 0 -1") == b"S"  # a name made to look like a state
    assert writer_module._io_calls(b"rchar: 5\nwchar: 6\nsyscr: 10\nsyscw: 3\nread_bytes: 0\n") == 13
    assert writer_module._io_calls(b"rchar: 5\n") is None
    sleeping = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        deadline = time.monotonic() + 30
        while writer_module._state(Path(f"/proc/{sleeping.pid}/stat").read_bytes()) != b"S":
            assert time.monotonic() < deadline
            time.sleep(0.01)
        in_io, calls = writer_module._io_of(sleeping.pid)
        assert not in_io and isinstance(calls, int) and calls > 0
    finally:
        sleeping.kill()
        sleeping.wait()
    assert writer_module._io_of(sleeping.pid) == (False, None)


def test_stopping_a_hung_writer_kills_it_after_the_grace_and_fails_its_writes(tmp_path: Path) -> None:
    """A server's shutdown waits for its writer to finish what was sent, but not forever: a hung one
    (here: stopped) is killed after the grace, and its unanswered insert fails, stored nowhere."""
    path = tmp_path / "s.db"

    async def main() -> None:
        store = SQLiteStore(str(path), hang_timeout=0.5)
        await store.open()
        pid = store.writer_pid
        assert pid is not None
        with _stopped(pid):
            made = completion()
            inserting = asyncio.ensure_future(store.insert(made))
            await asyncio.sleep(0.1)  # submitted before the stop begins (a write after it is refused)
            await asyncio.wait_for(store.close(), 30)  # hangs without the grace
            with pytest.raises(WriterLost):
                await inserting
        with pytest.raises(ProcessLookupError):  # killed and reaped
            os.kill(pid, 0)
        reopened = SQLiteStore(str(path))
        await reopened.open()
        try:
            assert await reopened.get("p", made.id) is None
        finally:
            await reopened.close()

    asyncio.run(main())


def test_stopping_while_a_restart_waits_for_a_hung_writer_still_ends_that_writer(tmp_path: Path) -> None:
    """The restart that waits for a hung process to end is cancelled by the stop; the stop still
    waits for that end (the process killed after the grace), so no hung writer outlives the server."""

    async def main() -> None:
        store = SQLiteStore(str(tmp_path / "c.db"), hang_timeout=0.5)
        await store.open()
        pid = store.writer_pid
        assert pid is not None
        with _stopped(pid):
            link = store._writer._link
            assert link is not None and link._transport is not None
            link._transport.abort()  # the restart begins, waiting for the hung process to end
            await asyncio.sleep(0.1)
            assert store._writer._restart is not None and not store._writer._restart.done()
            await asyncio.wait_for(store.close(), 30)
            with pytest.raises(ProcessLookupError):  # killed and reaped before close() returned
                os.kill(pid, 0)

    asyncio.run(main())
