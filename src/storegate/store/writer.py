"""The one SQLite writer, the server's side: a process of its own runs the server's writes in group
commits (store/writer_process.py).

Many requests' writes share one transaction and one fsync, and consecutive writes of one kind (the
inserts of a busy server) run as one `many` call. Should a write fail, the batch is rolled back and
replayed one write per transaction, so a failure reaches only its own caller; should the transaction
not begin (the write lock not had), no write ran, and all fail (writer_process.commit).

Why a process, not a thread: a writer thread shares the event loop's GIL. It holds it to build rows
and bind them, and it takes it back after every SQLite statement (the sqlite3 module releases it
around each one): under load ~1 ms each of a group commit's six statements, each time stopping the
event loop. Measured (bench/analysis/2026-11-27T1805Z.md), create store=true at 64 connections: the
process served 1.13x (0.80-1.27) the creates of the thread (bench/ab, 6 rounds).

The server (`Writer`) sends each write as a command (a name and its arguments, pickled) over a
socket pair; the process (`serve` in store/writer_process.py, run by store/sqlite_writer.py) reads
what has come, commits it as one batch, and sends back each write's result or exception. A write is
acknowledged only after its COMMIT returned (with the default synchronous=FULL: on disk). If the
server dies (even on kill -9), the process reads to the end of what was sent, commits it, and exits.
If the process dies, the writes it had not acknowledged fail (WriterLost, a StoreUnavailable) once
it has exited, and a new process is started a second later; one that answers nothing for
`hang_timeout` while writes wait on it (hung: stopped, deadlocked) is killed, and the same follows
(one busy with its storage meanwhile takes no new writes, and is killed only after a few looks more:
_Link._watch); one whose connection no ROLLBACK can end ends itself (writer_process.Wedged).
Such a write may have been committed, its answer lost with the process: an insert is then looked
up, and confirmed if it is there (SQLiteStore.insert).
"""

import asyncio
import contextlib
import logging
import pickle
import socket
import subprocess
import sys
from typing import Any, cast

from storegate.errors import StoreUnavailable
from storegate.store.writer_process import FRAME, frames

log = logging.getLogger("storegate.store")
_RESTART_DELAY_S = 1.0
# The default of how long a process may go without answering while writes wait on it (serving or
# finishing), and a process whose link closed may take to end, before it is killed: it may be
# committing a batch (waiting up to busy_timeout, 10 s, for a lock another process holds), or hung (a
# stopped process; one stuck in the kernel on a dead disk ends only once its I/O does).
HANG_TIMEOUT_S = 30.0
# How many looks more a serving writer silent while writes wait is spared if it is busy with its
# storage (in I/O, or making system calls), refusing new writes meanwhile, before it is killed.
_STALL_LOOKS = 3


class WriterOverloaded(Exception):
    pass


class WriterLost(StoreUnavailable):
    """The writer process ended with this write sent and not answered: it may have been committed
    (its answer lost with the process) or not. The store can look (SQLiteStore.insert does)."""


