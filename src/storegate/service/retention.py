"""Retention: delete completions older than N days, in the background, in bounded batches.

Each batch is one short write (one group commit on SQLite, one transaction on PostgreSQL), and the
loop yields between batches, so requests keep being served while a large backlog drains.
"""

import asyncio
import logging
import time
from collections.abc import Callable

from storegate.errors import StoregateError
from storegate.ids import id_floor
from storegate.store import Store

log = logging.getLogger("storegate.retention")
BATCH = 500
DAY = 86_400


class Retention:
    def __init__(self, store: Store, *, days: int | None, projects: dict[str, int], interval: float,
                 clock: Callable[[], float] = time.time) -> None:  # fmt: skip
        self._store = store
        self._days = days
        self._projects = projects
        self._interval = interval
        self._clock = clock

    @property
    def enabled(self) -> bool:
        return self._days is not None or bool(self._projects)

    async def run_once(self) -> int:
        """One pass over every rule; returns how many completions were removed."""
        now = self._clock()
        removed = 0
        for project, days in self._projects.items():
            removed += await self._drain(now, days, project, ())
        if self._days is not None:
            removed += await self._drain(now, self._days, None, tuple(self._projects))
        return removed

    async def _drain(self, now: float, days: int, project: str | None, exclude: tuple[str, ...]) -> int:
        # created < now - days  <=>  id < id_floor(ceil(now - days)), ids sorting by creation time
        before = id_floor(int(now) - days * DAY)
        removed = 0
        while True:
            batch = await self._store.purge(before, project, exclude, BATCH)
            removed += batch
            if batch < BATCH:
                return removed
            await asyncio.sleep(0)

    async def run_forever(self) -> None:
        while True:
            try:
                removed = await self.run_once()
            except StoregateError as exc:
                log.warning("retention pass failed, will retry: %s", exc.message)
            else:
                if removed:
                    log.info("retention removed %d completions", removed)
            await asyncio.sleep(self._interval)
