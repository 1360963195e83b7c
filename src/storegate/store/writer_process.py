"""The SQLite writer process's side (store/writer.py has the server's, and says why a process):
group commits, and the loop that reads the server's commands and answers them. It imports no
asyncio and nothing of the server, so the process starts fast (store/sqlite_writer.py is its main).

Frames on the socket, both ways: a message's length (u32), then its pickle. The server sends
(sequence number, command name, arguments); the process answers a list of (sequence number, result,
exception) per batch, after its COMMIT."""

import contextlib
import copy
import logging
import pickle
import socket
import sqlite3
import struct
import time
from collections.abc import Callable
from typing import Any

log = logging.getLogger("storegate.store")

Op = Callable[[sqlite3.Connection], Any]
Many = Callable[[sqlite3.Connection, list[Any]], None]
Build = Callable[[str, tuple[Any, ...]], Op]  # a command (name, arguments) -> the write it names


class Grouped:
    """A write that may share one call of `many` with its neighbours of the same `many`."""

    __slots__ = ("item", "many")

    def __init__(self, many: Many, item: Any) -> None:
        self.many = many
        self.item = item

    def __call__(self, conn: sqlite3.Connection) -> None:
        self.many(conn, [self.item])


Outcome = tuple[Any, Any, BaseException | None]  # (the write's key, its result, its exception)
_BATCH_MAX = 512
FRAME = struct.Struct("<I")  # each message: its length, then its pickle


class Wedged(Exception):
    """The connection is stuck in a transaction: no ROLLBACK, retried, could end it (an I/O error, a
    disk gone). It would refuse every BEGIN, and keep the write lock from every other process, while
    it goes on answering (so the server's watchdog never fires). serve answers the batch, then raises
    this, and the process ends (sqlite_writer.main); the server then fails the writes it had not
    answered, as after any writer's death, and starts another process, with a fresh connection."""


def commit(conn: sqlite3.Connection, batch: list[tuple[Op, Any]]) -> list[Outcome]:
    """Run a batch of (write, key) in one transaction; if a write fails, replay each write alone, so
    the failure reaches only its own caller. Every write gets its outcome; nothing raises.

    When the transaction cannot begin (the write lock not had within busy_timeout: a `sqlite3` shell
    in a transaction, a backup tool, `storegate db migrate` holds it), no write ran and none is
    replayed: each would wait its own busy_timeout for the same lock, and a batch of 512 would hold
    every write of the server for an hour and a half. They all fail with that error (503)."""
    return _commit(conn, batch)[0]


def _commit(conn: sqlite3.Connection, batch: list[tuple[Op, Any]]) -> tuple[list[Outcome], bool]:
    """commit's outcomes, and whether a BEGIN of it waited for the write lock in vain (_Patience)."""
    lock_not_had = False
    try:
        _begin(conn)
    except Exception as exc:
        log.warning("could not begin a transaction for %d writes (%s); failing them", len(batch), exc)
        outcomes, lock_not_had = _failed(batch, exc), _busy(exc)
    else:
        try:
            outcomes = _within(conn, batch)
        except Exception as exc:  # the writer must outlive any one failure
            if len(batch) == 1:
                outcomes = [(batch[0][1], None, exc)]
            else:
                outcomes, lock_not_had = _replayed(conn, batch, exc)
    for _, _, error in outcomes:
        if error is not None:
            _drop_tracebacks(error)
    return outcomes, lock_not_had


def _replayed(
    conn: sqlite3.Connection, batch: list[tuple[Op, Any]], exc: Exception
) -> tuple[list[Outcome], bool]:
    """Each write of a batch that failed, in a transaction of its own; and whether a BEGIN waited for
    the write lock in vain."""
    log.warning("group commit of %d writes failed (%s); replaying them one by one", len(batch), exc)
    outcomes: list[Outcome] = []
    for n, item in enumerate(batch):
        try:
            _begin(conn)
        except Exception as busy:  # the lock went elsewhere meanwhile (as in commit, after one wait), or
            # a ROLLBACK failed and left the transaction open
            return outcomes + _failed(batch[n:], busy), _busy(busy)
        try:
            outcomes += _within(conn, [item])
        except Exception as one:
            outcomes.append((item[1], None, one))
    return outcomes, False


