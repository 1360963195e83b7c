"""storegate's performance harness: storegate with storage on and durable, against a fast fake
backend and LiteLLM's proxy, on this machine, in one run. Run it with bench/run (see README.md).

Scenarios (each with throughput and p50/p99 at 64 and 1 connections, rounds interleaved, ratios
taken per round against the same round's baseline, the runs of a judged pair back to back, medians
reported):
  floor   - wrk's ceiling (a raw uvloop fixed response) and storegate's bare GET /healthz;
  create  - non-streamed create: direct to the fake backend, storegate store=false, store=true
            (SQLite, storegate's defaults: synchronous=FULL), LiteLLM proxy (stores nothing);
  stream  - 50-chunk streams (10 ms apart): time to first chunk and inter-chunk gaps, direct vs
            storegate (store=true and store=false), and through a bare TCP relay (relay.py: what
            one hop costs with no work, for reading), measured by sse_client.py;
  stored  - retrieve / list / messages / update / delete on stores of 10k and 1M completions,
            SQLite (and PostgreSQL when its cluster is free), healthz on the same server as floor;
  soak    - minutes of mixed create(store=true)/list/retrieve, storegate's RSS sampled.
Targets from the issue are judged from these ratios; a missed target's load is run again under
py-spy while its servers are still up, and the top frames are recorded.
Writes <out-dir>/<UTC start, e.g. 2026-11-26T0418Z>[-quick].json and a Markdown report (bench/RESULTS.md for full runs).
Everything listens on 127.0.0.1 free ports; every process started here is stopped by its PID.
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import json
import os
import platform
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(HERE / "stack"), str(HERE / "million")]

import orjson  # noqa: E402
import peers  # noqa: E402
import spy  # noqa: E402
import stores  # noqa: E402
from procs import Server, free_port, group_cpu_seconds, group_pids  # noqa: E402  (bench/stack)
from wrkrun import run_sse, run_wrk, write_lines  # noqa: E402

PY = sys.executable
HOST = "127.0.0.1"
DEAD_BACKEND = "http://127.0.0.1:9/v1"  # stored-completion servers never call their backend
CHUNKS = 50
CHUNK_DELAY = 0.010
Line = tuple[str, str, bytes | None]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------ config


@dataclass
class Config:
    mode: str
    rounds: int
    dur64: int
    dur1: int
    warmup: int
    sse64: float
    sse1: float
    sizes: list[int]
    stores: list[str]
    writes64: int
    writes1: int
    soak_s: int
    soak_window_s: int
    soak_conns: int
    soak_settle_max_s: int  # before the soak: same load until RSS holds still (bounded), see soak()
    rss_every_s: float
    litellm: bool
    profile: bool
    profile_s: int
    wait_load: float
    wait_load_max_s: int
    profile_dir: str = ""
    stem: str = ""  # results/<stem>.json: the run's UTC start, to the minute (runs of a day keep theirs)
    warm_pass: bool = True  # the warm-up also reads every line of a multi-line target once
    passes: int = 1  # runs of each chained target per round at c=64 (Scenario.chain), each paired apart


def make_config(args: argparse.Namespace) -> Config:
    quick = args.quick
    cfg = Config(
        mode="quick" if quick else "full",
        rounds=1 if quick else 3,
        dur64=1 if quick else 4,
        dur1=1 if quick else 2,
        warmup=0 if quick else 1,
        warm_pass=not quick,
        sse64=0.6 if quick else 5.0,
        sse1=0.6 if quick else 5.0,
        sizes=[10_000] if quick else [10_000, 1_000_000],
        stores=["sqlite"] if quick else ["sqlite", "postgres"],
        writes64=150 if quick else 800,
        writes1=40 if quick else 200,
        soak_s=10 if quick else 180,
        soak_window_s=3 if quick else 60,
        soak_conns=16,
        soak_settle_max_s=0 if quick else 120,
        rss_every_s=1.0 if quick else 5.0,
        litellm=not args.no_litellm and peers.available(),
        profile=not quick if args.profile is None else args.profile,
        profile_s=8,
        wait_load=0.0 if quick else 1.5,
        wait_load_max_s=600,
        passes=1 if quick else 2,
    )
    for name in ("rounds", "passes", "dur64", "dur1", "soak_s", "soak_conns", "wait_load", "wait_load_max_s", "profile_s"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(cfg, name, value)
    if cfg.passes < 1:
        raise SystemExit("--passes must be at least 1")
    if args.soak_window is not None:
        cfg.soak_window_s = args.soak_window
    elif args.soak_s is not None:
        cfg.soak_window_s = min(60, max(1, args.soak_s // 4))
    if args.sizes:
        cfg.sizes = [int(s) for s in args.sizes.split(",")]
    if args.stores:
        cfg.stores = args.stores.split(",")
    return cfg


# ------------------------------------------------------------------------------------------ servers


def fake_server(tmp: Path) -> Server:
    port = free_port()
    argv = [PY, str(HERE / "fakeup.py"), str(port), "--chunks", str(CHUNKS), "--delay", str(CHUNK_DELAY)]
    return Server(name="fake", argv=argv, port=port, log=tmp / "fake.log", cwd=str(HERE))


def relay_server(tmp: Path, target_port: int) -> Server:
    port = free_port()
    argv = [PY, str(HERE / "relay.py"), str(port), str(target_port)]
    return Server(name="relay", argv=argv, port=port, log=tmp / "relay.log", cwd=str(HERE))


def storegate_server(name: str, tmp: Path, db_url: str, backend: str) -> Server:
    """`storegate serve` with its defaults (log level, SQLite synchronous=FULL, ...): only the
    address, the database and the backend are given."""
    port = free_port()
    argv = [PY, "-m", "storegate", "serve", "--host", HOST, "--port", str(port), "--db", db_url,
            "--backend", backend]  # fmt: skip
    return Server(name=name, argv=argv, port=port, log=tmp / f"{name}.log", cwd=str(REPO))


def litellm_server(tmp: Path, backend_port: int) -> tuple[Server, str]:
    port = free_port()
    argv, env, config = peers.litellm_argv_env(tmp, port, backend_port)
    return Server(name="litellm", argv=argv, port=port, log=tmp / "litellm.log", cwd=str(tmp), env=env), config


def request(port: int, line: Line, timeout: float = 30) -> tuple[int, bytes]:
    method, path, body = line
    conn = http.client.HTTPConnection(HOST, port, timeout=timeout)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def wait_http(port: int, path: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, _ = request(port, ("GET", path, None), timeout=5)
            if status < 500:
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"nothing answers GET {path} on port {port} after {timeout}s")
        time.sleep(0.2)


def start_servers(servers: Sequence[Server], *healthz_ports: int) -> None:
    """Start every server at once, then wait for each to listen, and for GET /healthz to answer on
    each of `healthz_ports` (storegate answers it once its store is open)."""
    for s in servers:
        s.start()
    for s in servers:
        s.wait_ready()
    for port in healthz_ports:
        wait_http(port, "/healthz", 30)


def rss_kb(pid: int) -> int | None:
    """The RSS of the process group `pid` leads (started with start_new_session): storegate and its
    SQLite writer process together."""
    total = None
    for member in group_pids(pid):
        try:
            for line in Path(f"/proc/{member}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total = (total or 0) + int(line.split()[1])
        except OSError:
            continue
    return total


# ------------------------------------------------------------------------------------------ runner


@dataclass
class Target:
    name: str
    label: str
    server: str  # the Server that answers (CPU attribution, profiles)
    lines: list[Line] | None = None  # wrk targets
    sse_body: bytes | None = None  # SSE targets
    sse_path: str = "/v1/chat/completions"
    limit: dict[int, int] | None = None  # count-bounded: responses per run, by connections
    conns: tuple[int, ...] = (64, 1)
    probe: Line | None = None
    check: Callable[[int, bytes], str | None] | None = None
    group: str = ""
    baseline: str | None = None  # target this one is compared with (default: the scenario's)
    offset: int = 0  # count-bounded targets: lines already used


@dataclass
class Scenario:
    key: str
    title: str
    baseline: str
    servers: list[Server]
    targets: list[Target]
    cpu: dict[str, Callable[[], float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    ready_paths: dict[str, str] = field(default_factory=dict)  # server -> GET path to wait for
    ready_timeout: dict[str, float] = field(default_factory=dict)
    evaluate: Callable[[Scenario, list[dict[str, Any]]], list[dict[str, Any]]] | None = None
    workloads: dict[str, Any] = field(default_factory=dict)  # stored scenarios: size label -> Workload
    files: dict[str, Path] = field(default_factory=dict)  # server -> its store file (OS cache % per run)
    # Targets whose runs are judged against each other, ordered so that every judged pair is
    # neighbours: a round runs them first, in this order on even rounds and reversed on odd ones, then
    # the other targets rotated. Without it the whole pool rotates, and a pair can be minutes apart.
    chain: list[str] = field(default_factory=list)


def round_order(sc: Scenario, pool: list[Target], rnd: int) -> list[Target]:
    """One round's order of `pool`: the chained targets first (each judged pair run back to back, so
    the machine's minute lands on both sides), reversed every other round, then the rest rotated."""
    by_name = {t.name: t for t in pool}
    chain = [by_name[n] for n in dict.fromkeys(sc.chain) if n in by_name]
    if rnd % 2:
        chain.reverse()
    rest = [t for t in pool if t.name not in sc.chain]
    shift = rnd % len(rest) if rest else 0
    return chain + rest[shift:] + rest[:shift]


