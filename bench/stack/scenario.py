"""Generic side-by-side scenario runner and summariser.

All servers of a scenario run at once (idle ones cost nothing); every round visits every
(target, connections) pair, with the target order rotated per round, so each comparison is
paired with a baseline measured minutes apart at most. Ratios are computed per round against
the same round's baseline, then the median (and min/max) over rounds is reported.
"""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from loadgen import Request, run_wrk, write_script
from procs import Server, probe


@dataclass
class Target:
    name: str
    label: str
    server: str  # name of the Server that answers
    request: Request
    conns: tuple[int, ...] = (64, 1)
    expect_body: bytes | None = None  # exact body the probe must see, if known
    expect_len: int | None = None


@dataclass
class Scenario:
    key: str
    title: str
    baseline: str
    servers: list[Server]
    targets: list[Target]
    extra: dict[str, Any] = field(default_factory=dict)  # scenario-specific measurements


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _check(t: Target, port: int, timeout: float = 15.0) -> dict[str, Any]:
    """Correctness probe; retried while the server (e.g. a granian worker) is still starting."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            status, body = probe(port, t.request.method, t.request.path, t.request.body)
            break
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    ok = status == 200
    if t.expect_body is not None:
        ok = ok and body == t.expect_body
    if t.expect_len is not None:
        ok = ok and len(body) == t.expect_len
    if not ok:
        raise RuntimeError(f"probe of {t.name} failed: status={status} len={len(body)} {body[:200]!r}")
    return {"status": status, "body_bytes": len(body)}


def run_scenario(sc: Scenario, tmp: Path, rounds: int, dur64: int, dur1: int, warmup: int) -> dict[str, Any]:
    ports = {s.name: s.port for s in sc.servers}
    probes: dict[str, Any] = {}
    runs: list[dict[str, Any]] = []
    try:
        for s in sc.servers:
            s.start()
        for s in sc.servers:
            s.wait_ready()
        pgids = {s.name: s.pgid for s in sc.servers}
        for t in sc.targets:
            probes[t.name] = _check(t, ports[t.server])
            script = write_script(t.request, tmp)
            run_wrk(ports[t.server], t.request, script, 64, warmup, pgids)  # warm-up, discarded
        log(f"{sc.key}: servers up, probes ok, warmed up")
        for rnd in range(rounds):
            for conns in (64, 1):
                pool = [t for t in sc.targets if conns in t.conns]
                shift = rnd % len(pool)
                for t in pool[shift:] + pool[:shift]:
                    dur = dur64 if conns > 1 else dur1
                    rec = run_wrk(ports[t.server], t.request, write_script(t.request, tmp), conns, dur, pgids)
                    rec.update(round=rnd, target=t.name, conns=conns, server=t.server)
                    runs.append(rec)
                    log(
                        f"{sc.key} r{rnd} c{conns} {t.name}: {rec['rps']:.0f} req/s "
                        f"p99={rec['p99_us'] / 1000:.2f}ms wrk_cpu={rec['wrk_cpu_pct']:.0f}% err={rec['errors']}"
                    )
    except Exception:
        for s in sc.servers:
            log(f"--- tail of {s.log}:\n{s.log.read_text(errors='replace')[-1500:]}")
        raise
    finally:
        for s in reversed(sc.servers):
            s.stop()
    return {
        "key": sc.key,
        "title": sc.title,
        "baseline": sc.baseline,
        "targets": [
            {
                "name": t.name,
                "label": t.label,
                "server": t.server,
                "conns": list(t.conns),
                "method": t.request.method,
                "path": t.request.path,
            }
            for t in sc.targets
        ],
        "servers": [{"name": s.name, "argv": s.argv} for s in sc.servers],
        "extra": sc.extra,
        "probes": probes,
        "server_log_head": {s.name: s.log.read_text(errors="replace")[:300] for s in sc.servers},
        "runs": runs,
        "summary": summarise(sc, runs),
    }


def _med(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def _cost(run: dict[str, Any], server: str) -> float:
    """Server CPU microseconds per request in one run."""
    return float(run["server_cpu_pct"][server]) / 100.0 / float(run["rps"]) * 1e6


def summarise(sc: Scenario, runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (target, conns): medians over rounds plus paired per-round ratios."""
    rows: list[dict[str, Any]] = []
    for conns in (64, 1):
        base = {r["round"]: r for r in runs if r["target"] == sc.baseline and r["conns"] == conns}
        for t in sc.targets:
            mine = [r for r in runs if r["target"] == t.name and r["conns"] == conns]
            if not mine:
                continue
            ratios = [r["rps"] / base[r["round"]]["rps"] for r in mine if r["round"] in base]
            srv = [r["server_cpu_pct"][t.server] for r in mine]
            cost_ratios = [
                _cost(r, t.server) / _cost(base[r["round"]], base[r["round"]]["server"])
                for r in mine
                if r["round"] in base
            ]
            rows.append(
                {
                    "target": t.name,
                    "label": t.label,
                    "conns": conns,
                    "rounds": len(mine),
                    "rps_median": _med([r["rps"] for r in mine]),
                    "rps_all": [round(r["rps"], 1) for r in mine],
                    "ratio_median": _med(ratios) if ratios else None,
                    "ratio_min": min(ratios) if ratios else None,
                    "ratio_max": max(ratios) if ratios else None,
                    "p50_ms": _med([r["p50_us"] / 1000 for r in mine]),
                    "p99_ms": _med([r["p99_us"] / 1000 for r in mine]),
                    "server_cpu_pct": _med(srv),
                    "cpu_us_per_req": _med([_cost(r, t.server) for r in mine]),
                    "cpu_cost_ratio_median": _med(cost_ratios) if cost_ratios else None,
                    "cpu_cost_ratio_min": min(cost_ratios) if cost_ratios else None,
                    "cpu_cost_ratio_max": max(cost_ratios) if cost_ratios else None,
                    "other_cpu_pct": {
                        n: _med([r["server_cpu_pct"][n] for r in mine])
                        for n in mine[0]["server_cpu_pct"]
                        if n != t.server
                    },
                    "wrk_cpu_pct": _med([r["wrk_cpu_pct"] for r in mine]),
                    "steal_pct": _med([r["steal_pct"] for r in mine]),
                    "foreign_cpu_pct": _med([r["foreign_cpu_pct"] for r in mine]),
                    "errors": sum(r["errors"] for r in mine),
                }
            )
    return rows
