"""wrk driver: writes a Lua script that prints a JSON summary, runs wrk, and measures CPU around it.

wrk's CPU comes from RUSAGE_CHILDREN (it is the only child reaped during the run); server CPU
comes from /proc for each server process group; machine idle/steal from /proc/stat.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from procs import group_cpu_seconds, machine_cpu, quiesce

_DONE = r"""
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "JSON:{\"requests\":%d,\"duration_us\":%d,\"bytes\":%d,\"p50_us\":%d,\"p90_us\":%d," ..
    "\"p99_us\":%d,\"max_us\":%d,\"mean_us\":%.1f,\"err_connect\":%d,\"err_read\":%d," ..
    "\"err_write\":%d,\"err_status\":%d,\"err_timeout\":%d}\n",
    summary.requests, summary.duration, summary.bytes,
    latency:percentile(50), latency:percentile(90), latency:percentile(99), latency.max, latency.mean,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    body: bytes | None = None

    def lua(self) -> str:
        if self.body is None:
            return _DONE
        text = self.body.decode()
        assert "]==]" not in text
        return (
            f'wrk.method = "{self.method}"\n'
            f"wrk.body = [==[{text}]==]\n"
            'wrk.headers["Content-Type"] = "application/json"\n' + _DONE
        )


def write_script(req: Request, tmp: Path) -> Path:
    path = tmp / f"wrk_{req.method.lower()}_{abs(hash(req)) % 10**8}.lua"
    path.write_text(req.lua())
    return path


def run_wrk(
    port: int, req: Request, script: Path, conns: int, duration_s: int, pgids: dict[str, int]
) -> dict[str, Any]:
    """One bounded wrk run (-t1); returns wrk's summary plus CPU use of wrk and of each server."""
    url = f"http://127.0.0.1:{port}{req.path}"
    waited = quiesce(list(pgids.values()))
    argv = ["wrk", "-t1", f"-c{conns}", f"-d{duration_s}s", "--timeout", "5s", "-s", str(script), url]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu0 = group_cpu_seconds(list(pgids.values()))
    m0 = machine_cpu()
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=duration_s + 30, check=False)
    wall = time.monotonic() - t0
    m1 = machine_cpu()
    cpu1 = group_cpu_seconds(list(pgids.values()))
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON:")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed rc={out.returncode}: {out.stdout[-500:]} {out.stderr[-500:]}")
    rec: dict[str, Any] = json.loads(line[5:])
    secs = rec["duration_us"] / 1e6
    rec["rps"] = rec["requests"] / secs
    rec["quiesce_wait_s"] = round(waited, 2)
    rec["errors"] = sum(rec[k] for k in rec if k.startswith("err_"))
    wrk_cpu = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    rec["wrk_cpu_pct"] = 100.0 * wrk_cpu / wall
    rec["server_cpu_pct"] = {name: 100.0 * (cpu1[pg] - cpu0[pg]) / wall for name, pg in pgids.items()}
    # Machine-wide view in % of one core (2 cores = 200%): what else ran during this run.
    total = sum(m1.values()) - sum(m0.values()) or 1
    ncpu = os.cpu_count() or 1
    mach = {k: 100.0 * ncpu * (m1[k] - m0[k]) / total for k in m1}
    rec["machine_pct"] = {k: round(v, 1) for k, v in mach.items()}
    ours = rec["wrk_cpu_pct"] + sum(rec["server_cpu_pct"].values())
    rec["foreign_cpu_pct"] = max(0.0, mach["user"] + mach["nice"] + mach["system"] - ours)
    rec["steal_pct"] = mach.get("steal", 0.0)
    return rec