def _begin(conn: sqlite3.Connection) -> None:
    """BEGIN IMMEDIATE; first, the end of a transaction that a failed ROLLBACK left open (it would
    refuse every BEGIN, and keep the write lock). Should that ROLLBACK fail too, BEGIN fails, and
    so do the writes that needed it (serve retries the ROLLBACK once the batch is answered, and
    ends the process if that fails too: Wedged)."""
    if conn.in_transaction:
        _rollback(conn)
    conn.execute("BEGIN IMMEDIATE")


def _rollback(conn: sqlite3.Connection) -> None:
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error:
        log.exception("rollback failed")


def _failed(batch: list[tuple[Op, Any]], exc: Exception) -> list[Outcome]:
    """Each write of `batch` failed with `exc`: each its own copy. (A batch's answers go in one pickle,
    whose memo would otherwise make them one object, raised by every caller at once.)"""
    return [(key, None, exc if n == 0 else copy.copy(exc)) for n, (_, key) in enumerate(batch)]


def _busy(error: Exception) -> bool:
    """SQLITE_BUSY: the write lock was not had within busy_timeout."""
    return (
        isinstance(error, sqlite3.OperationalError)
        and getattr(error, "sqlite_errorcode", 0) & 0xFF == sqlite3.SQLITE_BUSY  # (not on one made in Python)
    )


def _within(conn: sqlite3.Connection, batch: list[tuple[Op, Any]]) -> list[Outcome]:
    """Run the batch in the transaction just begun, and commit it; on any error roll it all back and
    raise."""
    try:
        outcomes: list[Outcome] = []
        for run in _runs(batch):
            head = run[0][0]
            if isinstance(head, Grouped):
                head.many(conn, [op.item for op, _ in run if isinstance(op, Grouped)])
                outcomes += [(key, None, None) for _, key in run]
            else:
                outcomes.append((run[0][1], head(conn), None))
        conn.execute("COMMIT")
    except Exception:
        if conn.in_transaction:
            _rollback(conn)
        raise
    return outcomes


def _runs(batch: list[tuple[Op, Any]]) -> list[list[tuple[Op, Any]]]:
    """Split a batch into runs: consecutive Grouped writes of one `many` together, anything else alone."""
    runs: list[list[tuple[Op, Any]]] = []
    for item in batch:
        op, last = item[0], runs[-1][-1][0] if runs else None
        if isinstance(op, Grouped) and isinstance(last, Grouped) and last.many is op.many:
            runs[-1].append(item)
        else:
            runs.append([item])
    return runs


def _drop_tracebacks(failure: BaseException) -> None:
    """A failure and those it follows (a replayed write's follows the group's) lose their tracebacks:
    each would keep commit's frame, and with it the batch and the outcomes that hold the failure, in a
    cycle until the cycle collector ran. Nothing is lost by it: a failure reaches the server pickled,
    which keeps neither its traceback nor its context."""
    seen: set[int] = set()
    error: BaseException | None = failure
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        error.__traceback__ = None
        error = error.__cause__ or error.__context__


def serve(conn: sqlite3.Connection, sock: socket.socket, build: Build) -> None:
    """Commit the commands that come on `sock` in batches (what is read at once, 512 at most each),
    answering each batch's outcomes in one message, until the server closes its side; then return.
    Raises Wedged once a batch, answered, leaves a transaction open that a ROLLBACK cannot end (the
    batches after it, unanswered)."""
    patience = _Patience(conn)
    buffer = bytearray()
    ended = False
    answering = True
    try:
        while not ended:
            ended = _receive(sock, buffer)
            commands, used = frames(buffer)
            del buffer[:used]
            for start in range(0, len(commands), _BATCH_MAX):
                batch: list[tuple[Op, Any]] = []
                answers: list[Outcome] = []
                for seq, name, args in commands[start : start + _BATCH_MAX]:
                    try:
                        batch.append((build(name, args), seq))
                    except Exception as exc:  # a command this process cannot run: its caller's error
                        answers.append((seq, None, exc))
                if batch:
                    patience.before()
                    outcomes, lock_not_had = _commit(conn, batch)
                    patience.after(lock_not_had)
                    answers += outcomes
                    del outcomes
                if answering:
                    try:
                        _send(sock, answers)
                    except OSError:
                        answering = False  # the server is gone (killed): commit the rest it sent, unanswered
                del batch, answers
                if conn.in_transaction:  # a ROLLBACK failed: try again now, not at the next write
                    _rollback(conn)  # (until then, the write lock stays taken from every other process)
                    if conn.in_transaction:
                        raise Wedged("no ROLLBACK, retried, could end the connection's transaction")
    finally:
        with contextlib.suppress(sqlite3.Error):  # (on a wedged connection: Wedged goes on)
            patience.restore()


