"""Two changes to SQLite's read path, measured in one process and not taken (why: analysis/2026-11-28T0430Z.md).

    .venv/bin/python bench/sqlite_variants.py [--size 10k|1M] [--rounds 12] [--calls 800]

On a private copy of bench/million's store (built first if missing), times the bench's list query
(`?metadata[env]=E&after={random id}&order=desc&limit=20`, as storegate's `list_sql` builds it, rows
unsorted as SQLiteStore reads them) three ways, interleaved, the order flipped every round:
- `now`: the store's own completion_tags table, the join by id (an index probe, then the row);
- `by id`: a copy of completion_tags rebuilt in key order (so the next one is not favoured by a
  fresher B-tree), the join by id;
- `by rowid`: that copy with each completion's rowid beside its id, the join by rowid (one probe
  of the table's own B-tree), the id still compared so a stale rowid can only drop a row.
Also a retrieve's statement (`SELECT id, body, metadata ... WHERE id = ? AND project = ?`, random ids)
through the standard library's sqlite3 and, when it is installed (`pip install apsw`; not a
dependency of storegate), through APSW with its own bundled SQLite, each on a statement it re-runs.
Every timing runs inside one read transaction per batch, as storegate shares one per event-loop
pass, after a first round (with 20x the retrieves) that fills both connections' page caches and is
not counted. Prints medians per call, and read system calls per call (/proc/self/io). Nothing here
is judged.
"""

from __future__ import annotations

import argparse
import random
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

import harness  # noqa: E402, F401  (puts bench/million and bench/stack on sys.path)
import stores  # noqa: E402

from storegate.store.base import ListQuery  # noqa: E402
from storegate.store.sql import filters, list_sql  # noqa: E402
from storegate.store.sqlite_writes import connect  # noqa: E402

GET = "SELECT id, body, metadata FROM completions WHERE id = ? AND project = ?"
_TAGS = "project TEXT NOT NULL, kind TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, id TEXT NOT NULL"
_KEY = "PRIMARY KEY (project, kind, name, value, id)"


def _variants(db: sqlite3.Connection) -> None:
    db.execute(f"CREATE TABLE tags_by_id ({_TAGS}, {_KEY}) WITHOUT ROWID")
    db.execute("INSERT INTO tags_by_id SELECT * FROM completion_tags ORDER BY 1, 2, 3, 4, 5")
    db.execute(f"CREATE TABLE tags_by_rowid ({_TAGS}, rid INTEGER NOT NULL, {_KEY}) WITHOUT ROWID")
    db.execute("INSERT INTO tags_by_rowid SELECT t.*, c.rowid FROM completion_tags t"
               " JOIN completions c ON c.id = t.id ORDER BY 1, 2, 3, 4, 5")  # fmt: skip


def _list_sqls(query: ListQuery) -> dict[str, tuple[str, list[object]]]:
    sql, params = list_sql(query, lambda _: "?", filters(query), sorted_rows=False)
    by_rowid = sql.replace("SELECT t0.id FROM completion_tags", "SELECT t0.rid, t0.id FROM tags_by_rowid")
    by_rowid = by_rowid.replace("ON c.id = w.id", "ON c.rowid = w.rid AND c.id = w.id")
    assert by_rowid != sql
    return {"now": (sql, params), "by id": (sql.replace("completion_tags t0", "tags_by_id t0"), params),
            "by rowid": (by_rowid, params)}  # fmt: skip


def _reads() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("syscr:"):
            return int(line.split()[1])
    return 0


def _timed(begin: Callable[[str], object], calls: list[Callable[[], object]]) -> tuple[float, float]:
    begin("BEGIN")
    reads, t = _reads(), time.perf_counter()
    for call in calls:
        call()
    seconds, reads = time.perf_counter() - t, _reads() - reads
    begin("COMMIT")
    return seconds / len(calls) * 1e6, reads / len(calls)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="10k", choices=["10k", "1M"])
    parser.add_argument("--rounds", type=int, default=12)
    parser.add_argument("--calls", type=int, default=800)
    args = parser.parse_args()
    n = 10_000 if args.size == "10k" else 1_000_000
    with tempfile.TemporaryDirectory(prefix="sqlite-variants-") as tmp:
        url, _ = stores.sqlite_copy(n, Path(tmp), print)
        path = url.removeprefix("sqlite:///")
        db = connect(path, 64 * 1024)
        _variants(db)
        stores.warm(Path(path))
        ids = [row[0] for row in db.execute("SELECT id FROM completions")]
        project = db.execute("SELECT project FROM completions LIMIT 1").fetchone()[0]
        rng = random.Random(20261128)
        try:
            import apsw  # type: ignore[import-not-found]

            other = apsw.Connection(path, flags=apsw.SQLITE_OPEN_READONLY)
            other.execute("PRAGMA cache_size = -65536")
            print(f"APSW {apsw.apsw_version()} (SQLite {apsw.sqlite_lib_version()}) beside sqlite3 "
                  f"(SQLite {sqlite3.sqlite_version})")  # fmt: skip
        except ImportError:
            other = None
            print("APSW is not installed: the retrieve is timed through sqlite3 only")
        times: dict[str, list[float]] = {}
        reads: dict[str, list[float]] = {}
        for r in range(-1, args.rounds):  # round -1 fills both connections' page caches; not counted
            envs = [rng.choice(["prod", "staging", "dev"]) for _ in range(args.calls)]
            queries = [
                ListQuery(project, None, {"env": env}, rng.choice(ids[len(ids) // 10 :]), 20, "desc")
                for env in envs
            ]
            sqls = [_list_sqls(q) for q in queries]
            gets = [(rng.choice(ids), project) for _ in range(args.calls if r >= 0 else 20 * args.calls)]
            cursor = db.cursor()
            runs: dict[str, tuple[Callable[[str], object], list[Callable[[], object]]]] = {
                name: (db.execute, [lambda s=s[name]: db.execute(*s).fetchall() for s in sqls])
                for name in ("now", "by id", "by rowid")
            }
            runs["get, sqlite3"] = (
                db.execute,
                [lambda g=g, c=cursor: c.execute(GET, g).fetchone() for g in gets],
            )
            if other is not None:
                held = other.cursor()
                runs["get, APSW"] = (
                    other.execute,
                    [lambda g=g, c=held: c.execute(GET, g).fetchone() for g in gets],
                )
            for name in list(runs)[:: 1 if r % 2 else -1]:
                us, per = _timed(*runs[name])
                if r < 0:
                    continue
                times.setdefault(name, []).append(us)
                reads.setdefault(name, []).append(per)
        for name, values in times.items():
            print(f"{name:>13}: {statistics.median(values):6.1f} us a call (min {min(values):.1f}),"
                  f" {statistics.median(reads[name]):.1f} read calls")  # fmt: skip
        for a, b in (("by id", "by rowid"), ("get, sqlite3", "get, APSW")):
            if a in times and b in times:
                ratios = sorted(y / x for x, y in zip(times[a], times[b], strict=True))
                print(f"{b} / {a}: median {statistics.median(ratios):.3f} ({ratios[0]:.3f}-{ratios[-1]:.3f})")
        db.close()


if __name__ == "__main__":
    main()
