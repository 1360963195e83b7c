"""Stores of 10k and 1M completions for the stored-completion scenarios, from bench/million's cache.

bench/million builds each database once with storegate's own Store.insert() (records from its
gen.py) and caches it in bench/million/data/. We reuse that cache through bench/million's own code
(million_bench.build: reused when its marker matches, else built, which takes minutes at 1M) and
never change it: the update and delete scenarios write, so every run serves a working copy
(SQLite: a file copy in our tmp dir; PostgreSQL: CREATE DATABASE ... TEMPLATE, dropped afterwards).
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import million_bench as mb  # bench/million (on sys.path via harness)
import orjson

gen = mb.gen
LIST = "/v1/chat/completions"


def label(n: int) -> str:
    return mb.label(n)


def _build_args() -> argparse.Namespace:
    return argparse.Namespace(
        rebuild=False, sqlite_chunk=1000, pg_concurrency=16, pg_load_synchronous_commit="on"
    )


def cached_pct(path: Path | str) -> float | None:
    """How much of a file the OS's page cache holds, in percent (util-linux's fincore), or None."""
    try:
        out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES,SIZE", str(path)],
                             capture_output=True, text=True, timeout=30, check=True).stdout.split()  # fmt: skip
        return round(100 * int(out[0]) / max(1, int(out[1])), 1)
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def _drop_from_cache(path: Path) -> None:
    with path.open("rb") as f:
        os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def warm(path: Path) -> None:
    """Read a store file through the OS's page cache (~1 s for 5.6 GB when it is all there).

    This VM gives clean page cache back to its host while most of its memory is free: measured with
    nothing running, a 5.6 GB file read at 15:55:34 went from 5.57 to 5.10 GB resident in 100 s
    (MemFree 17 GB). A run at 1M then reads rows from disk depending on how long ago the store was
    last read whole, which made list@1M cost 400 us in one run and 570 in the next on the same
    code. Each run of a SQLite store's target is preceded by this, and the share still resident at
    the end of the run is recorded with it."""
    with path.open("rb") as f:
        while f.read(1 << 20):
            pass


def sqlite_copy(n: int, tmp: Path, log: Any) -> tuple[str, dict[str, Any]]:
    """A private copy of bench/million's SQLite store of n completions (built first if missing).

    The source's pages are then dropped from the OS's page cache (nothing reads it again in this
    run) and the copy is read once (`warm`)."""
    t0 = time.monotonic()
    info = mb.build("sqlite", n, None, _build_args())
    built_s = time.monotonic() - t0
    src = mb.sqlite_file(n)
    dst = tmp / f"sqlite-{label(n)}-{int(time.time() * 1000) % 10**8}.db"
    t1 = time.monotonic()
    shutil.copyfile(src, dst)
    wal = Path(f"{src}-wal")
    if wal.exists() and wal.stat().st_size > 0:
        shutil.copyfile(wal, Path(f"{dst}-wal"))
    copy_s = time.monotonic() - t1
    _drop_from_cache(Path(src))
    warm(dst)
    cached = cached_pct(dst)
    log(f"sqlite {label(n)}: working copy {dst.name} ({dst.stat().st_size / 1e6:,.0f} MB) in {copy_s:.1f}s,"
        f" {cached}% of it in the OS's page cache")  # fmt: skip
    return f"sqlite:///{dst}", {"cached": info.get("cached"), "built_at": info.get("built_at"),
                                "prepare_s": round(built_s, 1), "copy_s": round(copy_s, 1),
                                "bytes": dst.stat().st_size, "path": str(dst), "cached_pct": cached}  # fmt: skip


def remove_sqlite(url: str) -> None:
    path = url.removeprefix("sqlite:///")
    for suffix in ("", "-wal", "-shm"):
        Path(path + suffix).unlink(missing_ok=True)


class Postgres:
    """bench/million's PostgreSQL cluster (bench/million/data/pg), started and stopped by us only when
    nobody else is running it: if its postmaster is up, another job (bench/million) owns it."""

    def __init__(self, log: Any) -> None:
        self.log = log
        self.pg: mb.BenchPostgres | None = None
        self.copies: list[str] = []

    @staticmethod
    def unavailable_reason() -> str | None:
        bin_dir = mb.pg_bin()
        if bin_dir is None:
            return "PostgreSQL binaries not found (set STOREGATE_PG_BIN)"
        data = mb.DATA / "pg" / "data"
        pid_file = data / "postmaster.pid"
        if pid_file.exists():
            try:
                pid = int(pid_file.read_text().split()[0])
                Path(f"/proc/{pid}").stat()
                return f"bench/million's PostgreSQL cluster is running (postmaster pid {pid}): another job owns it"
            except (OSError, ValueError, IndexError):
                pass  # a stale pid file: pg_ctl start copes
        return None

    def start(self) -> None:
        bin_dir = mb.pg_bin()
        assert bin_dir is not None
        self.pg = mb.BenchPostgres(bin_dir, mb.DATA / "pg").start()
        self.log(f"PostgreSQL (bench/million's cluster) on port {self.pg.port}, pid {self.pg.postmaster_pid}")

    def cpu_seconds(self) -> float:
        assert self.pg is not None
        return self.pg.cpu_seconds()

    def copy(self, n: int) -> tuple[str, dict[str, Any]]:
        assert self.pg is not None
        t0 = time.monotonic()
        info = mb.build("postgres", n, self.pg, _build_args())
        built_s = time.monotonic() - t0
        name = f"sgbench_{label(n).lower()}_{int(time.time()) % 10**6}"
        t1 = time.monotonic()
        self._psql(f"CREATE DATABASE {name} TEMPLATE {mb.pg_database(n)} STRATEGY FILE_COPY")
        self.copies.append(name)
        copy_s = time.monotonic() - t1
        self.log(f"postgres {label(n)}: working copy {name} in {copy_s:.1f}s")
        return self.pg.url(name), {"cached": info.get("cached"), "built_at": info.get("built_at"),
                                   "prepare_s": round(built_s, 1), "copy_s": round(copy_s, 1), "database": name}  # fmt: skip

    def _psql(self, sql: str, timeout: float = 1800) -> str:
        assert self.pg is not None
        argv = [str(self.pg.bin / "psql"), "-h", "127.0.0.1", "-p", str(self.pg.port), "-U", "postgres",
                "-d", "postgres", "-XAtqc", sql]  # fmt: skip
        if self.pg._as_postgres:
            argv = ["runuser", "-u", "postgres", "--", *argv]
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {out.stderr}")
        return out.stdout.strip()

    def version(self) -> str | None:
        if not self.pg:
            return None
        return f"{self._psql('SHOW server_version')}, shared_buffers {self._psql('SHOW shared_buffers')}"

    def stop(self) -> None:
        if self.pg is None:
            return
        for name in self.copies:
            try:
                self._psql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
            except Exception as exc:  # keep stopping
                self.log(f"could not drop {name}: {exc}")
        self.copies.clear()
        self.pg.stop()
        self.log("PostgreSQL stopped")
        self.pg = None


@dataclass
class Workload:
    """Request lines for one store of n completions. Reads, updates and deletes use disjoint ids, so
    no read ever meets a deleted completion and every update and delete gets an id of its own."""

    n: int
    reads: list[int] = field(default_factory=list)
    updates: list[int] = field(default_factory=list)
    deletes: list[int] = field(default_factory=list)
    probes: list[int] = field(default_factory=list)

    @classmethod
    def make(cls, n: int, writes_each: int, reads: int = 3000) -> Workload:
        rng = random.Random(f"storegate-bench/{n}")
        # i >= 200: a desc page after it is full (each env holds ~1/3 of the rows); n-1 stays (it is
        # the newest id, which bench/million's cache check looks for; our copies do not need it).
        pool = list(range(200, n - 1))
        rng.shuffle(pool)
        need = reads + 2 * writes_each + 4
        if need > len(pool):
            raise ValueError(f"store of {n} too small for {reads} reads and 2x{writes_each} writes")
        w = cls(n)
        w.reads = pool[:reads]
        w.updates = pool[reads : reads + writes_each]
        w.deletes = pool[reads + writes_each : reads + 2 * writes_each]
        w.probes = pool[reads + 2 * writes_each : need]
        return w

    def lines(self, scenario: str) -> list[tuple[str, str, bytes | None]]:
        if scenario == "healthz":
            return [("GET", "/healthz", None)]
        if scenario == "retrieve":
            return [("GET", f"{LIST}/{gen.completion_id(i)}", None) for i in self.reads]
        if scenario == "messages":
            return [("GET", f"{LIST}/{gen.completion_id(i)}/messages", None) for i in self.reads]
        if scenario == "list":
            out = []
            for i in self.reads:
                a = gen.attributes(i)
                out.append(
                    ("GET", f"{LIST}?metadata[env]={a['env']}&after={a['id']}&order=desc&limit=20", None)
                )
            return out
        if scenario == "list_user":
            users = list(range(gen.USERS))
            random.Random(f"storegate-bench/users/{self.n}").shuffle(users)
            return [("GET", f"{LIST}?metadata[user]={gen.user(u)}&order=desc&limit=20", None) for u in users]
        if scenario == "update":
            return [self.update_line(i, k) for k, i in enumerate(self.updates)]
        if scenario == "delete":
            return [("DELETE", f"{LIST}/{gen.completion_id(i)}", None) for i in self.deletes]
        raise KeyError(scenario)

    @staticmethod
    def update_line(i: int, k: int) -> tuple[str, str, bytes | None]:
        """Same filterable metadata as before (lists keep their shape) plus a new key, so every update
        is a real durable write."""
        a = gen.attributes(i)
        body = orjson.dumps(
            {"metadata": {"user": a["user"], "env": a["env"], "batch": a["batch"], "rev": str(k)}}
        )
        return ("POST", f"{LIST}/{a['id']}", body)

    def probe_line(self, scenario: str) -> tuple[str, str, bytes | None]:
        """A request like the scenario's, on an id none of its lines use (probes of writes consume)."""
        if scenario == "update":
            return self.update_line(self.probes[0], -1)
        if scenario == "delete":
            return ("DELETE", f"{LIST}/{gen.completion_id(self.probes[1])}", None)
        return self.lines(scenario)[0]