class Writer:
    """The server's handle on its writer process: `submit` a command, await its outcome."""

    def __init__(self, argv: list[str], queue_max: int, hang_timeout: float = HANG_TIMEOUT_S) -> None:
        self._argv = argv  # runs `serve`; the socket's descriptor is appended
        self._queue_max = queue_max
        self.hang_timeout = hang_timeout
        self._proc: asyncio.subprocess.Process | None = None
        self._link: _Link | None = None
        self._stopping = False
        self._restart: asyncio.Task[None] | None = None
        self._settling: set[asyncio.Task[None]] = set()
        self._exits: set[asyncio.Future[None]] = set()  # processes whose link closed, not yet reaped

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    async def start(self) -> None:
        """Start the process; raise what kept it from opening the database."""
        ours, theirs = socket.socketpair()
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._argv, str(theirs.fileno()), pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()
        loop = asyncio.get_running_loop()
        try:
            _, link = await loop.create_unix_connection(lambda: _Link(self, proc), sock=ours)
        except BaseException:
            ours.close()
            proc.kill()
            raise
        # From here stop() finds them: cancelled while it waits for ready, the process still ends
        # once stop() closes the socket.
        self._proc, self._link = proc, link
        failure = await link.ready
        if failure is not None:
            await self._reap()
            raise failure

    def submit(self, name: str, *args: Any) -> "asyncio.Future[Any]":
        link = self._link
        if link is None or not link.open:
            raise self._refusal()
        if len(link.pending) >= self._queue_max:
            raise WriterOverloaded
        return link.send(name, args)

    def ensure_open(self) -> None:
        """Raise what a write submitted now would be refused with at once (a process restarting,
        stalled on its storage, or stopping), if anything: a queue full is not checked (that
        overload is a write's own, not the store's readiness)."""
        link = self._link
        if link is None or not link.open:
            raise self._refusal()

    def _refusal(self) -> StoreUnavailable:
        if self._stopping:
            doing = "stopping"
        elif self._link is not None and self._link.stalled:
            doing = "waiting on its storage"
        else:
            doing = "restarting"
        return StoreUnavailable(f"the store's writer is {doing}; retry shortly", retry_after=1)

    async def stop(self) -> None:
        """Finish every write sent, then stop the process. One that answers nothing for hang_timeout
        meanwhile (hung) is killed: what it had not answered is then settled as after any writer's
        death (_settle), and the server's shutdown goes on."""
        self._stopping = True
        restart, self._restart = self._restart, None
        if restart is not None:
            restart.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await restart
        link = self._link
        if link is not None:
            link.finish()
            await _finished(link, self.hang_timeout)
        await self._reap()
        # Not gather: a cancelled stop must not cancel them. The ends of processes whose link closed
        # before (a restart this stop cancelled may have been waiting for one, or killing it), and the
        # writes they left unanswered.
        if self._exits or self._settling:
            await asyncio.wait(self._exits | self._settling)

    async def _reap(self) -> None:
        proc, link, self._proc, self._link = self._proc, self._link, None, None
        if link is not None and link.exited is not None:  # closed: its process is ending, or is killed
            await asyncio.shield(link.exited)  # shared with _fail_once: a cancelled reap leaves it be
        elif proc is not None:
            await proc.wait()

    def _exiting(self, exited: "asyncio.Future[None]") -> None:
        self._exits.add(exited)
        exited.add_done_callback(self._exits.discard)

    def _settle(self, exited: "asyncio.Future[None]", unanswered: list["asyncio.Future[Any]"]) -> None:
        """Fail the writes a closed link never answered, once its process has exited: until then it
        may still commit them. (It does if the link broke on this side while it lived: it reads to
        the end of what was sent, commits it, and exits.) So a write's failure, and the store's look
        for an insert that failed (SQLiteStore.insert), come after the process's last commit."""
        task = asyncio.ensure_future(_fail_once(exited, unanswered))
        self._settling.add(task)
        task.add_done_callback(self._settling.discard)

    def _lost(self, link: "_Link") -> None:
        """A started process closed its side (it ended) while the server was not stopping: start
        another. (One that ended before it was ready is start()'s to report.)"""
        if (
            self._stopping
            or link is not self._link
            or (self._restart is not None and not self._restart.done())
        ):
            return
        self._restart = asyncio.ensure_future(self._start_again())

    async def _start_again(self) -> None:
        proc = self._proc
        await self._reap()
        code = proc.returncode if proc is not None else None
        log.error("the SQLite writer process ended (exit status %s); starting another", code)
        while True:
            await asyncio.sleep(_RESTART_DELAY_S)
            if self._stopping:
                return
            try:
                await self.start()
                return
            except Exception as exc:
                log.error("starting the SQLite writer process failed (%s); retrying", exc)


