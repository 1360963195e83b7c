"""In-process timing of storegate's SQLite list with one and two metadata filters on the cached 1M
database (bench/million/data/sqlite-1M.db, built by `bench/million/run`): the check behind the
"rarest filter first" change. Run: .venv/bin/python bench/million/two_filters.py"""

import asyncio
import shutil
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "src"))

import gen  # noqa: E402

from storegate.store import ListQuery  # noqa: E402
from storegate.store.sqlite import SQLiteStore  # noqa: E402

CASES = [{"user": gen.user(5), "env": "prod"}, {"user": "u-none", "env": "prod"}, {"user": gen.user(7)},
         {"batch": "7", "env": "prod"}]  # fmt: skip


async def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        db = Path(tmp) / "m.db"  # a copy: the cached database stays as built
        for suffix in ("", "-wal"):
            source = HERE / "data" / f"sqlite-1M.db{suffix}"
            if source.exists():
                shutil.copy(source, str(db) + suffix)
        store = SQLiteStore(str(db))
        await store.open()
        try:
            for metadata in CASES:
                q = ListQuery(project=gen.PROJECT, model=None, metadata=metadata, after=None, limit=20, order="desc")
                times = []
                for _ in range(21):
                    started = time.perf_counter()
                    page = await store.list(q)
                    times.append(time.perf_counter() - started)
                times.sort()
                print(f"{metadata}: {len(page.items)} items, p50 {times[10] * 1e3:.2f} ms, max {times[-1] * 1e3:.2f} ms")
        finally:
            await store.close()


if __name__ == "__main__":
    asyncio.run(main())
