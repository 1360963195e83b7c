"""Is an event loop fair once it is saturated? A bare aiohttp handler that burns CPU per request
(300 us by default, so one loop saturates at ~2,000-2,500 req/s on this machine, as storegate's list
does), served on uvloop and on asyncio's own loop, each driven by `wrk -t1` at 64 and 256
connections. Prints req/s, p50, p99 and max per run.

    .venv/bin/python bench/loop_fairness.py [--burn-us 300] [--runs 3] [--seconds 5]

Measured 2026-11-26 (bench/analysis/2026-11-26T0709Z.md): at c=64 uvloop's p99 was 54-211 ms and
its max 297-493 ms, asyncio's 32-35 ms and 37-52 ms, at the same throughput. storegate's list tails
come from this, which is why `--event-loop asyncio` exists.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE / "stack")]

from procs import Server, free_port  # noqa: E402  (bench/stack)

APP = """
import sys, time
from aiohttp import web
burn = float(sys.argv[3]) / 1e6
body = b'{"ok":true}'
async def handler(request):
    end = time.perf_counter() + burn
    while time.perf_counter() < end:
        pass
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/{tail:.*}", handler)
if sys.argv[2] == "uvloop":
    import uvloop
    uvloop.install()
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def _wrk(port: int, conns: int, seconds: int) -> str:
    out = subprocess.run(["wrk", "-t1", f"-c{conns}", f"-d{seconds}s", "--latency", f"http://127.0.0.1:{port}/x"],
                         capture_output=True, text=True, timeout=seconds + 60, check=True).stdout  # fmt: skip
    rps = next(ln.split()[1] for ln in out.splitlines() if ln.startswith("Requests/sec"))
    pct = {ln.split()[0]: ln.split()[1] for ln in out.splitlines() if ln.strip().startswith(("50%", "99%"))}
    mx = next(ln.split()[3] for ln in out.splitlines() if ln.strip().startswith("Latency"))
    return f"{float(rps):>9,.0f} req/s  p50 {pct['50%']:>9}  p99 {pct['99%']:>9}  max {mx:>9}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--burn-us", type=int, default=300)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--seconds", type=int, default=5)
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="storegate-loopfair-"))
    (tmp / "app.py").write_text(APP)
    for loop in ("uvloop", "asyncio"):
        port = free_port()
        server = Server(name=loop, argv=[sys.executable, str(tmp / "app.py"), str(port), loop, str(args.burn_us)],
                        port=port, log=tmp / f"{loop}.log")  # fmt: skip
        server.start()
        try:
            server.wait_ready()
            time.sleep(0.5)
            for conns in (64, 256):
                for _ in range(args.runs):
                    print(f"{loop:<8} c={conns:<4}{_wrk(port, conns, args.seconds)}", flush=True)
        finally:
            server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