SCENARIOS = {
    "healthz": "GET /healthz: the bare fixed-body handler on the same server (framework floor)",
    "retrieve": "GET /v1/chat/completions/{id}, random ids",
    "list": "list 20 by one metadata filter: ?metadata[env]=E&after={random id}&order=desc&limit=20 (full pages)",
    "list_user": "list ?metadata[user]=uN&order=desc&limit=20, first page (1000 users; ~10 items at 10k)",
    "messages": "GET /v1/chat/completions/{id}/messages, random ids",
    "update": "POST /v1/chat/completions/{id} {metadata}, a distinct id per request (count-bounded)",
    "delete": "DELETE /v1/chat/completions/{id}, a distinct id per request (count-bounded)",
}


def _list_query(path: str) -> Any:
    """The ListQuery storegate builds for one of our `list` paths (one metadata filter + cursor)."""
    from urllib.parse import parse_qsl, urlsplit

    from storegate.store import ListQuery

    args = dict(parse_qsl(urlsplit(path).query))
    return ListQuery(project=gen.PROJECT, model=None, metadata={"env": args["metadata[env]"]}, after=args["after"],
                     limit=int(args["limit"]), order=args["order"])  # fmt: skip


def _summary_us(samples: list[float]) -> dict[str, float]:
    samples = sorted(samples)
    return {"p50_us": round(samples[len(samples) // 2] * 1e6, 1), "mean_us": round(sum(samples) / len(samples) * 1e6, 1),
            "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1), "n": len(samples)}  # fmt: skip


def list_evidence(kind: str, urls: dict[str, str], workloads: dict[str, Workload], per_batch: int = 100,
                  rounds: int = 6) -> dict[str, Any]:  # fmt: skip
    """The `list` scenario's query outside HTTP, on the same working copies: the exact SQL storegate
    runs (storegate.store.sql.list_sql), its plan, and its time in this process, one query at a time
    over the scenario's paths, in batches alternating between the store sizes (so that a noisy
    neighbour hits both alike). Tells whether a list costs more at 1M than at 10k because of the
    query itself (plan, VM steps, time) or around it."""
    from storegate.store.sql import filters, list_sql

    queries = {lab: [_list_query(p) for _, p, _ in w.lines("list")] for lab, w in workloads.items()}
    out: dict[str, Any] = {}
    if kind == "sqlite":
        import sqlite3

        variants = {"default": None}
        conns: dict[tuple[str, str], sqlite3.Connection] = {}
        # as SQLiteStore runs it: the page's rows sorted here, not in SQLite (see list_sql)
        stmts = {lab: [list_sql(q, lambda _: "?", filters(q), sorted_rows=False) for q in qs]
                 for lab, qs in queries.items()}  # fmt: skip
        desc = {lab: qs[0].order == "desc" for lab, qs in queries.items()}  # one order per workload
        try:
            for lab, url in urls.items():
                path = url.removeprefix("sqlite:///")
                for var, pragma in variants.items():
                    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
                    if pragma:
                        conn.execute(pragma)
                    conns[lab, var] = conn
                conn = conns[lab, "default"]
                sql, params = stmts[lab][0]
                steps = 0

                def count() -> int:
                    nonlocal steps
                    steps += 1
                    return 0

                conn.set_progress_handler(count, 1)
                for st, pa in stmts[lab][:50]:
                    conn.execute(st, pa).fetchall()
                conn.set_progress_handler(None, 1)
                out[lab] = {"sql": sql, "params": params,
                            "plan": [r[3] for r in conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()],
                            "vm_steps_per_query": round(steps / min(50, len(stmts[lab])))}  # fmt: skip
            times: dict[tuple[str, str], list[float]] = {k: [] for k in conns}
            for rnd in range(rounds + 1):  # round 0 warms the caches and is not kept
                for (lab, var), conn in conns.items():
                    batch = stmts[lab][(rnd * per_batch) % len(stmts[lab]) :][:per_batch]
                    for st, pa in batch:
                        t = time.perf_counter()
                        conn.execute(st, pa).fetchall().sort(key=lambda r: r[0], reverse=desc[lab])
                        if rnd:
                            times[lab, var].append(time.perf_counter() - t)
            for (lab, var), ts in times.items():
                out[lab]["timing" if var == "default" else f"timing_{var}"] = _summary_us(ts)
        finally:
            for conn in conns.values():
                conn.close()
        return out
    import asyncio

    import asyncpg

    async def pg() -> dict[str, Any]:
        conns = {lab: await asyncpg.connect(url) for lab, url in urls.items()}
        try:
            stmts = {
                lab: [list_sql(q, lambda n: f"${n}", filters(q, str.encode)) for q in qs]
                for lab, qs in queries.items()
            }
            for lab, conn in conns.items():
                sql, params = stmts[lab][0]
                out[lab] = {"sql": sql, "params": [p.decode() if isinstance(p, bytes) else p for p in params]}
                for mode in ("custom", "generic"):
                    await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                    await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
                    rows = await conn.fetch("EXPLAIN (ANALYZE, BUFFERS) " + sql, *params)
                    out[lab][f"plan_{mode}"] = [r[0] for r in rows]
                await conn.execute("RESET plan_cache_mode")
            # auto: PostgreSQL's own choice for a prepared statement (asyncpg prepares and caches each
            # statement, as the server's pool does): 5 custom plans, then generic if not estimated costlier.
            # generic: a what-if, measured here only: the same statements with plan_cache_mode forced.
            for mode in ("auto", "generic"):
                if mode == "generic":
                    for conn in conns.values():
                        await conn.execute("SET plan_cache_mode = force_generic_plan")
                times: dict[str, list[float]] = {lab: [] for lab in conns}
                blocks0 = {lab: await _blocks(conn) for lab, conn in conns.items()}
                for rnd in range(rounds + 1):
                    for lab, conn in conns.items():
                        for st, pa in stmts[lab][(rnd * per_batch) % len(stmts[lab]) :][:per_batch]:
                            t = time.perf_counter()
                            await conn.fetch(st, *pa)
                            if rnd:
                                times[lab].append(time.perf_counter() - t)
                blocks1 = {lab: await _blocks(conn) for lab, conn in conns.items()}
                for lab, ts in times.items():
                    out[lab]["timing" if mode == "auto" else "timing_forced_generic"] = _summary_us(ts)
                    if mode == "auto":
                        queries_run = (rounds + 1) * per_batch
                        out[lab]["blocks_per_query"] = {k: round((blocks1[lab][k] - blocks0[lab][k]) / queries_run, 1)
                                                        for k in ("read", "hit")}  # fmt: skip
                        row = await conns[lab].fetchrow(
                            "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE statement = $1",
                            stmts[lab][0][0],
                        )
                        out[lab]["auto_plans"] = dict(row) if row else None
            return out
        finally:
            for conn in conns.values():
                await conn.close()

    async def _blocks(conn: Any) -> dict[str, int]:
        """This database's shared-buffer hits and reads (blocks PostgreSQL had to fetch from the OS),
        after flushing this backend's pending statistics."""
        await conn.execute("SELECT pg_stat_force_next_flush()")
        await conn.execute("SELECT 1")  # a transaction end: the flush happens here
        row = await conn.fetchrow(
            "SELECT blks_read, blks_hit FROM pg_stat_database WHERE datname = current_database()"
        )
        return {"read": int(row[0]), "hit": int(row[1])}

    return asyncio.run(pg())
