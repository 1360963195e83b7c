"""Does storing a completion cost more as the SQLite store grows? (bench/analysis/2026-11-27T1327Z.md)

    .venv/bin/python bench/insert_growth.py [--blocks 24]

In one process, no server: stores bench/million's records (`gen.record`: what storegate stores for a
`store: true` call, ~1.5 KB body, three metadata tags) through `SQLiteStore.insert` on a fresh file,
64 at a time (as concurrent creates reach the writer), and prints the wall time and this process's
CPU per insert for every block of ~5,000. Nothing here is judged.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "src"), str(HERE / "million")]

import gen  # noqa: E402  (bench/million)

from storegate.store.sqlite import SQLiteStore  # noqa: E402

BATCH = 64
PER_BLOCK = 5000 // BATCH * BATCH


async def main(blocks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="storegate-growth-") as tmp:
        store = SQLiteStore(str(Path(tmp) / "growth.db"))
        await store.open()
        try:
            k = 0
            for _ in range(blocks):
                records = [gen.record(k + i) for i in range(PER_BLOCK)]  # made before the clock starts
                wall, cpu = time.perf_counter(), time.process_time()
                for at in range(0, PER_BLOCK, BATCH):
                    await asyncio.gather(*(store.insert(r) for r in records[at : at + BATCH]))
                k += PER_BLOCK
                wall_us = (time.perf_counter() - wall) * 1e6 / PER_BLOCK
                cpu_us = (time.process_time() - cpu) * 1e6 / PER_BLOCK
                print(f"rows {k:7,d}: {wall_us:5.0f} us wall, {cpu_us:5.0f} us CPU per insert", flush=True)
        finally:
            await store.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--blocks", type=int, default=24, help="blocks of ~5,000 inserts")
    asyncio.run(main(ap.parse_args().blocks))
