"""`storegate serve` keeps the cycle collector off the request path (cli/main.py, `_settle_gc`)."""

import asyncio
import gc

from storegate.cli.main import GC_YOUNG_THRESHOLD, _settle_gc


def test_settling_freezes_startup_and_raises_only_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        asyncio.run(_settle_gc(object()))
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == (GC_YOUNG_THRESHOLD, before[1], before[2])
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)


def test_cyclic_garbage_made_after_settling_is_still_collected() -> None:
    before = gc.get_threshold()
    try:
        asyncio.run(_settle_gc(object()))

        class Node:
            def __init__(self) -> None:
                self.me = self

        Node()
        assert gc.collect() >= 1  # the frozen startup objects are skipped, not the new cycle
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
