"""Process handling for the benchmark: free ports, server start/readiness/stop, CPU accounting.

Every server is started in its own session, so its process group id equals the PID we got
from Popen; CPU time is summed over that group (granian forks a worker) and the group is
stopped by that PID only.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from common import HOST

CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    name: str
    argv: list[str]
    port: int
    log: Path
    cwd: str | None = None
    env: dict[str, str] | None = None  # extra environment variables
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                self.argv,
                cwd=self.cwd,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                env={**os.environ, **(self.env or {})},
            )

    @property
    def pgid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited early: {self.log.read_text()[-2000:]}")
            with contextlib.suppress(OSError), socket.create_connection((HOST, self.port), timeout=0.5):
                return
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not listening on {self.port} after {timeout}s")

    def stop(self) -> None:
        """SIGTERM the process group we created (pgid == our child's PID), then SIGKILL it."""
        if self.proc is None or self.proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pgid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        # Reap stragglers of the same group (e.g. a granian worker) that outlived the leader.
        for _ in range(50):
            if not group_pids(self.pgid):
                break
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pgid, signal.SIGKILL)
            time.sleep(0.1)


def probe(port: int, method: str, path: str, body: bytes | None) -> tuple[int, bytes]:
    """One HTTP request; returns (status, body)."""
    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    try:
        headers = {"Content-Type": "application/json"} if body is not None else {}
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def _stat_fields(pid: str) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()  # fields from #3 (state) on


def group_pids(pgid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            f = _stat_fields(entry)
            if f is not None and int(f[2]) == pgid and f[0] != "Z":
                out.append(int(entry))
    return out


def group_cpu_seconds(pgids: list[int]) -> dict[int, float]:
    """utime+stime (seconds) summed over live processes of each process group."""
    totals = dict.fromkeys(pgids, 0.0)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        f = _stat_fields(entry)
        if f is None:
            continue
        pg = int(f[2])
        if pg in totals:
            totals[pg] += (int(f[11]) + int(f[12])) / CLK_TCK
    return totals


def quiesce(pgids: list[int], threshold_pct: float = 15.0, timeout: float = 5.0) -> float:
    """Wait until every server group is nearly idle (e.g. a slow proxy still draining the
    previous run's backlog); returns the seconds waited. 15% of a 0.1 s window = 2 clock ticks."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        a = group_cpu_seconds(pgids)
        time.sleep(0.1)
        b = group_cpu_seconds(pgids)
        if all(100.0 * (b[p] - a[p]) / 0.1 < threshold_pct for p in pgids):
            break
    return time.monotonic() - t0


def machine_cpu() -> dict[str, int]:
    """Aggregate jiffies from /proc/stat (to report steal and idle per run)."""
    parts = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    names = ["user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal"]
    return {n: int(v) for n, v in zip(names, parts, strict=False)}