def round_runs(sc: Scenario, rnd: int, conns: int, passes: int) -> list[tuple[int | None, Target]]:
    """The runs of one round at `conns` connections, in order, each with its pass (None when the
    round has one). At 64 connections the chain is run `passes` times, back and forth (each pass's
    runs are paired with each other: more ratios per round); then every other target, once."""
    order = round_order(sc, [t for t in sc.targets if conns in t.conns], rnd)
    chained = [t for t in order if t.name in sc.chain]
    # a count-bounded target consumes ids per run, counted once a round (writes_each)
    assert not any(t.limit for t in chained), "count-bounded targets cannot be chained"
    passes = passes if conns > 1 and chained else 1
    runs: list[tuple[int | None, Target]] = [
        (p if passes > 1 else None, t) for p in range(passes) for t in (chained if p % 2 == 0 else chained[::-1])
    ]
    return runs + [(None, t) for t in order if t.name not in sc.chain]


def stored_chain(sizes: list[int]) -> list[str]:
    """3a healthz-retrieve, 3b retrieve-list (each size), 3c list at the small size with list at the big."""
    small, big = stores.label(min(sizes)), stores.label(max(sizes))
    return [f"healthz@{small}", f"retrieve@{small}", f"list@{small}", f"list@{big}", f"retrieve@{big}",
            f"healthz@{big}"]  # fmt: skip


def _is_sse(t: Target) -> bool:
    return t.sse_body is not None


def _ok_json(status: int, body: bytes) -> str | None:
    if status != 200:
        return f"status {status}: {body[:300]!r}"
    try:
        orjson.loads(body)
    except orjson.JSONDecodeError:
        return f"not JSON: {body[:200]!r}"
    return None


def run_scenario(sc: Scenario, cfg: Config, tmp: Path) -> dict[str, Any]:
    ports = {s.name: s.port for s in sc.servers}
    pids: dict[str, int] = {}
    runs: list[dict[str, Any]] = []
    probes: dict[str, Any] = {}
    verdicts: list[dict[str, Any]] = []
    started = time.monotonic()
    try:
        for s in sc.servers:
            s.start()
        for s in sc.servers:
            s.wait_ready(timeout=sc.ready_timeout.get(s.name, 60))
            if s.name in sc.ready_paths:
                wait_http(s.port, sc.ready_paths[s.name], sc.ready_timeout.get(s.name, 60))
            assert s.proc is not None
            pids[s.name] = s.proc.pid
        cpu = {name: (lambda pg=pg: group_cpu_seconds([pg])[pg]) for name, pg in pids.items()}
        cpu.update(sc.cpu)
        quiet = list(pids.values())
        files: dict[str, Path] = {}
        for t in sc.targets:
            probes[t.name] = _probe(t, ports[t.server], tmp)
            if t.lines is not None:
                files[t.name] = write_lines(tmp / f"{sc.key}-{t.name}.txt", t.lines)
        log(f"{sc.key}: servers up ({', '.join(f'{k}={v}' for k, v in pids.items())}), probes ok")
        for t in sc.targets:  # warm-up, discarded (count-bounded writes are warmed by the reads)
            if t.limit is None and cfg.warmup > 0:
                _one(t, ports[t.server], files.get(t.name), 16, cfg.warmup, cfg, cpu, quiet, tmp)
                if cfg.warm_pass and t.lines is not None and len(t.lines) > 1 and t.name in files:
                    # ...and one pass over every line, so round 0 does not read a fresh store copy
                    # from cold caches while the later rounds find it warm (it decided 3c once).
                    run_wrk(f"http://{HOST}:{ports[t.server]}", files[t.name], 16, 60, len(t.lines), cpu, quiet)
        for rnd in range(cfg.rounds):
            for conns in (64, 1):
                for pas, t in round_runs(sc, rnd, conns, cfg.passes):
                    store_file = sc.files.get(t.server)
                    if store_file is not None:  # read into the OS's page cache again (see stores.warm)
                        stores.warm(store_file)
                    rec = _one(t, ports[t.server], files.get(t.name), conns, None, cfg, cpu, quiet, tmp)
                    if store_file is not None:
                        rec["store_cached_pct"] = stores.cached_pct(store_file)  # at the end of the run
                    rec.update(round=rnd, target=t.name, conns=conns, server=t.server, group=t.group)
                    if pas is not None:
                        rec["pass"] = pas
                    runs.append(rec)
                    log(f"{sc.key} r{rnd}{'' if pas is None else f'.{pas}'} c{conns} {t.name}: {_brief(rec)}")
        if sc.evaluate is not None:
            verdicts = sc.evaluate(sc, runs)
            if cfg.profile:
                _profile_misses(sc, verdicts, ports, pids, files, cfg, cpu, tmp)
    except Exception:
        for s in sc.servers:
            with contextlib.suppress(OSError):
                log(f"--- tail of {s.log.name}:\n{s.log.read_text(errors='replace')[-1500:]}")
        raise
    finally:
        for s in reversed(sc.servers):
            s.stop()
    return {
        "key": sc.key,
        "title": sc.title,
        "baseline": sc.baseline,
        "targets": [{"name": t.name, "label": t.label, "server": t.server, "group": t.group,
                     "kind": "sse" if _is_sse(t) else "wrk", "conns": list(t.conns),
                     "baseline": t.baseline or sc.baseline,
                     "limit": t.limit, "first_request": _show(t)} for t in sc.targets],
        "servers": [{"name": s.name, "argv": [str(a) for a in s.argv], "pid": pids.get(s.name)} for s in sc.servers],
        "probes": probes,
        "chain": [n for n in dict.fromkeys(sc.chain) if any(t.name == n for t in sc.targets)],
        "extra": sc.extra,
        "runs": runs,
        "summary": summarise(sc, runs),
        "verdicts": verdicts,
        "elapsed_s": round(time.monotonic() - started, 1),
    }


