"""Scenario 3: build a 100k-row WAL SQLite file and serve random point reads three ways.

`build_db(path)` is called by the orchestrator. Servers run as
`python apps_sqlite.py {direct|thread|aiosqlite} PORT DBPATH`:
  direct    - one sqlite3 connection used synchronously on the event loop;
  thread    - asyncio.to_thread with one connection per worker thread (thread-local);
  aiosqlite - one aiosqlite connection (its own thread), one execute_fetchall per request.
Each handler picks a random id from the list of all ids loaded at startup and returns the blob.
"""

from __future__ import annotations

import asyncio
import random
import sqlite3
import sys
import threading

from aiohttp import web
from common import SQLITE_BODY_BYTES, serve_aiohttp

SELECT = "SELECT body FROM completions WHERE id = ?"


def build_db(path: str, rows: int = 100_000, seed: int = 1234) -> None:
    """Create the table (id TEXT PRIMARY KEY, body BLOB) with `rows` rows, WAL mode, checkpointed."""
    rnd = random.Random(seed)
    conn = sqlite3.connect(path)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("CREATE TABLE completions (id TEXT PRIMARY KEY, body BLOB NOT NULL)")
        half = SQLITE_BODY_BYTES // 2

        def gen() -> object:
            for _ in range(rows):
                yield (f"chatcmpl-{rnd.getrandbits(96):024x}", rnd.randbytes(half).hex().encode())

        with conn:
            conn.executemany("INSERT INTO completions (id, body) VALUES (?, ?)", gen())  # type: ignore[arg-type]
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()


def time_point_reads(path: str, n: int = 20_000, seed: int = 7) -> dict[str, float]:
    """Mean and p99 µs of a bare random point read (no HTTP): how long the direct path blocks the loop."""
    import time

    ids, rnd, conn = _load_ids(path), random.Random(seed), _open(path)
    try:
        samples = []
        for _ in range(n):
            key = rnd.choice(ids)
            t0 = time.perf_counter_ns()
            conn.execute(SELECT, (key,)).fetchone()
            samples.append(time.perf_counter_ns() - t0)
    finally:
        conn.close()
    samples.sort()
    return {"reads": n, "mean_us": sum(samples) / n / 1000, "p99_us": samples[int(n * 0.99)] / 1000}


def _open(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, check_same_thread=False)
    conn.execute("PRAGMA query_only=ON")
    return conn


def _load_ids(path: str) -> list[str]:
    conn = sqlite3.connect(path)
    try:
        return [r[0] for r in conn.execute("SELECT id FROM completions")]
    finally:
        conn.close()


def _response(row: tuple[bytes] | None) -> web.Response:
    if row is None:
        return web.Response(status=404)
    return web.Response(body=row[0], content_type="application/json")


def run(kind: str, port: int, path: str) -> None:
    ids = _load_ids(path)
    choice = random.choice

    if kind == "direct":
        conn = _open(path)

        async def read(request: web.Request) -> web.Response:
            return _response(conn.execute(SELECT, (choice(ids),)).fetchone())

    elif kind == "thread":
        local = threading.local()

        def fetch(key: str) -> tuple[bytes] | None:
            conn = getattr(local, "conn", None)
            if conn is None:
                conn = local.conn = _open(path)
            row: tuple[bytes] | None = conn.execute(SELECT, (key,)).fetchone()
            return row

        async def read(request: web.Request) -> web.Response:
            return _response(await asyncio.to_thread(fetch, choice(ids)))

    elif kind == "aiosqlite":
        import aiosqlite

        holder: list[aiosqlite.Connection] = []

        async def read(request: web.Request) -> web.Response:
            rows = list(await holder[0].execute_fetchall(SELECT, (choice(ids),)))
            return _response((bytes(rows[0][0]),) if rows else None)

    else:
        raise SystemExit(f"unknown kind {kind!r}")

    async def make_app() -> web.Application:
        app = web.Application()
        if kind == "aiosqlite":
            import aiosqlite

            db = await aiosqlite.connect(path)
            await db.execute("PRAGMA query_only=ON")
            holder.append(db)

            async def close(app: web.Application) -> None:
                await db.close()

            app.on_cleanup.append(close)
        app.router.add_get("/read", read)
        return app

    serve_aiohttp(make_app, port)


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), sys.argv[3])
