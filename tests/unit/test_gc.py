"""`storegate serve` keeps the cycle collector off the request path (cli/main.py, `_settle_gc`)."""

import asyncio
import gc
import weakref
from collections.abc import Iterator
from typing import Any

import pytest
from aiohttp import web

from storegate.cli import main
from storegate.cli.main import GC_YOUNG_THRESHOLD, _settle_gc
from storegate.settings import from_sources


class Cycle:
    def __init__(self) -> None:
        self.me = self


@pytest.fixture
def gc_restored() -> Iterator[None]:
    before = gc.get_threshold()
    try:
        yield
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_settling_collects_startup_garbage_freezes_the_rest_and_raises_only_the_young_threshold(
    gc_restored: None,
) -> None:
    before = gc.get_threshold()
    startup_garbage = Cycle()
    collected = weakref.ref(startup_garbage)
    del startup_garbage
    live = Cycle()
    asyncio.run(_settle_gc(object()))
    assert collected() is None  # collected, not frozen
    assert gc.get_freeze_count() > 0 and gc.is_tracked(live)
    assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])


def test_cycles_made_after_settling_are_still_collected_automatically(gc_restored: None) -> None:
    asyncio.run(_settle_gc(object()))
    garbage = Cycle()
    collected = weakref.ref(garbage)
    del garbage
    kept = [[] for _ in range(GC_YOUNG_THRESHOLD + 1000)]  # new tracked objects: past the threshold
    assert collected() is None  # a young collection ran on its own
    del kept


def test_serve_settles_after_the_app_has_started(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    started: list[web.Application] = []
    monkeypatch.setattr(web, "run_app", lambda app, **_: started.append(app))
    settings = from_sources({"db": f"sqlite:///{tmp_path}/s.db", "backend_url": "http://127.0.0.1:9/v1"}, {})
    try:
        assert main.serve(settings) == 0
    finally:
        asyncio.get_event_loop_policy().get_event_loop().close()  # serve's own, never run here
        asyncio.set_event_loop(None)
    (app,) = started
    hooks = list(app.on_startup)
    assert hooks[-1] is _settle_gc and len(hooks) >= 2  # after the cleanup context's startup