def _show(t: Target) -> str:
    if t.lines:
        m, p, b = t.lines[0]
        return f"{m} {p}" + (f" {b.decode()[:300]}" if b else "")
    if t.sse_body is not None:
        return f"POST {t.sse_path} {t.sse_body.decode()[:300]}"
    return ""


def _one(t: Target, port: int, lines_file: Path | None, conns: int, seconds: float | None, cfg: Config,
         cpu: dict[str, Callable[[], float]], quiet: list[int], tmp: Path) -> dict[str, Any]:  # fmt: skip
    if _is_sse(t):
        assert t.sse_body is not None
        dur = seconds if seconds is not None else (cfg.sse64 if conns > 1 else cfg.sse1)
        dur = min(dur, cfg.sse1) if seconds is not None and cfg.mode == "quick" else dur
        return run_sse(f"http://{HOST}:{port}{t.sse_path}", t.sse_body, conns, dur, CHUNKS, cpu, quiet, tmp)
    assert lines_file is not None
    limit = (t.limit or {}).get(conns, 0)
    dur = seconds if seconds is not None else (cfg.dur64 if conns > 1 else cfg.dur1)
    if limit:
        # Count-bounded writes consume ids: each run gets the next unused slice of the lines (wrk
        # re-reads its file from the top), long enough for the counted responses plus what is in
        # flight when the run stops. The duration is only a ceiling.
        assert t.lines is not None
        take = limit + conns + 1
        chunk = t.lines[t.offset : t.offset + take]
        if len(chunk) < take:
            raise RuntimeError(f"{t.name}: out of distinct ids ({len(t.lines)} lines, {t.offset} used)")
        t.offset += take
        lines_file = write_lines(lines_file.with_suffix(f".{t.offset}.txt"), chunk)
        dur = 30
    return run_wrk(f"http://{HOST}:{port}", lines_file, conns, dur, limit, cpu, quiet)


def _brief(rec: dict[str, Any]) -> str:
    if "ttft" in rec:
        return (f"{rec['streams_per_s']:.0f} streams/s ttft p50 {rec['ttft'].get('p50_ms', 0):.2f} ms"
                f" gap p50 {rec['gap'].get('p50_ms', 0):.2f} p99 {rec['gap'].get('p99_ms', 0):.2f} ms"
                f" bad={rec['bad_chunk_count']} err={rec['errors']} client={rec['client_cpu_pct']:.0f}%")  # fmt: skip
    return (f"{rec['rps']:,.0f} req/s p50 {rec['p50_us'] / 1e3:.2f} ms p99 {rec['p99_us'] / 1e3:.2f} ms"
            f" err={rec['errors']} non2xx={rec.get('non2xx', 0)} wrk={rec['client_cpu_pct']:.0f}%"
            f" others={rec['foreign_cpu_pct']:.0f}%")  # fmt: skip


def _probe(t: Target, port: int, tmp: Path) -> dict[str, Any]:
    if _is_sse(t):
        assert t.sse_body is not None
        rec = run_sse(f"http://{HOST}:{port}{t.sse_path}", t.sse_body, 1, 0.01, CHUNKS, {}, None, tmp)
        if rec["streams"] < 1 or rec["bad_chunk_count"] or rec["errors"]:
            raise RuntimeError(f"stream probe of {t.name} failed: {rec}")
        return {"streams": rec["streams"], "chunks": CHUNKS, "ttft_ms": rec["ttft"].get("p50_ms")}
    line = t.probe or (t.lines[0] if t.lines else None)
    assert line is not None
    deadline = time.monotonic() + 20
    while True:
        try:
            status, body = request(port, line)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.3)
    problem = (t.check or _ok_json)(status, body)
    if problem:
        raise RuntimeError(f"probe of {t.name} ({line[0]} {line[1]}) failed: {problem}")
    return {"status": status, "body_bytes": len(body), "body_head": body[:160].decode(errors="replace")}


# ------------------------------------------------------------------------------------------ summaries


def med(xs: list[float]) -> float | None:
    xs = [x for x in xs if x is not None and x == x]
    return float(statistics.median(xs)) if xs else None


def _metric(rec: dict[str, Any], name: str) -> float | None:
    if name == "rps":
        return rec.get("rps") if "rps" in rec else rec.get("streams_per_s")
    if name in ("p50_ms", "p99_ms", "p90_ms"):
        key = name.replace("_ms", "_us")
        return rec[key] / 1e3 if key in rec else None
    if "." in name:  # e.g. "ttft.p50_ms"
        a, b = name.split(".", 1)
        value = rec.get(a, {}).get(b)
        return float(value) if value is not None else None
    value = rec.get(name)
    return float(value) if isinstance(value, int | float) else None


