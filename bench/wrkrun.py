"""Load runs: `wrk -t1` with seq.lua (time- or count-bounded), and the SSE client for streams.

Each run measures, around itself, the CPU of every server process (from /proc), wrk's own CPU
(RUSAGE_CHILDREN) and the machine's busy time, so a reader can tell whether the load generator or
a neighbour limited the numbers. CPU helpers come from bench/stack/procs.py.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
SEQ_LUA = HERE / "seq.lua"
PY = sys.executable

from procs import machine_cpu, quiesce  # noqa: E402  (bench/stack, on sys.path via harness)

CpuSources = dict[str, Callable[[], float]]


def write_lines(path: Path, lines: list[tuple[str, str, bytes | None]]) -> Path:
    """seq.lua's request file: METHOD<TAB>PATH[<TAB>BODY] per line."""
    out = []
    for method, target, body in lines:
        assert "\t" not in target and "\n" not in target
        if body is None:
            out.append(f"{method}\t{target}")
        else:
            text = body.decode()
            assert "\t" not in text and "\n" not in text
            out.append(f"{method}\t{target}\t{text}")
    path.write_text("\n".join(out) + "\n")
    return path


def _cpu(sources: CpuSources) -> dict[str, float]:
    return {k: f() for k, f in sources.items()}


def _machine_busy(m0: dict[str, int], m1: dict[str, int]) -> tuple[float, float]:
    """(busy % of one core, steal % of one core) between two /proc/stat readings."""
    total = sum(m1.values()) - sum(m0.values()) or 1
    ncpu = os.cpu_count() or 1
    busy = sum(m1[k] - m0[k] for k in ("user", "nice", "system", "irq", "softirq"))
    return 100.0 * ncpu * busy / total, 100.0 * ncpu * (m1.get("steal", 0) - m0.get("steal", 0)) / total


def _finish(rec: dict[str, Any], wall: float, cpu0: dict[str, float], cpu1: dict[str, float],
            m0: dict[str, int], m1: dict[str, int], client_cpu: float) -> dict[str, Any]:  # fmt: skip
    rec["server_cpu_pct"] = {k: round(100.0 * (cpu1[k] - cpu0[k]) / wall, 1) for k in cpu0}
    rec["client_cpu_pct"] = round(100.0 * client_cpu / wall, 1)
    busy, steal = _machine_busy(m0, m1)
    ours = rec["client_cpu_pct"] + sum(rec["server_cpu_pct"].values())
    rec["machine_busy_pct"] = round(busy, 1)
    rec["foreign_cpu_pct"] = round(max(0.0, busy - ours), 1)
    rec["steal_pct"] = round(steal, 1)
    n = max(int(rec.get("requests") or rec.get("streams") or 0), 1)
    rec["server_cpu_us_per_req"] = {k: round(1e6 * (cpu1[k] - cpu0[k]) / n, 1) for k in cpu0}
    return rec


def run_wrk(url: str, lines_file: Path, conns: int, duration_s: float, limit: int,
            cpu: CpuSources, quiesce_pgids: list[int] | None = None) -> dict[str, Any]:  # fmt: skip
    """One `wrk -t1` run. limit > 0: count-bounded (stops after `limit` responses; duration_s is
    then only a ceiling); else time-bounded by duration_s (whole seconds: wrk's -d)."""
    waited = quiesce(quiesce_pgids) if quiesce_pgids else 0.0
    secs = max(1, round(duration_s))
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{secs}s", "--timeout", "10s", "-s", str(SEQ_LUA), url,
            "--", str(lines_file), str(limit)]  # fmt: skip
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = _cpu(cpu)
    m0 = machine_cpu()
    t0 = time.monotonic()
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = t0 + secs + 60
    for line in proc.stdout:
        lines.append(line)
        if line.strip() == "LIMIT":
            proc.send_signal(signal.SIGINT)
        if time.monotonic() > deadline:
            break
    try:
        proc.wait(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    wall = time.monotonic() - t0
    m1 = machine_cpu()
    cpu1 = _cpu(cpu)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    err = proc.stderr.read() if proc.stderr else ""
    line = next((ln for ln in lines if ln.startswith("JSON:")), None)
    if line is None:
        raise RuntimeError(f"wrk failed rc={proc.returncode}: {''.join(lines)[-800:]} {err[-800:]}")
    rec: dict[str, Any] = json.loads(line[5:])
    if limit > 0 and rec["counted"] > 0 and rec["counted_us"] > 0:
        # Count-bounded: wrk's own duration would include the wait for our SIGINT.
        rec["rps"] = rec["counted"] / (rec["counted_us"] / 1e6)
        rec["measured_s"] = rec["counted_us"] / 1e6
    else:
        rec["rps"] = rec["requests"] / (rec["duration_us"] / 1e6)
        rec["measured_s"] = rec["duration_us"] / 1e6
    rec["errors"] = sum(rec[k] for k in ("err_connect", "err_read", "err_write", "err_status", "err_timeout"))
    rec["quiesce_wait_s"] = round(waited, 2)
    client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    # CPU shares over the measured window (count-bounded runs idle after the limit: use wall up to it).
    window = min(wall, rec["measured_s"] + 0.05) if limit > 0 else wall
    return _finish(rec, window, cpu0, cpu1, m0, m1, client)


def run_sse(url: str, body: bytes, conns: int, duration_s: float, expect_chunks: int, cpu: CpuSources,
            quiesce_pgids: list[int] | None = None, tmp: Path | None = None) -> dict[str, Any]:  # fmt: skip
    """One run of sse_client.py (its own process, uvloop + aiohttp): `conns` concurrent streams,
    each worker starting a new one as soon as its last ended, for duration_s."""
    waited = quiesce(quiesce_pgids) if quiesce_pgids else 0.0
    body_file = (tmp or Path("/tmp")) / f"sse-body-{os.getpid()}.json"
    body_file.write_bytes(body)
    argv = [PY, str(HERE / "sse_client.py"), url, str(body_file), str(conns), str(duration_s), str(expect_chunks)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = _cpu(cpu)
    m0 = machine_cpu()
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    wall = time.monotonic() - t0
    m1 = machine_cpu()
    cpu1 = _cpu(cpu)
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON:")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"sse_client failed rc={out.returncode}: {out.stdout[-800:]} {out.stderr[-800:]}")
    rec: dict[str, Any] = json.loads(line[5:])
    rec["quiesce_wait_s"] = round(waited, 2)
    client = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return _finish(rec, wall, cpu0, cpu1, m0, m1, client)
