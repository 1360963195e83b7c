"""A/B a change: the working tree's storegate against a git revision's, side by side in one run.

    bench/ab                                  # HEAD vs the working tree: retrieve, healthz, create
    bench/ab --base 7ed8609 --rounds 7 create-store create-nostore
    bench/ab --store 1M list retrieve
    bench/ab --store pg-1M list retrieve      # on bench/million's PostgreSQL (a working copy of its 1M database)
    bench/ab stream-store stream-nostore      # 50-chunk streams: CPU per stream; TTFT p50 for p99
    bench/ab --new HEAD --new-serve-arg=--sqlite-cache-mib=16 mixed   # a setting, A/B'd on one revision

Two storegate servers run at once, one from `git archive <base>` (PYTHONPATH), one from the
working tree's src/, both on one copy of a bench/million store (the stored scenarios only read)
(or one working copy of a bench/million PostgreSQL database: `--store pg-10k|pg-1M`, stored
scenarios only; PostgreSQL's CPU per request is reported too: the whole cluster's, over the
processes alive at both ends of a run, so approximate) or each on a fresh SQLite file (creates), or each on its own copy of the store (`mixed`: the soak's
½ create store=true, ¼ list, ¼ retrieve, so reads follow commits), with one fake backend behind both. Every round runs each scenario against both, in
an order that flips per round, so a neighbour's noise lands on both sides alike. Reported per
scenario: req/s and storegate CPU per request (its process group's total, and all but the event
loop's thread, i.e. the SQLite writer process and the reader thread; none on PostgreSQL) for each side, medians over rounds, and the median
(min-max) of the per-round ratio new/base, and both sides' p99 latency (ms, median over rounds). The machine is shared: trust ratios, not absolutes, and
a ratio only when its min-max range is narrow.

This is the tool behind the A/B figures in bench/analysis/. It never changes src/ and starts only
its own processes (on 127.0.0.1 free ports), stopped by PID at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(HERE / "stack"), str(HERE / "million")]

import harness  # noqa: E402
import stores  # noqa: E402
from procs import CLK_TCK, Server, free_port, group_pids  # noqa: E402  (bench/stack)
from wrkrun import run_sse, run_wrk, write_lines  # noqa: E402

STORED = ("healthz", "retrieve", "list", "list_user", "messages")
CREATES = {"create-store": True, "create-nostore": False}
STREAMS = {"stream-store": True, "stream-nostore": False}  # CPU per stream, TTFT p50 in the p99 column
MIXED = "mixed"  # the soak's mix (harness.soak): reads that follow commits, as a storing server serves them


def _threads_cpu(pid: int) -> tuple[float, float]:
    """(whole process group, all but the event loop's thread) CPU seconds of a server: its threads and
    processes (storegate's SQLite writer is a process of its own)."""
    total = other = 0.0
    for member in group_pids(pid):
        try:
            tasks = list(Path(f"/proc/{member}/task").iterdir())
        except OSError:  # ended since it was listed
            continue
        for task in tasks:
            try:
                raw = (task / "stat").read_text()
            except OSError:
                continue
            f = raw[raw.rfind(")") + 2 :].split()
            secs = (int(f[11]) + int(f[12])) / CLK_TCK
            total += secs
            if int(task.name) != pid:
                other += secs
    return total, other


def _export(rev: str, into: Path) -> Path:
    into.mkdir(parents=True)
    archive = subprocess.run(["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive.stdout, check=True)
    return into / "src"


def _server(name: str, src: Path, db: str, backend: str, tmp: Path, extra: list[str]) -> Server:
    port = free_port()
    argv = [harness.PY, "-m", "storegate", "serve", "--host", harness.HOST, "--port", str(port), "--db", db,
            "--backend", backend, *extra]  # fmt: skip
    env = {"PYTHONPATH": str(src)}
    return Server(name=name, argv=argv, port=port, log=tmp / f"{name}.log", cwd=str(tmp), env=env)


def _lines(scenario: str, workload: stores.Workload | None) -> list[harness.Line]:
    if scenario in CREATES:
        store = CREATES[scenario]
        return [("POST", "/v1/chat/completions", harness.chat_body(store, k)) for k in range(3000 if store else 1)]
    assert workload is not None
    if scenario == MIXED:
        return harness.mixed_lines(workload)
    return workload.lines(scenario)


def _fmt(xs: list[float], digits: int = 0) -> str:
    return f"{statistics.median(xs):,.{digits}f}"


def main() -> int:
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so `finally` stops servers and PostgreSQL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenarios", nargs="*", default=["healthz", "retrieve", "create-store", "create-nostore"],
                    help=f"any of {', '.join(STORED + tuple(CREATES) + tuple(STREAMS) + (MIXED,))}")  # fmt: skip
    ap.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    ap.add_argument("--new", default=None, help="git revision for the new side (default: the working tree; "
                    "`--base HEAD --new HEAD` measures the tool's own A/A spread)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--conns", type=int, default=64)
    ap.add_argument("--seconds", type=int, default=3)
    ap.add_argument("--store", default="10k", choices=("10k", "1M", "pg-10k", "pg-1M"),
                    help="bench/million's store to copy: SQLite, or PostgreSQL (pg-*: stored scenarios only)")  # fmt: skip
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `storegate serve` argument (both)")
    ap.add_argument("--new-serve-arg", action="append", default=[],
                    help="extra `storegate serve` argument for the new side only (--new-serve-arg=--flag=value)")  # fmt: skip
    args = ap.parse_args()
    known = (*STORED, *CREATES, *STREAMS, MIXED)
    unknown = [s for s in args.scenarios if s not in known]
    if unknown:
        ap.error(f"unknown scenarios: {unknown}")
    if MIXED in args.scenarios and len(args.scenarios) > 1:  # its writes would change what the others read
        ap.error("mixed runs alone: each side writes into its store copy, which other scenarios would then read")
    stored = [s for s in args.scenarios if s in STORED]
    on_pg = args.store.startswith("pg-")
    if on_pg and len(stored) < len(args.scenarios):  # both sides share one database, which must stay as built
        ap.error("on PostgreSQL only the stored scenarios run: " + ", ".join(STORED))
    if on_pg and (reason := stores.Postgres.unavailable_reason()):
        ap.error(reason)
    n = {"10k": 10_000, "1M": 1_000_000}[args.store.removeprefix("pg-")]
    pg = stores.Postgres(harness.log) if on_pg else None

    tmp = Path(tempfile.mkdtemp(prefix="storegate-ab-"))
    servers: list[Server] = []
    try:
        sides = {"base": _export(args.base, tmp / "base"),
                 "new": _export(args.new, tmp / "new") if args.new else REPO / "src"}
        fake = harness.fake_server(tmp)
        servers.append(fake)
        fake.start()
        fake.wait_ready()
        backend = f"http://{harness.HOST}:{fake.port}/v1"
        workload = None
        mixed = MIXED in args.scenarios
        if stored or mixed:
            harness.log(f"copying bench/million's {args.store} store (bench/million builds it if missing)")
            workload = stores.Workload.make(n, writes_each=0)
        shared = None
        if pg is not None:
            pg.start()
            shared, _ = pg.copy(n)
        elif stored:  # the stored scenarios only read: both sides read one copy, one page cache
            (tmp / "db").mkdir()
            shared, _ = stores.sqlite_copy(n, tmp / "db", harness.log)
        by_side: dict[str, Server] = {}
        for side, src in sides.items():
            (tmp / side / "db").mkdir(parents=True)
            url = shared or f"sqlite:///{tmp / side / 'db' / 'ab.db'}"
            if mixed:  # each side writes: its own copy, read once into the OS's cache like the shared one
                url, _ = stores.sqlite_copy(n, tmp / side / "db", harness.log)
            extra = args.serve_arg + (args.new_serve_arg if side == "new" else [])
            by_side[side] = _server(side, src, url, backend, tmp, extra)
        for server in by_side.values():
            servers.append(server)
            server.start()
        for server in by_side.values():
            server.wait_ready()
            harness.wait_http(server.port, "/healthz", 30)
        files = {s: write_lines(tmp / f"{s}.txt", _lines(s, workload)) for s in args.scenarios if s not in STREAMS}
        for s in [*stored, *([MIXED] if mixed else [])]:  # every line once on both sides: no colder cache
            for server in by_side.values():
                run_wrk(f"http://{harness.HOST}:{server.port}", files[s], 8, 60, len(_lines(s, workload)), {})

        results: dict[str, dict[str, list[dict[str, float]]]] = {s: {"base": [], "new": []} for s in args.scenarios}
        for r in range(args.rounds):
            order = ["base", "new"] if r % 2 == 0 else ["new", "base"]
            for s in args.scenarios:
                for side in order:
                    server = by_side[side]
                    assert server.proc is not None
                    pid = server.proc.pid
                    cpu: dict[str, Callable[[], float]] = {
                        "all": lambda pid=pid: _threads_cpu(pid)[0],
                        "threads": lambda pid=pid: _threads_cpu(pid)[1],
                    }
                    if pg is not None:
                        cpu["db"] = pg.cpu_seconds
                    url = f"http://{harness.HOST}:{server.port}"
                    rec: dict[str, Any]
                    if s in STREAMS:
                        body = harness.chat_body(STREAMS[s], r, stream=True)
                        rec = run_sse(url + "/v1/chat/completions", body, args.conns, args.seconds, harness.CHUNKS,
                                      cpu, [server.pgid], tmp)  # fmt: skip
                        rec["rps"], rec["p99_us"] = rec["streams_per_s"], rec["ttft"]["p50_ms"] * 1000
                    else:
                        rec = run_wrk(url, files[s], args.conns, args.seconds, 0, cpu, [server.pgid])
                    if rec["errors"] or rec.get("bad_chunk_count"):
                        raise RuntimeError(f"{side} {s}: {rec['errors']} errors: {rec}")
                    per = rec["server_cpu_us_per_req"]
                    results[s][side].append({"rps": rec["rps"], "cpu": per["all"], "threads": per["threads"],
                                             "p99_ms": rec["p99_us"] / 1000, "db": per.get("db", 0.0)})  # fmt: skip
            harness.log(f"round {r + 1}/{args.rounds} done")

        new_args = f" with {' '.join(args.new_serve_arg)}" if args.new_serve_arg else ""
        print(f"\nbase {args.base} vs {args.new or 'the working tree'}{new_args}; c={args.conns}, {args.seconds} s runs, {args.rounds} rounds; "
              f"medians (CPU = storegate's, us per request; 'threads' = all but the event loop's thread)")  # fmt: skip
        print(f"{'scenario':<16}{'base req/s':>12}{'new req/s':>12}  {'new/base (min-max)':<22}"
              f"{'base cpu':>10}{'new cpu':>10}{'base thr':>10}{'new thr':>10}{'base p99':>10}{'new p99':>10}")  # fmt: skip
        if any(s in STREAMS for s in args.scenarios):
            print("(stream rows: req/s is streams/s, CPU is per 50-chunk stream, and the p99 columns hold TTFT p50)")
        for s in args.scenarios:
            b, w = results[s]["base"], results[s]["new"]
            ratios = [x["rps"] / y["rps"] for x, y in zip(w, b, strict=True)]
            span = f"{statistics.median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"
            print(f"{s:<16}{_fmt([x['rps'] for x in b]):>12}{_fmt([x['rps'] for x in w]):>12}  {span:<22}"
                  f"{_fmt([x['cpu'] for x in b]):>10}{_fmt([x['cpu'] for x in w]):>10}"
                  f"{_fmt([x['threads'] for x in b]):>10}{_fmt([x['threads'] for x in w]):>10}"
                  f"{_fmt([x['p99_ms'] for x in b], 1):>10}{_fmt([x['p99_ms'] for x in w], 1):>10}")  # fmt: skip
        if pg is not None:
            print("PostgreSQL's CPU per request (us), base / new: " + "; ".join(
                f"{s} {_fmt([x['db'] for x in results[s]['base']])} / {_fmt([x['db'] for x in results[s]['new']])}"
                for s in args.scenarios))  # fmt: skip
        return 0
    finally:
        for server in reversed(servers):
            server.stop()
        if pg is not None:
            pg.stop()  # drops the working copy
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