def paired(runs: list[dict[str, Any]], a: str, b: str, conns: int, fn: Callable[[dict[str, Any], dict[str, Any]], float | None]) -> dict[str, Any]:  # fmt: skip
    """fn(run of a, run of b) per round (and pass, for chained targets) where both ran; median, min,
    max and every value. A target run once a round (none that is judged) pairs with a chained one's
    first pass of that round."""
    ra = {(r["round"], r.get("pass", 0)): r for r in runs if r["target"] == a and r["conns"] == conns}
    rb = {(r["round"], r.get("pass", 0)): r for r in runs if r["target"] == b and r["conns"] == conns}
    values = []
    for rnd in sorted(ra.keys() & rb.keys()):
        v = fn(ra[rnd], rb[rnd])
        if v is not None and v == v:
            values.append(v)
    out = {"median": med(values), "min": min(values) if values else None, "max": max(values) if values else None,
           "values": [round(v, 4) for v in values]}  # fmt: skip
    metric = getattr(fn, "metric", None)
    if metric is not None:  # the two sides' own medians, for reading beside the ratio
        both = sorted(ra.keys() & rb.keys())
        out["metric"] = metric
        out["a"] = med([m for m in (_metric(ra[k], metric) for k in both) if m is not None])
        out["b"] = med([m for m in (_metric(rb[k], metric) for k in both) if m is not None])
    return out


def ratio_of(metric: str) -> Callable[[dict[str, Any], dict[str, Any]], float | None]:
    def fn(x: dict[str, Any], y: dict[str, Any]) -> float | None:
        a, b = _metric(x, metric), _metric(y, metric)
        return a / b if a is not None and b else None

    fn.metric = metric  # type: ignore[attr-defined]
    return fn


SSE_METRICS = ["ttft.p50_ms", "ttft.p99_ms", "gap.p50_ms", "gap.p99_ms"]


def summarise(sc: Scenario, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for conns in (64, 1):
        for t in sc.targets:
            mine = [r for r in runs if r["target"] == t.name and r["conns"] == conns]
            if not mine:
                continue
            base = t.baseline or sc.baseline
            row: dict[str, Any] = {
                "target": t.name,
                "label": t.label,
                "group": t.group,
                "conns": conns,
                "rounds": len(mine),
                "baseline": base,
                "rps": med([_metric(r, "rps") or 0 for r in mine]),
                "rps_all": [round(_metric(r, "rps") or 0, 1) for r in mine],
                "rps_ratio": paired(runs, t.name, base, conns, ratio_of("rps")),
                "errors": sum(int(r.get("errors", 0)) for r in mine) + sum(int(r.get("non2xx", 0)) for r in mine),
                "server_cpu_pct": med([r["server_cpu_pct"].get(t.server, 0) for r in mine]),
                "server_cpu_us_per_req": med([r["server_cpu_us_per_req"].get(t.server, 0) for r in mine]),
                "client_cpu_pct": med([r["client_cpu_pct"] for r in mine]),
                "foreign_cpu_pct": med([r["foreign_cpu_pct"] for r in mine]),
                "steal_pct": med([r["steal_pct"] for r in mine]),
            }
            if _is_sse(t):
                for m in SSE_METRICS:
                    row[m] = med([_metric(r, m) for r in mine])  # type: ignore[misc]
                    row[m + "_ratio"] = paired(runs, t.name, base, conns, ratio_of(m))
                row["bad_streams"] = sum(r["bad_chunk_count"] for r in mine)
                row["streams"] = sum(r["streams"] for r in mine)
            else:
                row["p50_ms"] = med([_metric(r, "p50_ms") for r in mine])  # type: ignore[misc]
                row["p99_ms"] = med([_metric(r, "p99_ms") for r in mine])  # type: ignore[misc]
                row["requests"] = sum(int(r["requests"]) for r in mine)
                row["bytes_per_resp"] = round(sum(r["bytes"] for r in mine) / max(1, row["requests"]))
            cached = [r["store_cached_pct"] for r in mine if r.get("store_cached_pct") is not None]
            if cached:
                row["store_cached_pct_min"] = min(cached)
            rows.append(row)
    return rows


def verdict(tid: str, text: str, value: float | None, op: str, threshold: float, detail: dict[str, Any],
            profile: list[tuple[str, int]] | None = None, note: str = "") -> dict[str, Any]:  # fmt: skip
    """One target's outcome. `profile`: the (target, connections) loads to run again under py-spy if
    it is missed: the side that should be fast first, then what it is compared with."""
    if value is None:
        met = None
    elif op == ">=":
        met = value >= threshold
    elif op == "<=":
        met = value <= threshold
    else:  # "within": |value - 1| <= threshold
        met = abs(value - 1) <= threshold
    return {"id": tid, "target": text, "measured": value, "op": op, "threshold": threshold, "met": met,
            "detail": detail, "profile_of": [list(p) for p in profile] if profile else None, "note": note}  # fmt: skip


def _profile_misses(sc: Scenario, verdicts: list[dict[str, Any]], ports: dict[str, int], pids: dict[str, int],
                    files: dict[str, Path], cfg: Config, cpu: dict[str, Callable[[], float]], tmp: Path) -> None:  # fmt: skip
    done: dict[tuple[str, int], dict[str, Any]] = {}
    targets = {t.name: t for t in sc.targets}
    for v in verdicts:
        if v["met"] is not False or not v["profile_of"]:
            continue
        v["profiles"] = []
        for name, conns in v["profile_of"]:
            key = (name, conns)
            t = targets[name]
            if key not in done:
                out = tmp / f"pyspy-{sc.key}-{name}-c{conns}.txt"
                rec = spy.Recorder(pids[t.server], cfg.profile_s, out)
                log(f"{sc.key}: {v['id']} missed: profiling {name} at c={conns} for {cfg.profile_s}s (py-spy)")
                rec.start()
                time.sleep(0.3)
                load: dict[str, Any] = {}
                if _is_sse(t) or t.limit is None:
                    t_end = time.monotonic() + cfg.profile_s
                    while time.monotonic() < t_end - 0.5:
                        load = _one(t, ports[t.server], files.get(t.name), conns,
                                    max(1, round(t_end - time.monotonic())), cfg, cpu, [], tmp)  # fmt: skip
                prof = rec.join()
                prof["load_during_profile"] = {k: load.get(k) for k in ("rps", "streams_per_s", "p50_us", "p99_us")
                                               if k in load}  # fmt: skip
                if prof.get("raw_file"):
                    keep = Path(cfg.profile_dir)
                    keep.mkdir(parents=True, exist_ok=True)
                    dest = keep / f"{cfg.stem}-{cfg.mode}-{out.name}"
                    shutil.copyfile(out, dest)
                    prof["raw_file"] = str(dest)
                done[key] = prof | {"of": name, "conns": conns, "label": t.label}
            v["profiles"].append(done[key])


# ------------------------------------------------------------------------------------------ scenarios

MESSAGES = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is in this image? Describe it in one sentence."},
]


def chat_body(store: bool | None, k: int = 0, stream: bool = False) -> bytes:
    doc: dict[str, Any] = {"model": peers.MODEL, "messages": MESSAGES}
    if stream:
        doc["stream"] = True
    if store is not None:
        doc["store"] = store
    if store:
        doc["metadata"] = {"user": f"u{k % 1000}", "env": ("prod", "staging", "dev")[k % 3]}
    return orjson.dumps(doc)


def _completion_check(status: int, body: bytes) -> str | None:
    problem = _ok_json(status, body)
    if problem:
        return problem
    doc = orjson.loads(body)
    if doc.get("object") != "chat.completion" or not doc.get("choices"):
        return f"not a chat.completion: {body[:200]!r}"
    return None


