"""Stack benchmark for storegate's hot path: server framework, proxy HTTP client, SQLite reads.

Usage (from the repo root): bench/stack/run [--rounds N] [--duration S] [--duration-c1 S]
Writes bench/stack/results/<UTC date>.json and bench/stack/RESULTS.md. Everything listens on
127.0.0.1, every load run is a time-bounded `wrk -t1`, and only processes started here are stopped.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import json
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from procs import machine_cpu
from report import write_markdown
from scenario import log, run_scenario
from scenarios import framework_scenario, proxy_scenario, sqlite_scenario

HERE = Path(__file__).resolve().parent
PY = sys.executable
LIBS = [
    "aiohttp",
    "orjson",
    "uvloop",
    "starlette",
    "uvicorn",
    "httptools",
    "granian",
    "httpx",
    "httpcore",
    "anyio",
    "aiosqlite",
]


def wait_for_quiet(limit_pct: float = 30.0, max_wait: float = 15.0) -> dict[str, float]:
    """Before starting, wait (bounded) until other processes use < limit_pct of a core."""
    t0 = time.monotonic()
    busy = 0.0
    while True:
        a = machine_cpu()
        time.sleep(1.0)
        b = machine_cpu()
        total = sum(b.values()) - sum(a.values()) or 1
        busy = 100.0 * (os.cpu_count() or 1) * sum(b[k] - a[k] for k in ("user", "nice", "system")) / total
        if busy < limit_pct or time.monotonic() - t0 > max_wait:
            break
        log(f"machine busy ({busy:.0f}% of a core used by others); waiting for quiet")
    return {"waited_s": round(time.monotonic() - t0, 1), "foreign_cpu_pct_at_start": round(busy, 1)}


def machine_meta() -> dict[str, Any]:
    from aiohttp import http_parser

    versions: dict[str, str | None] = {}
    for lib in LIBS:
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    wrk = subprocess.run(["wrk", "--version"], capture_output=True, text=True, check=False)
    cpu = next(
        (
            ln.split(":", 1)[1].strip()
            for ln in Path("/proc/cpuinfo").read_text().splitlines()
            if ln.startswith("model name")
        ),
        "?",
    )
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_model": cpu,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_impl": platform.python_implementation(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": (wrk.stdout + wrk.stderr).splitlines()[0].strip(),
        "libraries": versions,
        "aiohttp_c_parser": http_parser.HttpRequestParser.__module__.endswith("_http_parser"),
        "loadavg_start": os.getloadavg(),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--duration", type=int, default=5, help="seconds per wrk run at c=64 (wrk takes whole seconds)"
    )
    ap.add_argument("--duration-c1", type=int, default=2, help="seconds per wrk run at c=1")
    ap.add_argument("--warmup", type=int, default=1, help="seconds of discarded warm-up per target")
    ap.add_argument("--only", choices=["framework", "proxy", "sqlite"], action="append")
    ap.add_argument("--no-write", action="store_true", help="do not write results/ or RESULTS.md")
    args = ap.parse_args()

    quiet = wait_for_quiet()
    started = datetime.now(UTC)
    t0 = time.monotonic()
    meta = machine_meta() | quiet
    results_dir = HERE / "results"
    results_dir.mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=results_dir))
    builders = {"framework": framework_scenario, "proxy": proxy_scenario, "sqlite": sqlite_scenario}
    scenarios = []
    try:
        for key in args.only or list(builders):
            sc = builders[key](tmp)
            scenarios.append(run_scenario(sc, tmp, args.rounds, args.duration, args.duration_c1, args.warmup))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    meta["loadavg_end"] = os.getloadavg()
    data = {
        "date_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "command": os.environ.get("STACK_BENCH_COMMAND") or " ".join([Path(PY).name, *sys.argv]),
        "python_argv": sys.argv,
        "config": {
            "rounds": args.rounds,
            "duration_c64_s": args.duration,
            "duration_c1_s": args.duration_c1,
            "warmup_s": args.warmup,
            "wrk_threads": 1,
        },
        "machine": meta,
        "elapsed_s": round(time.monotonic() - t0, 1),
        "scenarios": scenarios,
    }
    text = json.dumps(data, indent=1)
    if args.no_write:
        print(text)
        return
    out = results_dir / f"{started.strftime('%Y-%m-%d')}.json"
    out.write_text(text + "\n")
    md_path = HERE / "RESULTS.md"
    write_markdown(data, md_path, out.relative_to(HERE))
    log(f"wrote {out} and {md_path} in {data['elapsed_s']}s")


if __name__ == "__main__":
    main()
