"""The million benchmark: storegate's retrieve and list at 10k and 1M stored completions, on SQLite and
PostgreSQL, over HTTP against a real `storegate serve`, with the list query's plans.

Run it with bench/million/run (see README.md). Steps:
  1. build (or reuse from data/) one database per store and size with the real Store.insert();
  2. record the list query's plans (SQLite EXPLAIN QUERY PLAN + VM steps, PostgreSQL EXPLAIN
     (ANALYZE, BUFFERS), custom and generic) and time the store calls in-process;
  3. start `storegate serve` on each database and drive it with wrk (rotate.lua cycles through a
     precomputed list of paths) at c=1 and c=16;
  4. write results/<UTC date>.json and RESULTS.md.
Every process it starts (storegate, wrk, PostgreSQL) is stopped by its own PID before it exits.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import random
import resource
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path[:0] = [str(HERE), str(REPO)]  # gen.py, and tests.pg (the test suite's PostgreSQL runner)

import asyncpg  # noqa: E402
import gen  # noqa: E402
import orjson  # noqa: E402
from tests.pg import PostgresServer, pg_bin  # noqa: E402

from storegate.settings import Settings  # noqa: E402
from storegate.store import ListQuery  # noqa: E402
from storegate.store.factory import make_store  # noqa: E402
from storegate.store.migrate import migrations  # noqa: E402
from storegate.store.sql import COUNT_CAP, count_sql, filters, list_sql  # noqa: E402
from storegate.store.sqlite import _rarest_first  # noqa: E402  (the walk storegate chooses)

DATA = HERE / "data"
RESULTS = HERE / "results"
PY = sys.executable
BACKEND = "http://127.0.0.1:9/v1"  # never contacted: reads do not reach a backend
CLK_TCK = os.sysconf("SC_CLK_TCK")
LIST = "/v1/chat/completions"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1000}k" if n % 1000 == 0 else str(n)


# ---------------------------------------------------------------- processes and CPU accounting


def _stat(pid: int | str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def group_cpu(pgid: int) -> float:
    """utime+stime in seconds over the live processes of one process group."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(entry)
            if f is not None and int(f[2]) == pgid:
                total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def children_cpu(parent: int) -> float:
    """utime+stime in seconds of a process and its live children (PostgreSQL backends call setsid,
    so they are not in the postmaster's process group)."""
    total = 0.0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat(entry)
            if f is not None and (int(entry) == parent or int(f[1]) == parent):
                total += (int(f[11]) + int(f[12])) / CLK_TCK
    return total


def machine_jiffies() -> tuple[int, int]:
    """(busy, total) jiffies from /proc/stat."""
    parts = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    idle = parts[3] + parts[4]
    return sum(parts) - idle, sum(parts)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class BenchPostgres(PostgresServer):
    """tests.pg.PostgresServer, but its cluster lives in data/pg and survives the run, so the loaded
    databases are reused; started and stopped with pg_ctl like the tests' server."""

    def __init__(self, bin_dir: Path, root: Path) -> None:
        super().__init__(bin_dir)
        shutil.rmtree(self.dir, ignore_errors=True)  # the parent made a temp dir we do not use
        self.dir = root
        self.data = root / "data"

    def start(self) -> BenchPostgres:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self._as_postgres:
            shutil.chown(self.dir, "postgres", "postgres")
        if not (self.data / "PG_VERSION").exists():
            out = self._run(
                str(self.bin / "initdb"),
                "-D",
                str(self.data),
                "-U",
                "postgres",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            )
            if out.returncode != 0:
                raise RuntimeError(f"initdb failed: {out.stdout}{out.stderr}")
        elif self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "status").returncode == 0:
            log("the bench's PostgreSQL cluster was left running by an earlier run: stopping it")
            self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")
        self.port = free_port()
        # Sized as one would size a server for 5 GB databases on this 24 GB machine (PostgreSQL's
        # guidance is about a quarter of RAM); the tests' throwaway servers keep the 128 MB default.
        # With 128 MB, a list at 1M read ~34 blocks from the OS per page (bench/RESULTS.md, 3c).
        options = (
            f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c max_connections=300"
            " -c shared_buffers=4GB -c effective_cache_size=16GB"
        )
        out = self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.dir / "log"),
            "-o",
            options,
            "-w",
            "-t",
            "60",
            "start",
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {out.stdout}{out.stderr}")
        return self

    @property
    def postmaster_pid(self) -> int:
        return int((self.data / "postmaster.pid").read_text().split()[0])

    def cpu_seconds(self) -> float:
        return children_cpu(self.postmaster_pid)

    def psql(self, sql: str, database: str = "postgres") -> str:
        out = self._run(
            str(self.bin / "psql"),
            "-h",
            "127.0.0.1",
            "-p",
            str(self.port),
            "-U",
            "postgres",
            "-d",
            database,
            "-XAtqc",
            sql,
        )
        if out.returncode != 0:
            raise RuntimeError(f"psql {sql!r}: {out.stderr}")
        return out.stdout.strip()

    def stop(self) -> None:  # keep the cluster (it is the cache); stop the server by its pid file
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")


