"""PostgreSQL's word that api_keys changed. A trigger (migration 0003) sends NOTIFY storegate_keys on
every change of a key's project, hash, rate or revocation, whoever makes it; each process keeps one
connection LISTENing, and counts what it hears into an epoch, so replicas can remember keys and still
refuse a revoked one on the next request. While that connection is down the epoch is None and nothing
is remembered: every request asks the database, as if there were no cache.
"""

import asyncio
import logging
from typing import Any

import asyncpg

CHANNEL = "storegate_keys"
_PING_EVERY = 5.0  # a silent half-open connection would hide notifications: prove it alive this often
CONNECTION_FAILURES = (  # what a broken or lost PostgreSQL connection raises (the store uses it too)
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)

log = logging.getLogger("storegate.store")


class KeyListener:
    def __init__(self, dsn: str) -> None:
        self._dsn = dsn
        self._heard = 0
        self._live = False
        self._went_live = False
        self._task: asyncio.Task[None] | None = None

    @property
    def epoch(self) -> int | None:
        return self._heard if self._live else None

    async def start(self) -> None:
        """Returns once listening (or after one failed try: the loop keeps trying in the background)."""
        first = asyncio.get_running_loop().create_future()
        self._task = asyncio.create_task(self._run(first))
        await first

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None
        self._live = False

    def _changed(self, *_: Any) -> None:
        self._heard += 1

    async def _run(self, first: "asyncio.Future[None]") -> None:
        delay = 0.1
        while True:
            self._went_live = False
            try:
                await self._listen(first)
            except CONNECTION_FAILURES as exc:
                log.warning("key-change listener: %s: %s; keys are looked up on every request meanwhile",
                            type(exc).__name__, exc)  # fmt: skip
            finally:
                self._live = False
                self._heard += 1  # whatever was heard before the gap may have missed a change
                if not first.done():
                    first.set_result(None)
            if self._went_live:  # a connection that worked starts the backoff over
                delay = 0.1
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

    async def _listen(self, first: "asyncio.Future[None]") -> None:
        conn = await asyncpg.connect(self._dsn, timeout=10)
        try:
            lost = asyncio.Event()
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(CHANNEL, self._changed)
            self._heard += 1
            self._live = self._went_live = True
            if not first.done():
                first.set_result(None)
            while not lost.is_set():
                try:
                    await asyncio.wait_for(lost.wait(), _PING_EVERY)
                except TimeoutError:
                    await conn.fetchval("SELECT 1", timeout=_PING_EVERY)
            raise ConnectionError("the listening connection was closed")
        finally:
            self._live = False
            conn.terminate()