def floor_scenario(tmp: Path) -> Scenario:
    fake = fake_server(tmp)
    sg = storegate_server("storegate", tmp, f"sqlite:///{tmp / 'floor.db'}", f"http://{HOST}:{fake.port}/v1")
    targets = [
        Target("ceiling", "raw uvloop fixed response (the fake backend's GET /ceiling): wrk's ceiling", "fake",
               lines=[("GET", "/ceiling", None)]),
        Target("healthz", "storegate GET /healthz: bare fixed-body handler, same middlewares", "storegate",
               lines=[("GET", "/healthz", None)]),
    ]  # fmt: skip
    return Scenario("floor", "Framework floor and load-generator ceiling", "ceiling", [fake, sg], targets)


def create_scenario(tmp: Path, cfg: Config) -> Scenario:
    fake = fake_server(tmp)
    backend = f"http://{HOST}:{fake.port}/v1"
    sg = storegate_server("storegate", tmp, f"sqlite:///{tmp / 'create.db'}", backend)
    servers = [fake, sg]
    nostore: list[Line] = [("POST", "/v1/chat/completions", chat_body(False))]
    store: list[Line] = [("POST", "/v1/chat/completions", chat_body(True, k)) for k in range(3000)]
    targets = [
        Target("direct", "direct to the fake backend (floor)", "fake", lines=nostore, check=_completion_check),
        Target("sg_nostore", "storegate, store=false", "storegate", lines=nostore, check=_completion_check),
        Target("sg_store", "storegate, store=true (SQLite, synchronous=FULL)", "storegate", lines=store,
               check=_completion_check),
    ]  # fmt: skip
    extra: dict[str, Any] = {"litellm": None}
    sc = Scenario("create", "Create, non-streamed (POST /v1/chat/completions, ~650 B answer)", "direct",
                  servers, targets, extra=extra)  # fmt: skip
    if cfg.litellm:
        ll, config = litellm_server(tmp, fake.port)
        servers.append(ll)
        sc.ready_paths["litellm"] = "/health/liveliness"
        sc.ready_timeout["litellm"] = 180
        targets.append(Target("litellm", f"LiteLLM proxy {peers.litellm_version()} (no DB, logging off)", "litellm",
                              lines=nostore, check=_completion_check))  # fmt: skip
        extra["litellm"] = {"version": peers.litellm_version(), "config": config,
                            "env": peers.OFFLINE_ENV, "argv": ll.argv}  # fmt: skip
    # 2 (sg_store with sg_nostore), 1a (sg_store with LiteLLM) and 1b (those two with direct) side by side
    sc.chain = ["sg_nostore", "sg_store", "litellm", "direct"]
    sc.evaluate = evaluate_create
    return sc