class Server:
    """One `storegate serve` process, in its own session (pgid == pid), stopped by that PID."""

    def __init__(self, db_url: str, logfile: Path) -> None:
        self.db_url = db_url
        self.logfile = logfile
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> Server:
        argv = [
            PY,
            "-m",
            "storegate",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--db",
            self.db_url,
            "--backend",
            BACKEND,
        ]
        with self.logfile.open("ab") as out:
            self.proc = subprocess.Popen(
                argv,
                cwd=REPO,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, "STOREGATE_LOG_LEVEL": "WARNING"},
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"storegate exited {self.proc.returncode}: {self.logfile.read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=1) as resp:
                    if resp.status == 200:
                        return self
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"storegate not healthy after {timeout}s: {self.logfile.read_text()[-3000:]}")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def http_get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=30) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


# ---------------------------------------------------------------- building the databases


def sqlite_file(n: int) -> Path:
    return DATA / f"sqlite-{label(n)}.db"


def pg_database(n: int) -> str:
    return f"bench_{label(n).lower()}"


def marker(store: str, n: int) -> Path:
    return DATA / f"{store}-{label(n)}.json"


def cached(store: str, n: int, pg: BenchPostgres | None) -> dict[str, Any] | None:
    path = marker(store, n)
    if not path.exists():
        return None
    info: dict[str, Any] = json.loads(path.read_text())
    if info.get("gen_version") != gen.GEN_VERSION or info.get("seed") != gen.SEED or info.get("rows") != n:
        return None
    # Rows keep the layout of the schema they were written under (PostgreSQL's 0004 keeps bodies in
    # the row): a store built before a migration would be measured with the old layout. Markers
    # written before this was recorded were all built under three migrations.
    if info.get("migrations", 3) != len(migrations(store)):
        return None
    if store == "sqlite":
        if not sqlite_file(n).exists():
            return None
        with contextlib.closing(sqlite3.connect(f"file:{sqlite_file(n)}?mode=ro", uri=True)) as conn:
            last = conn.execute("SELECT id FROM completions ORDER BY id DESC LIMIT 1").fetchone()
    else:
        assert pg is not None
        if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{pg_database(n)}'") != "1":
            return None
        last = (pg.psql("SELECT max(id) FROM completions", pg_database(n)),)
    return info if last and last[0] == gen.completion_id(n - 1) else None


async def load(url: str, n: int, store_kind: str, chunk: int, concurrency: int) -> dict[str, Any]:
    """Insert records 0..n-1 through the real Store.insert(); returns timings."""
    store = make_store(Settings(db=url))
    await store.open()
    gen_s = 0.0
    t0 = time.perf_counter()
    last_report = t0
    done = 0

    def progress(count: int, final: bool = False) -> None:
        nonlocal last_report
        now = time.perf_counter()
        if final or (count < n and now - last_report >= 15):
            last_report = now
            log(f"  {store_kind} {label(n)}: {count:,}/{n:,} ({count / (now - t0):,.0f}/s)")

    try:
        if store_kind == "sqlite":
            # Two chunks in flight: the writer process commits one (group commits of up to 512) while
            # the event loop builds the next.
            pending: asyncio.Future[Any] | None = None
            for start in range(0, n, chunk):
                tg = time.perf_counter()
                records = [gen.record(i) for i in range(start, min(n, start + chunk))]
                gen_s += time.perf_counter() - tg
                batch = asyncio.gather(*(store.insert(r) for r in records))
                if pending is not None:
                    await pending
                    done = start
                    progress(done)
                pending = batch
            if pending is not None:
                await pending
        else:
            indices = iter(range(n))  # shared by the workers: each index is taken once

            async def worker() -> None:
                nonlocal gen_s, done
                for i in indices:
                    tg = time.perf_counter()
                    record = gen.record(i)
                    gen_s += time.perf_counter() - tg
                    await store.insert(record)
                    done += 1
                    if done % 10_000 == 0:
                        progress(done)

            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - t0
        progress(n, final=True)
    finally:
        await store.close()
    return {
        "rows": n,
        "seconds": round(elapsed, 2),
        "rows_per_s": round(n / elapsed),
        "generate_seconds": round(gen_s, 2),
        "chunk": chunk if store_kind == "sqlite" else None,
        "concurrency": concurrency if store_kind == "postgres" else None,
    }