class _Patience:
    """How long a batch waits for the write lock: busy_timeout, except for busy_timeout after a
    batch waited that long for it in vain; then each batch tries it once, without waiting, until one
    gets it or that time is over. A lock another process holds (a `sqlite3` shell in a transaction)
    then costs a write ~one busy_timeout at most, however many queue behind it. Else each read of a
    deep queue would wait its own: a read takes what the socket holds (~200 KB, ~200 inserts), and
    10,000 queued inserts would fail after ~50 waits, the last of them minutes later."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._ms = int(conn.execute("PRAGMA busy_timeout").fetchone()[0])
        self._now = self._ms  # the connection's busy_timeout
        self._hurry_until = 0.0  # (time.monotonic) no waiting before this

    def before(self) -> None:
        self._set(0 if time.monotonic() < self._hurry_until else self._ms)

    def after(self, lock_not_had: bool) -> None:
        if not lock_not_had:
            self._hurry_until = 0.0
        elif self._now:  # it waited in vain
            self._hurry_until = time.monotonic() + self._ms / 1000

    def restore(self) -> None:
        self._set(self._ms)

    def _set(self, ms: int) -> None:
        if ms != self._now:
            self._conn.execute(f"PRAGMA busy_timeout = {ms}")
            self._now = ms


def _receive(sock: socket.socket, buffer: bytearray) -> bool:
    """Wait for data, then take all that has come; True once the server closed its side. A server
    killed with answers unread resets the socket (ECONNRESET) after what it had sent was read: that
    is an end of input too."""
    try:
        chunk = sock.recv(1 << 20)
    except ConnectionResetError:
        return True
    if not chunk:
        return True
    buffer += chunk
    sock.setblocking(False)
    try:
        while True:
            chunk = sock.recv(1 << 20)
            if not chunk:
                return True
            buffer += chunk
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        sock.setblocking(True)


def frames(buffer: bytearray) -> tuple[list[Any], int]:
    """The whole messages at the start of `buffer`, unpickled, and how many bytes they took."""
    out, pos, view = [], 0, memoryview(buffer)
    try:
        while len(buffer) - pos >= FRAME.size:
            (size,) = FRAME.unpack_from(buffer, pos)
            if len(buffer) - pos - FRAME.size < size:
                break
            out.append(pickle.loads(view[pos + FRAME.size : pos + FRAME.size + size]))
            pos += FRAME.size + size
    finally:
        view.release()
    return out, pos


def _send(sock: socket.socket, answers: list[Outcome]) -> None:
    try:
        data = pickle.dumps(answers, protocol=pickle.HIGHEST_PROTOCOL)
    except Exception:  # a result or an exception that does not pickle: say what it was instead
        data = pickle.dumps([_picklable(a) for a in answers], protocol=pickle.HIGHEST_PROTOCOL)
    else:
        try:
            pickle.loads(data)
        except Exception:  # nor one that does not unpickle: it would fail every answer of the message
            data = pickle.dumps([_picklable(a) for a in answers], protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(FRAME.pack(len(data)) + data)


def _picklable(answer: Outcome) -> Outcome:
    seq, result, error = answer
    try:
        pickle.loads(pickle.dumps((result, error)))  # the server must be able to read it back, too
        return answer
    except Exception:
        # Types only: a value's repr could carry a stored completion into the server's logs.
        what = f"{type(result).__name__}, {type(error).__name__}"
        return seq, None, RuntimeError(f"the writer's answer could not be sent ({what})")


def socket_from_argv(argv: list[str]) -> socket.socket:
    return socket.socket(fileno=int(argv[-1]))


def send_ready(sock: socket.socket, failure: BaseException | None) -> None:
    data = pickle.dumps(failure, protocol=pickle.HIGHEST_PROTOCOL)
    sock.sendall(FRAME.pack(len(data)) + data)