def evaluate_create(sc: Scenario, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    names = {t.name for t in sc.targets}
    if "litellm" in names:
        r = paired(runs, "sg_store", "litellm", 64, ratio_of("rps"))
        out.append(verdict("1a", "create store=true (durable) c=64 throughput vs LiteLLM proxy", r["median"], ">=", 10.0,
                           r, [("sg_store", 64)]))  # fmt: skip

        # added latency at c=1: (storegate p50 - direct p50) / (LiteLLM p50 - direct p50), per round
        rs = {r["round"]: r for r in runs if r["conns"] == 1 and r["target"] == "sg_store"}
        rl = {r["round"]: r for r in runs if r["conns"] == 1 and r["target"] == "litellm"}
        rd = {r["round"]: r for r in runs if r["conns"] == 1 and r["target"] == "direct"}
        vals, sg_add, ll_add = [], [], []
        for rnd in sorted(rs.keys() & rl.keys() & rd.keys()):
            a = (rs[rnd]["p50_us"] - rd[rnd]["p50_us"]) / 1e3
            b = (rl[rnd]["p50_us"] - rd[rnd]["p50_us"]) / 1e3
            sg_add.append(a)
            ll_add.append(b)
            if b > 0:
                vals.append(a / b)
        detail = {"median": med(vals), "min": min(vals) if vals else None, "max": max(vals) if vals else None,
                  "values": [round(v, 4) for v in vals], "storegate_added_p50_ms": med(sg_add),
                  "litellm_added_p50_ms": med(ll_add)}  # fmt: skip
        out.append(verdict("1b", "create store=true c=1: added p50 latency vs direct, as a fraction of LiteLLM's",
                           detail["median"], "<=", 0.125, detail, [("sg_store", 1)]))  # fmt: skip
    else:
        reason = "LiteLLM not run (not installed, or --no-litellm)"
        out.append(verdict("1a", "create store=true (durable) c=64 throughput vs LiteLLM proxy", None, ">=", 10.0, {},
                           note=reason))  # fmt: skip
        out.append(verdict("1b", "create store=true c=1: added p50 latency vs direct, as a fraction of LiteLLM's",
                           None, "<=", 0.125, {}, note=reason))  # fmt: skip
    r = paired(runs, "sg_store", "sg_nostore", 64, ratio_of("rps"))
    out.append(verdict("2", "create c=64 throughput: store=true vs store=false", r["median"], ">=", 0.70, r,
                       [("sg_store", 64), ("sg_nostore", 64)]))  # fmt: skip
    r1 = paired(runs, "sg_store", "sg_nostore", 1, ratio_of("rps"))
    out.append(verdict("2 (c=1)", "create c=1 throughput: store=true vs store=false (for reading)", r1["median"],
                       ">=", 0.70, r1, [("sg_store", 1), ("sg_nostore", 1)]))  # fmt: skip
    return out


def stream_scenario(tmp: Path) -> Scenario:
    fake = fake_server(tmp)
    sg = storegate_server("storegate", tmp, f"sqlite:///{tmp / 'stream.db'}", f"http://{HOST}:{fake.port}/v1")
    relay = relay_server(tmp, fake.port)
    targets = [
        Target("direct", "direct to the fake backend", "fake", sse_body=chat_body(None, stream=True)),
        Target("relay", "through a TCP byte relay (bench/relay.py): one hop, no HTTP (for reading)", "relay",
               sse_body=chat_body(None, stream=True)),
        Target("sg_store", "storegate, store=true", "storegate", sse_body=chat_body(True, 7, stream=True)),
        Target("sg_nostore", "storegate, store=false", "storegate", sse_body=chat_body(False, stream=True)),
    ]
    sc = Scenario("stream", f"Create, streamed ({CHUNKS} chunks, one every {CHUNK_DELAY * 1e3:.0f} ms)",
                  "direct", [fake, relay, sg], targets)  # fmt: skip
    sc.chain = ["relay", "direct", "sg_store"]  # 4 compares sg_store with direct; the relay is for reading
    sc.evaluate = evaluate_stream
    return sc


def evaluate_stream(sc: Scenario, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for conns in (1, 64):
        for metric, what in (("ttft.p50_ms", "time to first chunk p50"), ("gap.p50_ms", "inter-chunk gap p50")):
            r = paired(runs, "sg_store", "direct", conns, ratio_of(metric))
            p99 = paired(runs, "sg_store", "direct", conns, ratio_of(metric.replace("p50", "p99")))
            r["p99_ratio"] = p99
            if any(x["target"] == "relay" for x in runs):  # what one bare hop costs, for reading
                r["relay"] = paired(runs, "relay", "direct", conns, ratio_of(metric))["median"]
            out.append(verdict(f"4 {metric.split('.')[0]} c={conns}", f"streamed store=true c={conns}: {what} vs direct",
                               r["median"], "<=", 1.05, r, [("sg_store", conns)]))  # fmt: skip
    return out


def stored_scenario(kind: str, cfg: Config, tmp: Path, pg: stores.Postgres | None) -> Scenario:
    servers: list[Server] = []
    targets: list[Target] = []
    extra: dict[str, Any] = {"stores": {}}
    sc_workloads: dict[str, stores.Workload] = {}
    files: dict[str, Path] = {}
    # ids each write scenario consumes: the counted responses plus what was in flight at the stop
    writes_each = cfg.rounds * (cfg.writes64 + 64 + 1 + cfg.writes1 + 1 + 1) + 10
    for n in cfg.sizes:
        lab = stores.label(n)
        if kind == "sqlite":
            url, info = stores.sqlite_copy(n, tmp, log)
            files[f"storegate-{kind}-{lab}"] = Path(info["path"])
        else:
            assert pg is not None
            url, info = pg.copy(n)
        extra["stores"][lab] = info | {"url": url}
        name = f"storegate-{kind}-{lab}"
        servers.append(storegate_server(name, tmp, url, DEAD_BACKEND))
        w = stores.Workload.make(n, writes_each, reads=min(3000, (n - 300) // 3))
        sc_workloads[lab] = w
        extra["stores"][lab]["workload"] = {"reads": len(w.reads), "updates": len(w.updates), "deletes": len(w.deletes)}
        group = f"{kind} {lab}"
        for key in stores.SCENARIOS:
            limit = {64: cfg.writes64, 1: cfg.writes1} if key in ("update", "delete") else None
            check = _list_check if key == "list" else None
            targets.append(Target(f"{key}@{lab}", f"{key} ({lab})", name, lines=w.lines(key), limit=limit,
                                  probe=w.probe_line(key), check=check, group=group,
                                  baseline=f"healthz@{lab}"))  # fmt: skip
    sc = Scenario(f"stored-{kind}", f"Stored completions on {'SQLite' if kind == 'sqlite' else 'PostgreSQL'}",
                  f"healthz@{stores.label(cfg.sizes[0])}", servers, targets, extra=extra)  # fmt: skip
    sc.chain = stored_chain(cfg.sizes)
    if pg is not None:
        sc.cpu["postgres"] = pg.cpu_seconds
    sc.evaluate = lambda s, runs: evaluate_stored(s, runs, kind, cfg)
    sc.extra["scenarios"] = stores.SCENARIOS
    sc.workloads = sc_workloads
    sc.files = files
    return sc


def _list_check(status: int, body: bytes) -> str | None:
    problem = _ok_json(status, body)
    if problem:
        return problem
    doc = orjson.loads(body)
    if doc.get("object") != "list" or len(doc.get("data", [])) != 20:
        return f"expected a full page of 20: {len(doc.get('data', []))} items"
    return None


def evaluate_stored(sc: Scenario, runs: list[dict[str, Any]], kind: str, cfg: Config) -> list[dict[str, Any]]:
    out = []
    store = "SQLite" if kind == "sqlite" else "PostgreSQL"
    suffix = "" if kind == "sqlite" else " (PostgreSQL)"
    big = stores.label(max(cfg.sizes))
    small = stores.label(min(cfg.sizes))
    for lab in dict.fromkeys([big, small]):
        r = paired(runs, f"retrieve@{lab}", f"healthz@{lab}", 64, ratio_of("rps"))
        primary = lab == big
        out.append(verdict(f"3a{suffix}" + ("" if primary else f" @{lab}"),
                           f"{store} {lab}: retrieve by id c=64 throughput vs bare handler (GET /healthz)",
                           r["median"], ">=", 0.70, r, [(f"retrieve@{lab}", 64), (f"healthz@{lab}", 64)]))  # fmt: skip
        r = paired(runs, f"list@{lab}", f"retrieve@{lab}", 64, ratio_of("rps"))
        out.append(verdict(f"3b{suffix}" + ("" if primary else f" @{lab}"),
                           f"{store} {lab}: list 20 by metadata filter c=64 throughput vs retrieve",
                           r["median"], ">=", 0.40, r, [(f"list@{lab}", 64), (f"retrieve@{lab}", 64)]))  # fmt: skip
    if big != small:
        r = paired(runs, f"list@{big}", f"list@{small}", 64, ratio_of("rps"))
        out.append(verdict(f"3c{suffix}", f"{store}: list 20 c=64 throughput at {big} vs at {small}", r["median"],
                           ">=", 0.90, r, [(f"list@{big}", 64), (f"list@{small}", 64)]))  # fmt: skip
    else:
        out.append(verdict(f"3c{suffix}", f"{store}: list 20 c=64 throughput at 1M vs at 10k", None, ">=", 0.90, {},
                           note=f"only {small} in this run (quick mode)"))  # fmt: skip
    return out


def mixed_lines(w: stores.Workload) -> list[Line]:
    """The soak's mix (and bench/ab's `mixed`): half creates (store=true), a quarter lists, a quarter
    retrieves, interleaved, so reads follow commits as on a server that stores and reads at once."""
    lists = w.lines("list") + w.lines("list_user")
    gets = w.lines("retrieve")
    lines: list[Line] = []
    for k in range(3000):
        lines.append(("POST", "/v1/chat/completions", chat_body(True, k)))
        lines.append(lists[(k * 7) % len(lists)])
        lines.append(("POST", "/v1/chat/completions", chat_body(True, k + 1)))
        lines.append(gets[k % len(gets)])
    return lines


def soak(cfg: Config, tmp: Path) -> dict[str, Any]:
    fake = fake_server(tmp)
    url, info = stores.sqlite_copy(10_000, tmp, log)
    sg = storegate_server("storegate-soak", tmp, url, f"http://{HOST}:{fake.port}/v1")
    lines = mixed_lines(stores.Workload.make(10_000, 1, reads=3000))
    lf = write_lines(tmp / "soak.txt", lines)
    samples: list[tuple[float, int]] = []
    out: dict[str, Any] = {"store": info | {"url": url}, "conns": cfg.soak_conns, "seconds": cfg.soak_s,
                           "window_s": cfg.soak_window_s, "mix": "1/2 create store=true, 1/4 list, 1/4 retrieve"}  # fmt: skip
    try:
        start_servers([fake, sg])
        assert sg.proc is not None
        pid = sg.proc.pid
        cpu = {"storegate-soak": lambda: group_cpu_seconds([pid])[pid]}
        status, body = request(sg.port, lines[0])
        if status != 200:
            raise RuntimeError(f"soak probe failed: {status} {body[:200]!r}")
        out["rss_kb_at_start"] = rss_kb(pid)
        warm = min(10, max(2, cfg.soak_s // 10))
        run_wrk(f"http://{HOST}:{sg.port}", lf, cfg.soak_conns, warm, 0, cpu)
        # Target 5 is about leaks, so the soak starts from a steady state: SQLite's page caches (up to
        # --sqlite-cache-mib per connection) fill for the first ~40 s of this load, and a soak that
        # began with them judged how fast they fill (1.12-1.15x) while RSS then held within 0.2 MB.
        # The settling is recorded and reported; it stops once 10 s of load grow RSS by under 1%.
        settle: list[tuple[float, int]] = [(float(warm), rss_kb(pid) or 0)]
        while settle[-1][0] < warm + cfg.soak_settle_max_s:
            run_wrk(f"http://{HOST}:{sg.port}", lf, cfg.soak_conns, 10, 0, cpu)
            settle.append((settle[-1][0] + 10, rss_kb(pid) or 0))
            if settle[-1][1] < settle[-2][1] * 1.01:
                break
        out["settle_samples"] = settle
        out["settle_max_s"] = cfg.soak_settle_max_s
        out["rss_kb_after_warmup"] = rss_kb(pid)
        result: dict[str, Any] = {}

        def drive() -> None:
            result.update(run_wrk(f"http://{HOST}:{sg.port}", lf, cfg.soak_conns, cfg.soak_s, 0, cpu))

        log(f"soak: {cfg.soak_s}s of mixed load at c={cfg.soak_conns}, RSS every {cfg.rss_every_s}s (pid {pid})")
        th = threading.Thread(target=drive)
        t0 = time.monotonic()
        th.start()
        while th.is_alive():
            value = rss_kb(pid)
            if value is not None:
                samples.append((round(time.monotonic() - t0, 2), value))
            th.join(cfg.rss_every_s)
        out["rss_kb_end"] = rss_kb(pid)
        out["load"] = {k: result.get(k) for k in ("requests", "rps", "p50_us", "p99_us", "errors", "non2xx",
                                                  "client_cpu_pct", "server_cpu_pct", "foreign_cpu_pct")}  # fmt: skip
    finally:
        sg.stop()
        fake.stop()
    with contextlib.closing(sqlite3.connect(url.removeprefix("sqlite:///"))) as conn:
        out["completions_at_end"] = conn.execute("SELECT count(*) FROM completions").fetchone()[0]
    stores.remove_sqlite(url)
    dur = samples[-1][0] if samples else 0
    first = [v for t, v in samples if t <= cfg.soak_window_s]
    last = [v for t, v in samples if t >= dur - cfg.soak_window_s]
    out["samples"] = samples
    out["first_window_median_kb"] = med([float(v) for v in first])
    out["last_window_median_kb"] = med([float(v) for v in last])
    out["max_kb"] = max((v for _, v in samples), default=None)
    f, la = out["first_window_median_kb"], out["last_window_median_kb"]
    out["ratio"] = la / f if f and la else None
    log(f"soak: RSS first {cfg.soak_window_s}s median {f} kB, last {cfg.soak_window_s}s median {la} kB, "
        f"ratio {out['ratio']}; {out['load'].get('rps')} req/s, errors {out['load'].get('errors')}")  # fmt: skip
    out["verdicts"] = [verdict("5", f"RSS over a {cfg.soak_s}s soak: last {cfg.soak_window_s}s vs first {cfg.soak_window_s}s"
                               " (median)", out["ratio"], "within", 0.10, {"first_kb": f, "last_kb": la})]  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------ machine


def wait_for_load(limit: float, max_s: int) -> dict[str, Any]:
    t0 = time.monotonic()
    first = os.getloadavg()
    if limit <= 0:
        return {"limit": None, "waited_s": 0, "loadavg": first}
    while os.getloadavg()[0] >= limit and time.monotonic() - t0 < max_s:
        log(f"load average {os.getloadavg()[0]:.2f} >= {limit}: waiting (at most {max_s - (time.monotonic() - t0):.0f}s more)")
        time.sleep(15)
    la = os.getloadavg()
    return {"limit": limit, "waited_s": round(time.monotonic() - t0), "loadavg_before_wait": first, "loadavg": la,
            "reached": la[0] < limit}  # fmt: skip


def _cmd(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=False)
        return (out.stdout or out.stderr).strip()
    except OSError as exc:
        return f"unavailable ({exc})"


def machine_meta() -> dict[str, Any]:
    import importlib.metadata as md

    versions = {}
    for lib in ("aiohttp", "orjson", "uvloop", "asyncpg", "storegate"):
        try:
            versions[lib] = md.version(lib)
        except md.PackageNotFoundError:
            versions[lib] = None
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())  # fmt: skip
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu,
        "mem_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "wrk": _cmd(["wrk", "-v"]).splitlines()[0] if shutil.which("wrk") else None,
        "py_spy": spy.py_spy(),
        "libraries": versions,
        "litellm": peers.litellm_version(),
        "git_commit": _cmd(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"]),
        "storegate_event_loop": _default_event_loop(),
        "git_dirty_src": _cmd(["git", "-C", str(REPO), "status", "--short", "src"]).splitlines(),
    }


def _default_event_loop() -> str:
    """The event loop `storegate serve` runs without --event-loop (uvloop before that option)."""
    from storegate.settings import Settings

    return str(getattr(Settings(), "event_loop", "uvloop"))


# ------------------------------------------------------------------------------------------ main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="CI smoke: 1 round, 1 s runs, 10k SQLite only, 10 s soak")
    ap.add_argument("--no-litellm", action="store_true", help="skip the LiteLLM peer")
    ap.add_argument("--only", action="append", choices=["floor", "create", "stream", "stored", "soak"])
    ap.add_argument("--rounds", type=int)
    ap.add_argument("--passes", type=int, help="runs of each judged (chained) target per round at c=64 (full: 2)")
    ap.add_argument("--dur64", type=int, help="seconds per wrk run at c=64")
    ap.add_argument("--dur1", type=int, help="seconds per wrk run at c=1")
    ap.add_argument("--sizes", help="store sizes, e.g. 10000,1000000")
    ap.add_argument("--stores", help="sqlite,postgres")
    ap.add_argument("--soak", dest="soak_s", type=int, help="soak seconds")
    ap.add_argument("--soak-window", type=int, help="seconds of the first/last RSS windows")
    ap.add_argument("--soak-conns", type=int)
    ap.add_argument("--profile", action=argparse.BooleanOptionalAction, default=None,
                    help="py-spy a missed target's load (default: on in full mode)")  # fmt: skip
    ap.add_argument("--profile-s", type=int)
    ap.add_argument("--wait-load", type=float, help="wait until the 1-min load average is below this (full: 1.5)")
    ap.add_argument("--wait-load-max", dest="wait_load_max_s", type=int, help="... for at most this many seconds")
    ap.add_argument("--out-dir", help="where the results JSON goes (default bench/results)")
    ap.add_argument("--md", help="Markdown report path (default: bench/RESULTS.md in full mode, else next to the JSON)")
    args = ap.parse_args()
    cfg = make_config(args)
    for var in peers.UNSET_ENV:
        os.environ.pop(var, None)
    for var in [v for v in os.environ if v.startswith("STOREGATE_")]:
        os.environ.pop(var)  # storegate runs with its defaults
    if shutil.which("wrk") is None:
        print("wrk not found: install it (as root: apt-get install -y wrk)", file=sys.stderr)
        return 2
    out_dir = (Path(args.out_dir) if args.out_dir else HERE / "results").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    cfg.profile_dir = str(out_dir / "profiles")
    only = args.only or ["floor", "create", "stream", "stored", "soak"]

    load_wait = wait_for_load(cfg.wait_load, cfg.wait_load_max_s)
    started = datetime.now(UTC)
    cfg.stem = started.strftime("%Y-%m-%dT%H%MZ") + ("-quick" if cfg.mode == "quick" else "")
    t0 = time.monotonic()
    meta = machine_meta() | {"load_wait": load_wait, "loadavg_start": os.getloadavg()}
    log(f"{cfg.mode} run; load average {meta['loadavg_start']}; litellm={'on' if cfg.litellm else 'off'}")
    (HERE / "results").mkdir(exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="tmp-", dir=HERE / "results"))
    data: dict[str, Any] = {
        "date_utc": started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "mode": cfg.mode,
        "command": os.environ.get("BENCH_RUN_COMMAND") or "bench/harness.py " + " ".join(sys.argv[1:]),
        "config": vars(cfg),
        "machine": meta,
        "scenarios": {},
        "skipped": {},
    }
    failures: dict[str, str] = {}
    pg: stores.Postgres | None = None

    def attempt(key: str, fn: Callable[[], Any]) -> Any:
        """One scenario; a failure is recorded and the others still run (the exit code says so)."""
        try:
            return fn()
        except Exception as exc:
            log(f"{key} FAILED: {type(exc).__name__}: {str(exc)[:2000]}")
            failures[key] = f"{type(exc).__name__}: {str(exc)[:2000]}"
            return None

    def stored(kind: str) -> dict[str, Any] | None:
        nonlocal pg
        if kind == "postgres":
            reason = stores.Postgres.unavailable_reason()
            if reason:
                log(f"PostgreSQL skipped: {reason}")
                data["skipped"]["postgres"] = reason
                return None
            pg = stores.Postgres(log)
            pg.start()
            meta["postgresql"] = pg.version()
        sc: Scenario | None = None
        try:
            sc = stored_scenario(kind, cfg, tmp, pg if kind == "postgres" else None)
            result = run_scenario(sc, cfg, tmp)
            try:
                urls = {lab: info["url"] for lab, info in sc.extra["stores"].items()}
                evidence = stores.list_evidence(kind, urls, sc.workloads, per_batch=20 if cfg.mode == "quick" else 100,
                                                rounds=2 if cfg.mode == "quick" else 6)  # fmt: skip
            except Exception as exc:  # evidence only: keep the run
                evidence = {lab: {"error": f"{type(exc).__name__}: {exc}"} for lab in sc.workloads}
            result["extra"]["list_query"] = evidence
            return result
        finally:
            if sc is not None:
                for info in sc.extra["stores"].values():
                    if info["url"].startswith("sqlite"):
                        stores.remove_sqlite(info["url"])
            if kind == "postgres" and pg is not None:
                pg.stop()
                pg = None

    try:
        if "floor" in only:
            data["scenarios"]["floor"] = attempt("floor", lambda: run_scenario(floor_scenario(tmp), cfg, tmp))
        if "create" in only:
            if not cfg.litellm:
                data["skipped"]["litellm"] = ("--no-litellm" if args.no_litellm else
                                              "bench/.venv-litellm is not installed (bench/run installs it in full mode)")  # fmt: skip
            data["scenarios"]["create"] = attempt("create", lambda: run_scenario(create_scenario(tmp, cfg), cfg, tmp))
        if "stream" in only:
            data["scenarios"]["stream"] = attempt("stream", lambda: run_scenario(stream_scenario(tmp), cfg, tmp))
        if "stored" in only:
            for kind in cfg.stores:
                data["scenarios"][f"stored-{kind}"] = attempt(f"stored-{kind}", lambda kind=kind: stored(kind))
        if "soak" in only:
            data["soak"] = attempt("soak", lambda: soak(cfg, tmp))
    finally:
        if pg is not None:
            pg.stop()
        if not failures:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            for db in tmp.glob("*.db*"):
                db.unlink(missing_ok=True)
            log(f"kept {tmp} (server logs, request files) for a look at what failed")
    data["scenarios"] = {k: v for k, v in data["scenarios"].items() if v is not None}
    if data.get("soak") is None:
        data.pop("soak", None)
    data["failures"] = failures
    meta["loadavg_end"] = os.getloadavg()
    data["elapsed_s"] = round(time.monotonic() - t0)
    data["targets"] = collect_targets(data)
    stem = cfg.stem
    out = out_dir / f"{stem}.json"
    out.write_text(json.dumps(data, indent=1, default=str) + "\n")
    import mdreport

    md_path = Path(args.md) if args.md else (HERE / "RESULTS.md" if cfg.mode == "full" and not args.out_dir
                                              else out_dir / f"{stem}.md")  # fmt: skip
    mdreport.write(data, out, md_path)
    log(f"wrote {out} and {md_path} in {data['elapsed_s']}s")
    for v in data["targets"]:
        state = "n/a" if v["met"] is None else ("met" if v["met"] else "MISSED")
        log(f"  target {v['id']:<16} {state:<6} measured {mdreport.fmt_ratio(v)}  ({v['target']})")
    return 1 if failures else 0


TARGET_ORDER = ["1a", "1b", "2", "3a", "3b", "3c", "4", "5"]


def collect_targets(data: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for key, sc in data["scenarios"].items():
        for v in sc.get("verdicts", []):
            out.append(v | {"scenario": key})
    if "soak" in data:
        out.extend(v | {"scenario": "soak"} for v in data["soak"]["verdicts"])

    def order(v: dict[str, Any]) -> tuple[int, str]:
        head = v["id"].split(" ")[0]
        for i, prefix in enumerate(TARGET_ORDER):
            if head.startswith(prefix):
                return (i, v["id"])
        return (99, v["id"])

    return sorted(out, key=order)


if __name__ == "__main__":
    sys.exit(main())