def build(store_kind: str, n: int, pg: BenchPostgres | None, args: argparse.Namespace) -> dict[str, Any]:
    info = None if args.rebuild else cached(store_kind, n, pg)
    if info is not None:
        log(f"{store_kind} {label(n)}: cached ({info['load']['rows_per_s']:,} rows/s when built)")
        info["cached"] = True
        return info
    log(f"{store_kind} {label(n)}: building with Store.insert()")
    DATA.mkdir(parents=True, exist_ok=True)  # a fresh clone has no cache folder yet
    marker(store_kind, n).unlink(missing_ok=True)
    if store_kind == "sqlite":
        path = sqlite_file(n)
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
        stats = asyncio.run(load(f"sqlite:///{path}", n, "sqlite", args.sqlite_chunk, 0))
        t = time.perf_counter()
        with contextlib.closing(sqlite3.connect(path)) as conn:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        stats["checkpoint_seconds"] = round(time.perf_counter() - t, 2)
        stats["file_bytes"] = path.stat().st_size
    else:
        assert pg is not None
        db = pg_database(n)
        pg.psql(f"DROP DATABASE IF EXISTS {db}")
        pg.psql(f"CREATE DATABASE {db}")
        if args.pg_load_synchronous_commit != "on":  # the load's sessions only; reset below
            pg.psql(f"ALTER DATABASE {db} SET synchronous_commit = {args.pg_load_synchronous_commit}")
        stats = asyncio.run(load(pg.url(db), n, "postgres", 0, args.pg_concurrency))
        stats["synchronous_commit"] = args.pg_load_synchronous_commit
        pg.psql(f"ALTER DATABASE {db} RESET synchronous_commit")
        # What autovacuum would do soon after such a load: statistics for the planner, and the
        # visibility map that lets index-only scans skip the heap.
        t = time.perf_counter()
        pg.psql("VACUUM (ANALYZE)", db)
        stats["vacuum_analyze_seconds"] = round(time.perf_counter() - t, 2)
        stats["database_bytes"] = int(pg.psql(f"SELECT pg_database_size('{db}')"))
    log(f"{store_kind} {label(n)}: loaded {n:,} in {stats['seconds']} s = {stats['rows_per_s']:,} rows/s")
    info = {
        "gen_version": gen.GEN_VERSION,
        "seed": gen.SEED,
        "rows": n,
        "migrations": len(migrations(store_kind)),
        "load": stats,
        "storegate_commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "built_at": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    marker(store_kind, n).write_text(json.dumps(info, indent=1))
    info["cached"] = False
    return info


# ---------------------------------------------------------------- queries


def list_query(**metadata: str) -> ListQuery:
    return ListQuery(project=gen.PROJECT, model=None, metadata=metadata, after=None, limit=20, order="desc")


# The queries whose plans are recorded (and timed in-process). list_user_env is the HTTP two-filter
# scenario; list_batch_env has the same shape with the selective key sorting first.
PLAN_QUERIES: dict[str, ListQuery] = {
    "list_user": list_query(user="u123"),
    "list_user_env": list_query(user="u123", env="prod"),
    "list_env": list_query(env="prod"),
    "list_batch_env": list_query(batch="7", env="prod"),
    "list_all": list_query(),
    # The worst case of the two-filter shape: no completion matches both, so an ordered walk of the
    # first filter's range finds nothing to stop it (plans only: at 1M it is slow by design).
    "list_env_nomatch": list_query(user="u-none", env="prod"),
}

SCENARIOS = {
    "healthz": "GET /healthz (HTTP floor, no store)",
    "retrieve": "GET /v1/chat/completions/{random id}",
    "list_user": "list ?metadata[user]=uN&order=desc&limit=20 (1000 users)",
    "list_user_env": "list ?metadata[user]=uN&metadata[env]=E&order=desc&limit=20",
    "list_env": "list ?metadata[env]=E&order=desc&limit=20 (3 values: full pages at any size)",
}


def scenario_paths(name: str, n: int, count: int = 3000) -> list[str]:
    rng = random.Random(f"{gen.SEED}/{name}/{n}")
    if name == "healthz":
        return ["/healthz"]
    if name == "retrieve":
        return [f"{LIST}/{gen.completion_id(rng.randrange(n))}" for _ in range(count)]
    if name == "list_user":
        users = list(range(gen.USERS))
        rng.shuffle(users)
        return [f"{LIST}?metadata[user]={gen.user(u)}&order=desc&limit=20" for u in users]
    if name == "list_user_env":
        return [
            f"{LIST}?metadata[user]={gen.user(rng.randrange(gen.USERS))}&metadata[env]={rng.choice(gen.ENVS)}"
            "&order=desc&limit=20"
            for _ in range(count)
        ]
    if name == "list_env":
        return [f"{LIST}?metadata[env]={env}&order=desc&limit=20" for env in gen.ENVS]
    raise KeyError(name)


def _getter(cid: str) -> Callable[[Any], Any]:
    return lambda store: store.get(gen.PROJECT, cid)


def _lister(q: ListQuery) -> Callable[[Any], Any]:
    return lambda store: store.list(q)


def direct_calls(name: str, n: int) -> list[Callable[[Any], Any]]:
    """The store calls behind a scenario's paths (same rotation), for in-process timing."""
    rng = random.Random(f"{gen.SEED}/{name}/{n}")
    if name == "retrieve":
        ids = [gen.completion_id(rng.randrange(n)) for _ in range(500)]
        return [_getter(cid) for cid in ids]
    if name == "list_user":
        users = list(range(gen.USERS))
        rng.shuffle(users)
        return [_lister(list_query(user=gen.user(u))) for u in users[:500]]
    if name == "list_user_env":
        qs = [
            list_query(user=gen.user(rng.randrange(gen.USERS)), env=rng.choice(gen.ENVS)) for _ in range(500)
        ]
        return [_lister(q) for q in qs]
    if name == "list_env":
        return [_lister(list_query(env=e)) for e in gen.ENVS]
    if name == "list_batch_env":
        qs = [
            list_query(batch=str(rng.randrange(max(1, n // gen.BATCH_SIZE))), env=rng.choice(gen.ENVS))
            for _ in range(500)
        ]
        return [_lister(q) for q in qs]
    if name == "list_all":
        return [_lister(list_query())]
    raise KeyError(name)


DIRECT = ["retrieve", "list_user", "list_user_env", "list_env", "list_batch_env", "list_all"]


async def time_direct(url: str, n: int, budget_s: float) -> dict[str, Any]:
    """Each scenario's store calls, in this process, one at a time: the store's share of a request."""
    store = make_store(Settings(db=url))
    await store.open()
    out: dict[str, Any] = {}
    try:
        for name in DIRECT:
            calls = direct_calls(name, n)
            for call in calls[:20]:  # warm caches and prepared statements
                await call(store)
            samples: list[float] = []
            items = 0
            t_end = time.perf_counter() + budget_s
            k = 0
            while (time.perf_counter() < t_end or len(samples) < 20) and len(samples) < 2000:
                call = calls[k % len(calls)]
                k += 1
                t = time.perf_counter()
                result = await call(store)
                samples.append(time.perf_counter() - t)
                items += len(result.items) if hasattr(result, "items") else int(result is not None)
            samples.sort()
            out[name] = {
                "calls": len(samples),
                "p50_us": round(samples[len(samples) // 2] * 1e6, 1),
                "p99_us": round(samples[int(len(samples) * 0.99)] * 1e6, 1),
                "mean_us": round(statistics.fmean(samples) * 1e6, 1),
                "items_per_call": round(items / len(samples), 2),
            }
    finally:
        await store.close()
    if url.startswith("postgres"):
        await _pg_raw(url, n, budget_s, out)
    return out


_PG_GET = "SELECT id, body, metadata FROM completions WHERE id = $1 AND project = $2"  # as PostgresStore.get


async def _pg_raw(url: str, n: int, budget_s: float, out: dict[str, Any]) -> None:
    """The retrieve and list SQL on one held asyncpg connection: the store call minus the pool's
    acquire and release."""
    conn = await asyncpg.connect(url)
    try:
        for name in ("retrieve", "list_user"):
            rng = random.Random(f"{gen.SEED}/{name}/{n}")
            if name == "retrieve":
                stmts = [(_PG_GET, [gen.completion_id(rng.randrange(n)), gen.PROJECT]) for _ in range(500)]
            else:
                users = list(range(gen.USERS))
                rng.shuffle(users)
                stmts = [
                    list_sql(q, lambda k: f"${k}", filters(q, str.encode))
                    for u in users[:500]
                    for q in (list_query(user=gen.user(u)),)
                ]
            for sql, params in stmts[:20]:
                await conn.fetch(sql, *params)
            samples: list[float] = []
            t_end = time.perf_counter() + budget_s
            while (time.perf_counter() < t_end or len(samples) < 20) and len(samples) < 2000:
                sql, params = stmts[len(samples) % len(stmts)]
                t = time.perf_counter()
                await conn.fetch(sql, *params)
                samples.append(time.perf_counter() - t)
            samples.sort()
            out[name]["raw_p50_us"] = round(samples[len(samples) // 2] * 1e6, 1)
    finally:
        await conn.close()


def wait_quiet(max_wait: float, threshold_pct: float = 40.0) -> dict[str, float]:
    """Wait (up to max_wait s) until the whole machine is below threshold_pct of one core over 2 s:
    other jobs share this VM. Returns the wait and the last busy reading."""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        a = machine_jiffies()
        time.sleep(2)
        b = machine_jiffies()
        busy = 100 * (b[0] - a[0]) / CLK_TCK / 2
        if busy < threshold_pct or time.monotonic() - t0 >= max_wait:
            return {"waited_s": round(time.monotonic() - t0, 1), "busy_pct": round(busy, 1)}


# ---------------------------------------------------------------- plans


def _t0_filter(walk: list[Any]) -> tuple[Any, ...] | None:
    """The filter that drives the query (t0): the first of the walk storegate chose."""
    return tuple(walk[0]) if walk else None


def sqlite_plans(n: int) -> dict[str, Any]:
    out: dict[str, Any] = {}
    with contextlib.closing(sqlite3.connect(f"file:{sqlite_file(n)}?mode=ro", uri=True)) as conn:
        for name, q in PLAN_QUERIES.items():
            walk = _rarest_first(conn, q.project, filters(q))
            sql, params = list_sql(q, lambda _: "?", walk)
            rows = conn.execute("EXPLAIN QUERY PLAN " + sql, params).fetchall()
            depth: dict[int, int] = {0: -1}
            plan = []
            for node, parent, _, detail in rows:
                depth[node] = depth.get(parent, -1) + 1
                plan.append("  " * depth[node] + detail)
            steps = 0

            def count() -> int:
                nonlocal steps
                steps += 1
                return 0

            conn.set_progress_handler(count, 1)
            result = conn.execute(sql, params).fetchall()
            conn.set_progress_handler(None, 1)
            t = time.perf_counter()  # timed again without the handler, on a warm cache
            conn.execute(sql, params).fetchall()
            elapsed = time.perf_counter() - t
            walked = _walked(conn, q, walk, result)
            out[name] = {
                "sql": sql,
                "params": params,
                "plan": plan,
                "vm_steps": steps,
                "rows": len(result),
                "ms": round(elapsed * 1e3, 3),
                "t0_entries_walked": walked,
            }
    return out


def _walked(conn: sqlite3.Connection, q: ListQuery, walk: list[Any], result: list[Any]) -> int | None:
    """How many entries of the driving (t0) index range an ordered walk must visit to produce this
    page: all of them if the page is short, else those from the newest down to the last row read."""
    t0 = _t0_filter(walk)
    where = "project = ? AND kind = ? AND name = ? AND value = ?"
    params: list[Any] = [q.project, *t0] if t0 else []
    table = "completion_tags" if t0 else "completions"
    if not t0:
        where, params = "project = ?", [q.project]
    if len(result) <= q.limit:
        return int(conn.execute(f"SELECT count(*) FROM {table} WHERE {where}", params).fetchone()[0])
    last = result[-1][0]
    return int(
        conn.execute(f"SELECT count(*) FROM {table} WHERE {where} AND id >= ?", [*params, last]).fetchone()[0]
    )


def _literal(value: Any) -> str:
    if isinstance(value, bytes):
        return f"'\\x{value.hex()}'::bytea"
    if isinstance(value, int):
        return str(value)
    return "'" + str(value).replace("'", "''") + "'"


async def pg_plans(url: str) -> dict[str, Any]:
    """Each query PREPAREd as the server's asyncpg prepares it, then EXPLAIN (ANALYZE, BUFFERS) EXECUTE
    with the plan forced custom (planned for these values) and generic (for any values), and with
    PostgreSQL's own choice after 10 executions over varied values (`auto`: what a pooled connection
    ends up running; pg_prepared_statements counts which kind it used)."""
    out: dict[str, Any] = {}
    conn = await asyncpg.connect(url)
    try:
        for name, q in PLAN_QUERIES.items():
            sql, params = list_sql(q, lambda k: f"${k}", await _pg_walk(conn, q))
            entry: dict[str, Any] = {
                "sql": sql,
                "params": [p.decode() if isinstance(p, bytes) else p for p in params],
            }
            args = ", ".join(_literal(p) for p in params)
            await conn.execute("PREPARE q AS " + sql)
            for mode in ("custom", "generic"):
                await conn.execute(f"SET plan_cache_mode = force_{mode}_plan")
                await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q({args})")  # warm the cache
                rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q({args})")
                entry[mode] = [r[0] for r in rows]
            await conn.execute("RESET plan_cache_mode")
            await conn.execute("DEALLOCATE q")
            await conn.execute("PREPARE q AS " + sql)
            for k in range(10):  # as a pooled connection sees it: the same statement, varied values
                variant = ListQuery(
                    **{
                        **_asdict(q),
                        "metadata": {
                            key: (f"u{k}" if key == "user" else str(k) if key == "batch" else value)
                            for key, value in q.metadata.items()
                        },
                    }
                )
                _, vparams = list_sql(variant, lambda k: f"${k}", await _pg_walk(conn, variant))
                await conn.fetch(f"EXECUTE q({', '.join(_literal(p) for p in vparams)})")
            rows = await conn.fetch(f"EXPLAIN (ANALYZE, BUFFERS) EXECUTE q({args})")
            entry["auto"] = [r[0] for r in rows]
            counts = await conn.fetchrow(
                "SELECT generic_plans, custom_plans FROM pg_prepared_statements WHERE name = 'q'"
            )
            assert counts is not None
            entry["auto_counts"] = {"generic_plans": counts[0], "custom_plans": counts[1]}
            await conn.execute("DEALLOCATE q")
            out[name] = entry
    finally:
        await conn.close()
    return out


async def _pg_walk(conn: Any, q: ListQuery) -> list[Any]:
    """The walk PostgresStore.list chooses: rarest filter first by counts capped at COUNT_CAP."""
    walk = filters(q, str.encode)
    if len(walk) < 2:
        return walk
    counts = [await conn.fetchval(count_sql(lambda n: f"${n}"), q.project, *f, COUNT_CAP) for f in walk]
    return [f for _, f in sorted(zip(counts, walk, strict=True), key=lambda pair: pair[0])]


def _asdict(q: ListQuery) -> dict[str, Any]:
    return {f: getattr(q, f) for f in ListQuery.__dataclass_fields__}


# ---------------------------------------------------------------- HTTP load


def run_wrk(
    url: str, paths_file: Path, conns: int, seconds: float, cpu: dict[str, Callable[[], float]]
) -> dict[str, Any]:
    argv = [
        "wrk",
        "-t1",
        f"-c{conns}",
        f"-d{max(1, round(seconds))}s",
        "--timeout",
        "10s",
        "-s",
        str(HERE / "rotate.lua"),
        url,
        "--",
        str(paths_file),
    ]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = {k: f() for k, f in cpu.items()}
    m0 = machine_jiffies()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    m1 = machine_jiffies()
    cpu1 = {k: f() for k, f in cpu.items()}
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON:")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed rc={out.returncode}: {out.stdout[-800:]} {out.stderr[-800:]}")
    rec: dict[str, Any] = json.loads(line[5:])
    secs = rec["duration_us"] / 1e6
    reqs = max(rec["requests"], 1)
    res: dict[str, Any] = {
        "conns": conns,
        "requests": rec["requests"],
        "rps": round(rec["requests"] / secs, 1),
        "p50_ms": rec["p50_us"] / 1e3,
        "p90_ms": rec["p90_us"] / 1e3,
        "p99_ms": rec["p99_us"] / 1e3,
        "max_ms": rec["max_us"] / 1e3,
        "bytes_per_req": round(rec["bytes"] / reqs),
        "errors": sum(rec[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout")),
        "err_status": rec["err_status"],
    }
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    ours = wrk_cpu
    for k in cpu:
        used = cpu1[k] - cpu0[k]
        ours += used
        res[f"{k}_cpu_pct"] = round(100 * used / secs, 1)
        res[f"{k}_cpu_us_per_req"] = round(1e6 * used / reqs, 1)
    res["wrk_cpu_pct"] = round(100 * wrk_cpu / secs, 1)
    busy = (m1[0] - m0[0]) / CLK_TCK
    res["machine_busy_pct"] = round(100 * busy / secs, 1)  # of one core; 200 = both cores
    res["others_cpu_pct"] = round(max(0.0, 100 * (busy - ours) / secs), 1)  # processes not ours
    return res


def page_facts(base: str, paths: list[str], sample: int = 40) -> dict[str, Any]:
    """Items per page and bytes per response over a sample of a scenario's paths (all must be 200)."""
    items, sizes = [], []
    for path in paths[:sample]:
        status, body = http_get(base + path)
        if status != 200:
            raise RuntimeError(f"GET {path} -> {status}: {body[:300]!r}")
        sizes.append(len(body))
        doc = orjson.loads(body)
        items.append(len(doc["data"]) if doc.get("object") == "list" else 1)
    return {"items_per_page": round(statistics.fmean(items), 2), "bytes": round(statistics.fmean(sizes))}


def validate_against_spec(base: str, n: int) -> str:
    """Check one retrieve and one list response against OpenAI's spec (the tests' validator)."""
    try:
        from tests.spec import SPEC_PATH, spec

        if not SPEC_PATH.exists():
            return f"skipped: {SPEC_PATH} not found"
        checks = [
            ("getChatCompletion", scenario_paths("retrieve", n)[0]),
            ("listChatCompletions", scenario_paths("list_user", n)[0]),
        ]
        for op, path in checks:
            status, body = http_get(base + path)
            spec().validate_response(op, status, orjson.loads(body))
        return "ok: a retrieve and a list response validate against the OpenAI spec"
    except Exception as exc:  # report, do not abort the benchmark
        return f"FAILED: {type(exc).__name__}: {str(exc)[:300]}"


NOMATCH_PATH = f"{LIST}?metadata[user]=u-none&metadata[env]=prod&order=desc&limit=20"


def stall_probe(base: str) -> dict[str, Any]:
    """One list whose two filters match nothing (the longest walk, see list_env_nomatch), and a
    /healthz sent while it runs: does one slow list hold up every other request?"""
    import threading

    timing: dict[str, float] = {}

    def slow() -> None:
        t = time.perf_counter()
        status, _ = http_get(base + NOMATCH_PATH)
        timing["list_ms"] = (time.perf_counter() - t) * 1e3
        timing["list_status"] = status

    http_get(base + "/healthz")
    thread = threading.Thread(target=slow)
    thread.start()
    time.sleep(0.02)
    t = time.perf_counter()
    http_get(base + "/healthz")
    timing["healthz_during_ms"] = (time.perf_counter() - t) * 1e3
    thread.join()
    return {"path": NOMATCH_PATH, **{k: round(v, 2) for k, v in timing.items()}}


def db_files(store_kind: str, n: int, pg: BenchPostgres | None) -> list[Path]:
    if store_kind == "sqlite":
        return [p for p in (sqlite_file(n), Path(f"{sqlite_file(n)}-wal")) if p.exists()]
    assert pg is not None
    oid = pg.psql(f"SELECT oid FROM pg_database WHERE datname = '{pg_database(n)}'")
    return sorted(p for p in (pg.data / "base" / oid).iterdir() if p.is_file())


def resident(files: list[Path]) -> dict[str, Any]:
    """How much of the files is in the OS page cache (util-linux fincore)."""
    if shutil.which("fincore") is None:
        return {}
    out = subprocess.run(
        ["fincore", "--bytes", "--noheadings", "--raw", "--output", "RES,SIZE", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
    )
    res = size = 0
    for line in out.stdout.splitlines():
        parts = line.split()
        if len(parts) == 2:
            res, size = res + int(parts[0]), size + int(parts[1])
    return {
        "resident_bytes": res,
        "bytes": size,
        "resident_pct": round(100 * res / size, 1) if size else None,
    }


def warm_page_cache(files: list[Path]) -> float:
    """Read the database files once, so the runs measure a server whose data is in RAM (this VM pages
    out page-cache pages left untouched for ~60 s, so a database built earlier is mostly on disk)."""
    t = time.perf_counter()
    for path in files:
        with path.open("rb", buffering=0) as f:
            while f.read(16 << 20):
                pass
    return round(time.perf_counter() - t, 1)


def prepare(store_kind: str, n: int, pg: BenchPostgres | None, args: argparse.Namespace) -> dict[str, Any]:
    """Before a database's measurements: let other jobs calm down, then pull the database into the
    page cache (plans, in-process timings and HTTP runs all follow within the next minutes)."""
    quiet = wait_quiet(args.quiet_wait)
    log(
        f"{store_kind} {label(n)}: machine busy {quiet['busy_pct']:.0f}% of a core after waiting {quiet['waited_s']} s"
    )
    files = db_files(store_kind, n, pg)
    cache: dict[str, Any] = {"before": resident(files)}
    if args.warm_cache:
        cache["warm_seconds"] = warm_page_cache(files)
        cache["after_warming"] = resident(files)
    log(
        f"{store_kind} {label(n)}: page cache held {cache['before'].get('resident_pct')}% of the database"
        + (
            f", {cache['after_warming'].get('resident_pct')}% after reading it ({cache['warm_seconds']} s)"
            if args.warm_cache
            else ""
        )
    )
    return {"quiet": quiet, "page_cache": cache, "files": files}


def http_bench(
    store_kind: str,
    n: int,
    url: str,
    pg: BenchPostgres | None,
    args: argparse.Namespace,
    tmp: Path,
    prep: dict[str, Any],
) -> dict[str, Any]:
    files, cache = prep["files"], prep["page_cache"]
    server = Server(url, tmp / f"server-{store_kind}-{label(n)}.log").start()
    log(f"{store_kind} {label(n)}: storegate serve pid {server.pid} on {server.url}")
    out: dict[str, Any] = {
        "server_pid": server.pid,
        "quiet": prep["quiet"],
        "page_cache": cache,
        "pages": {},
        "runs": [],
    }
    try:
        out["spec_check"] = validate_against_spec(server.url, n)
        cpu: dict[str, Callable[[], float]] = {"server": lambda: group_cpu(server.pid)}
        if pg is not None:
            cpu["pg"] = pg.cpu_seconds
        for name in args.scenarios:
            paths = scenario_paths(name, n)
            pfile = tmp / f"paths-{name}-{label(n)}.txt"
            pfile.write_text("\n".join(paths) + "\n")
            if name != "healthz":
                out["pages"][name] = page_facts(server.url, paths)
            run_wrk(server.url, pfile, 16, args.warmup, cpu)  # warm-up, discarded
            for conns in args.conns:
                res = run_wrk(server.url, pfile, conns, args.duration, cpu)
                res["scenario"] = name
                out["runs"].append(res)
                pg_part = f", pg {res['pg_cpu_us_per_req']:.0f} µs/req" if pg is not None else ""
                log(
                    f"  {name:14s} c={conns:<2d} {res['rps']:8,.0f} req/s  p50 {res['p50_ms']:7.2f} ms"
                    f"  p99 {res['p99_ms']:7.2f} ms  server {res['server_cpu_us_per_req']:.0f} µs/req{pg_part}"
                    f"  errors {res['errors']}  others {res['others_cpu_pct']:.0f}%"
                )
        out["stall_probe"] = stall_probe(server.url)
        log(
            f"  stall probe: no-match two-filter list {out['stall_probe']['list_ms']:.0f} ms; /healthz sent"
            f" meanwhile {out['stall_probe']['healthz_during_ms']:.1f} ms"
        )
        cache["after_runs"] = resident(files)
    finally:
        server.stop()
        out["server_exit"] = server.proc.returncode if server.proc else None
    return out


# ---------------------------------------------------------------- machine facts


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip()
    except OSError as exc:
        return f"unavailable ({exc})"


def machine_facts(pg: BenchPostgres | None) -> dict[str, Any]:
    import aiohttp
    import uvloop

    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        platform.processor(),
    )
    mem = int(Path("/proc/meminfo").read_text().split()[1]) / 1024**2
    facts: dict[str, Any] = {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(mem, 1),
        "kernel": platform.release(),
        "loadavg_start": Path("/proc/loadavg").read_text().split()[:3],
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "asyncpg": asyncpg.__version__,
        "aiohttp": aiohttp.__version__,
        "uvloop": getattr(uvloop, "__version__", "?"),
        "orjson": orjson.__version__,
        "wrk": _cmd(["wrk", "-v"]).splitlines()[0],
        "git_commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "git_dirty_src": [
            ln for ln in _cmd(["git", "-C", str(REPO), "status", "--short", "src"]).splitlines()
        ],
    }
    damon = Path("/sys/kernel/mm/damon/admin/kdamonds/0")
    if (damon / "state").exists():
        ctx = damon / "contexts/0"

        def read(rel: str) -> str:
            try:
                return (ctx / rel).read_text().strip()
            except OSError:
                return "?"

        facts["damon"] = {
            "state": (damon / "state").read_text().strip(),
            "action": read("schemes/0/action"),
            "min_age_aggregations": read("schemes/0/access_pattern/age/min"),
            "aggregation_us": read("monitoring_attrs/intervals/aggr_us"),
            "quota_bytes_per_reset": read("schemes/0/quotas/bytes"),
        }
    if pg is not None:
        facts["postgresql"] = pg.psql("SHOW server_version")
        facts["pg_settings"] = dict(
            ln.split("|", 1)
            for ln in pg.psql(
                "SELECT name, current_setting(name) FROM pg_settings WHERE name IN ('shared_buffers',"
                " 'work_mem', 'effective_cache_size', 'random_page_cost', 'synchronous_commit', 'fsync',"
                " 'max_connections', 'jit') ORDER BY name"
            ).splitlines()
        )
    return facts


# ---------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="10000,1000000", help="completions per database (comma list)")
    parser.add_argument("--stores", default="sqlite,postgres")
    parser.add_argument("--scenarios", default=",".join(SCENARIOS))
    parser.add_argument("--conns", default="1,16")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per measured wrk run")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of c=16 warm-up per scenario")
    parser.add_argument("--direct-budget", type=float, default=1.0, help="seconds per in-process timing")
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=60.0,
        help="before each server's runs, wait up to this long for other jobs to calm down",
    )
    parser.add_argument(
        "--no-warm-cache",
        dest="warm_cache",
        action="store_false",
        help="do not read the database files into the page cache before each server's runs",
    )
    parser.add_argument("--sqlite-chunk", type=int, default=1000, help="inserts per asyncio.gather (SQLite)")
    parser.add_argument("--pg-concurrency", type=int, default=16, help="concurrent inserts (PostgreSQL)")
    parser.add_argument(
        "--pg-load-synchronous-commit",
        default="on",
        choices=["on", "off"],
        help="synchronous_commit for the load's sessions only (reset afterwards)",
    )
    parser.add_argument("--rebuild", action="store_true", help="ignore the cached databases in data/")
    parser.add_argument("--build-only", action="store_true")
    parser.add_argument("--out", help="results JSON (default results/<UTC date>.json)")
    parser.add_argument("--report", help="only rewrite RESULTS.md from this results JSON")
    args = parser.parse_args()
    if args.report:
        import report

        report.write(json.loads(Path(args.report).read_text()), Path(args.report))
        return 0
    args.sizes = [int(s) for s in args.sizes.split(",")]
    args.stores = args.stores.split(",")
    args.scenarios = args.scenarios.split(",")
    args.conns = [int(c) for c in args.conns.split(",")]
    if shutil.which("wrk") is None and not args.build_only:
        print("wrk not found (apt-get install -y wrk)", file=sys.stderr)
        return 2

    started = time.time()
    DATA.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=RESULTS))  # wrk path lists and server logs
    pg: BenchPostgres | None = None
    ok = False
    results: dict[str, Any] = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": os.environ.get("MILLION_BENCH_COMMAND", "bench/million/run " + " ".join(sys.argv[1:])),
        "config": {k: v for k, v in vars(args).items() if k not in ("report", "out")},
        "scenarios": SCENARIOS,
        "loads": {},
        "plans": {},
        "direct": {},
        "http": {},
    }
    try:
        if "postgres" in args.stores:
            bin_dir = pg_bin()
            if bin_dir is None:
                raise RuntimeError("PostgreSQL binaries not found (set STOREGATE_PG_BIN)")
            pg = BenchPostgres(bin_dir, DATA / "pg").start()
            log(f"PostgreSQL on port {pg.port}, postmaster pid {pg.postmaster_pid}")
        results["machine"] = machine_facts(pg)
        urls: dict[tuple[str, int], str] = {}
        for store_kind in args.stores:
            for n in args.sizes:
                info = build(store_kind, n, pg if store_kind == "postgres" else None, args)
                results["loads"].setdefault(store_kind, {})[label(n)] = info
                if store_kind == "sqlite":
                    urls[store_kind, n] = f"sqlite:///{sqlite_file(n)}"
                else:
                    assert pg is not None
                    urls[store_kind, n] = pg.url(pg_database(n))
        if args.build_only:
            ok = True  # nothing failed: no temp folder to keep
            return 0
        for store_kind in args.stores:
            for n in args.sizes:
                url = urls[store_kind, n]
                store_pg = pg if store_kind == "postgres" else None
                prep = prepare(store_kind, n, store_pg, args)
                log(f"{store_kind} {label(n)}: plans and in-process timings")
                results["plans"].setdefault(store_kind, {})[label(n)] = (
                    sqlite_plans(n) if store_kind == "sqlite" else asyncio.run(pg_plans(url))
                )
                results["direct"].setdefault(store_kind, {})[label(n)] = asyncio.run(
                    time_direct(url, n, args.direct_budget)
                )
                results["http"].setdefault(store_kind, {})[label(n)] = http_bench(
                    store_kind, n, url, store_pg, args, tmp, prep
                )
        ok = True
    finally:
        if pg is not None:
            with contextlib.suppress(Exception):
                results.setdefault("machine", {})["pg_database_bytes"] = {
                    label(n): int(pg.psql(f"SELECT pg_database_size('{pg_database(n)}')"))
                    for n in args.sizes
                    if pg.psql(f"SELECT 1 FROM pg_database WHERE datname = '{pg_database(n)}'")
                }
            pg.stop()
            log(f"PostgreSQL stopped (postmaster pid file gone: {not (pg.data / 'postmaster.pid').exists()})")
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            log(f"kept {tmp} (server logs, path lists) for a look at what failed")
    results["seconds"] = round(time.time() - started)
    import report

    out = Path(args.out) if args.out else RESULTS / f"{results['date'][:10]}.json"
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    report.write(results, out)
    log(f"wrote {out} and {HERE / 'RESULTS.md'} ({results['seconds']} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