class _Link(asyncio.Protocol):
    """The socket to one writer process: commands out (gathered per pass of the event loop, one write
    each), outcomes back."""

    def __init__(self, writer: Writer, process: asyncio.subprocess.Process) -> None:
        loop = asyncio.get_running_loop()
        self._writer = writer
        self._loop = loop
        self._transport: asyncio.Transport | None = None
        self._inbox = bytearray()
        self._outbox: list[bytes] = []
        self._seq = 0
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ready: asyncio.Future[BaseException | None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self._started = False
        self._finishing = False
        self._process = process
        self.exited: asyncio.Future[None] | None = None  # once closed: its process's end (_exit_of)
        self.answers = 0  # reads from the process: while they come, it is not hung
        self._seen = (0, False)  # (answers, writes waited) at the watchdog's last look
        self._watchdog: asyncio.TimerHandle | None = None
        self._due = 0.0  # when the watchdog's next look is due
        self._killed = False
        self.stalled = False  # silent while writes wait, busy with its storage: takes no new writes
        self._stalls = 0  # looks it has been spared for that since it last answered
        self._calls: int | None = None  # its read and write system calls at the last look (_io_of)

    @property
    def pid(self) -> int:
        return self._process.pid

    def kill(self) -> None:
        self._killed = True  # takes no more commands (a process stuck in the kernel may take a while to end)
        self.stalled = False  # (a refusal now says "restarting")
        with contextlib.suppress(ProcessLookupError):
            self._process.kill()

    @property
    def open(self) -> bool:
        """It takes commands: it is serving (spelled out: this is read for every write), and not
        stalled."""
        return (
            not self.stalled
            and self._started
            and not self._finishing
            and not self._killed
            and not self.closed.done()
        )

    @property
    def _serving(self) -> bool:
        """Its process started, and it is neither finishing, killed nor closed."""
        return self._started and not self._finishing and not self._killed and not self.closed.done()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def send(self, name: str, args: tuple[Any, ...]) -> "asyncio.Future[Any]":
        self._seq += 1
        data = pickle.dumps((self._seq, name, args), protocol=pickle.HIGHEST_PROTOCOL)
        if not self._outbox:
            self._loop.call_soon(self._flush)
        self._outbox += (FRAME.pack(len(data)), data)
        future: asyncio.Future[Any] = self._loop.create_future()
        self.pending[self._seq] = future
        return future

    def _flush(self) -> None:
        try:
            if self._outbox and self._transport is not None and not self._transport.is_closing():
                self._transport.write(b"".join(self._outbox))
        finally:
            self._outbox.clear()

    def finish(self) -> None:
        """Send what is gathered and close the sending side: the process commits it all, answers, and
        ends."""
        self._finishing = True
        self._flush()
        if self._transport is not None and not self._transport.is_closing():
            self._transport.write_eof()

    def data_received(self, data: bytes) -> None:
        self.answers += 1
        if self.stalled:
            log.warning("the SQLite writer process (pid %s) answers again", self.pid)
            self.stalled, self._stalls = False, 0
        self._inbox += data
        messages, used = frames(self._inbox)
        del self._inbox[:used]
        for message in messages:
            if not self.ready.done():  # the first message: the process's start, or why it failed
                self._started = message is None
                self.ready.set_result(message)
                if self._started:
                    self._look_later()
                continue
            for seq, result, error in message:
                future = self.pending.pop(seq, None)
                if future is None or future.done():
                    continue
                if error is not None:
                    future.set_exception(error)
                else:
                    future.set_result(result)

    def _watch(self) -> None:
        """Every hang_timeout while the link serves: a process that has answered nothing since the
        last look, while writes waited on it all along, is hung (stopped, deadlocked), and would hold
        them and every later write without limit. It is killed: its unanswered writes are then
        settled, and another process started, as after any writer's death. (Finishing, stop's
        _finished watches it.) Nothing on the write path: one timer per hang_timeout.

        One busy with its storage (in uninterruptible I/O at the look, or having made read or write
        system calls since the last: a commit, or a replay of a batch, on a slow disk) is spared up to
        _STALL_LOOKS looks: a kill would lose the answers of writes it may commit, and may itself wait
        for that I/O. Meanwhile it takes no new writes (503), until it answers."""
        if not self._serving:
            return
        now = (self.answers, bool(self.pending))
        # A look far later than due: this process itself was stalled or paused (SIGTSTP, `docker
        # pause`, a debugger), its writer with it, and answers may sit unread: judge from here on.
        late = self._loop.time() - self._due > self._writer.hang_timeout / 2
        calls, (in_io, self._calls) = self._calls, _io_of(self.pid)
        if now[1] and self._seen == now and not late:
            made_calls = calls is not None and self._calls is not None and self._calls != calls
            if (in_io or made_calls) and self._stalls < _STALL_LOOKS:
                if not self.stalled:
                    log.warning("the SQLite writer process (pid %s) answered nothing for %g s while writes"
                                " waited on it, busy with its storage: new writes are refused until it"
                                " answers", self.pid, self._writer.hang_timeout)  # fmt: skip
                self.stalled = True
                self._stalls += 1
                self._look_later()
                return
            log.error("the SQLite writer process (pid %s) answered nothing for %g s while writes waited"
                      " on it (after %d look(s) spared while busy with its storage); killing it",
                      self.pid, self._writer.hang_timeout, self._stalls)  # fmt: skip
            self.kill()
            return
        self._seen = now
        self._look_later()

    def _look_later(self) -> None:
        self._due = self._loop.time() + self._writer.hang_timeout
        self._watchdog = self._loop.call_at(self._due, self._watch)

    def connection_lost(self, exc: Exception | None) -> None:
        self.stalled = False  # (a refusal now says "restarting")
        if self._watchdog is not None:
            self._watchdog.cancel()
        if not self.ready.done():
            self.ready.set_result(StoreUnavailable("the SQLite writer process ended before it started"))
        pending, self.pending = self.pending, {}
        self.exited = asyncio.ensure_future(_exit_of(self._process, self._writer.hang_timeout))
        self._writer._exiting(self.exited)
        if pending:
            self._writer._settle(self.exited, list(pending.values()))
        self.closed.set_result(None)
        if self._started:
            self._writer._lost(self)


async def _finished(link: _Link, grace: float) -> None:
    """The close of a link asked to finish, as long as its process keeps answering (a deep queue, a
    wait for a lock); one that answers nothing for `grace` (hung: stopped, deadlocked) is killed. One
    stuck in the kernel on a dead disk ends only once its I/O does."""
    while True:
        answers = link.answers
        # asyncio.wait, not a timeout around an await: that would cancel link.closed itself.
        await asyncio.wait((link.closed,), timeout=grace)
        if link.closed.done():
            return
        if link.answers == answers:
            break
    log.error("the SQLite writer process (pid %s) answered nothing for %g s after it was asked to stop;"
              " killing it", link.pid, grace)  # fmt: skip
    link.kill()
    await asyncio.wait((link.closed,))  # its socket closes as it ends


def _io_of(pid: int) -> tuple[bool, int | None]:
    """Whether the process is in uninterruptible sleep (waiting on its storage), and its read and
    write system calls so far (None: unknown), from /proc (Linux; elsewhere, False and None)."""
    stat, io = _proc(pid, "stat"), _proc(pid, "io")
    return (stat is not None and _state(stat) == b"D"), (None if io is None else _io_calls(io))


def _proc(pid: int, name: str) -> bytes | None:
    try:
        with open(f"/proc/{pid}/{name}", "rb") as file:
            return file.read()
    except OSError:
        return None


def _state(stat: bytes) -> bytes:
    """The state letter of a /proc/PID/stat line."""
    end = stat.rfind(b")")  # after the command's name, in parentheses, which may hold anything
    return stat[end + 2 : end + 3]


def _io_calls(io: bytes) -> int | None:
    """syscr + syscw of a /proc/PID/io file."""
    fields = dict(line.split(b": ", 1) for line in io.splitlines() if b": " in line)
    try:
        return int(fields[b"syscr"]) + int(fields[b"syscw"])
    except (KeyError, ValueError):
        return None


async def _exit_of(process: asyncio.subprocess.Process, grace: float) -> None:
    """The end of a process whose link closed. One that has not ended `grace` later (hung: stopped,
    deadlocked) is killed: then it commits nothing more. (One stuck in the kernel on a dead disk ends
    only once its I/O does.)"""
    try:
        async with asyncio.timeout(grace):
            await process.wait()
    except TimeoutError:
        log.error("the SQLite writer process (pid %s) has not ended %g s after its link closed;"
                  " killing it", process.pid, grace)  # fmt: skip
        with contextlib.suppress(ProcessLookupError):
            process.kill()
        await process.wait()


async def _fail_once(exited: "asyncio.Future[None]", unanswered: list["asyncio.Future[Any]"]) -> None:
    await asyncio.shield(exited)  # shared with _reap: a cancelled wait here must not cancel it
    for future in unanswered:
        if not future.done():
            future.set_exception(
                WriterLost("the store's writer ended before this write was confirmed; retry")
            )


def process_argv(module: str, config: str) -> list[str]:
    """How the server starts a writer process: this interpreter, `module`'s main, its settings. -P:
    the working directory is not put first on sys.path, so nothing there shadows a module."""
    return [sys.executable, "-P", "-m", module, config]
