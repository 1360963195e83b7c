"""How much slower does storegate's code run when it has not run for a few milliseconds?

    .venv/bin/python bench/cold_path.py [--rounds 2] [--calls 150]

In one process, no server: times one call of `service.call.prepare` (a streamed create's parse and
checks, the step between the request's body and the backend) right after the process spent a gap
running something else: a Python loop that only reads the clock (it touches almost no memory), so
whatever the call finds evicted was evicted by the machine, not by the gap's own work. Beside it, a
call with a tiny footprint (framing one SSE chunk, as the bare relay's kind of work). Prints the p50
per gap. At one stream at a time (TTFT at c=1) a request arrives ~10 ms after the process last ran
(the previous stream's last chunk), which is where this puts the request path.
Measured 2026-11-27 (bench/analysis/2026-11-27T1301Z.md). Nothing here is judged.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import types
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE.parent / "src")]

import harness  # noqa: E402

from storegate.backends.router import Router  # noqa: E402
from storegate.ids import IdMinter  # noqa: E402
from storegate.service.call import prepare  # noqa: E402

GAPS_MS = (0.0, 0.1, 0.3, 1.0, 3.0, 10.0, 30.0)


def spin(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=150, help="per gap and round")
    args = ap.parse_args()

    backend = types.SimpleNamespace(name="bench", config=types.SimpleNamespace(models=None, pass_store=False))
    router = Router([backend])  # type: ignore[list-item]
    minter = IdMinter()
    raw = harness.chat_body(True, 3, stream=True)
    frame = b'data: {"id":"chatcmpl-x","choices":[{"delta":{"content":"word"}}]}\n\n'

    def call_prepare() -> None:
        prepare(raw, project="default", request_id="req", router=router, minter=minter, store_default=False)

    def call_frame() -> None:
        b"%x\r\n%b\r\n" % (len(frame), frame)

    clock = time.perf_counter_ns
    print("gap (ms)   prepare p50 (us)   frame p50 (us)")
    for rnd in range(args.rounds):
        for gap_ms in GAPS_MS:
            cost: dict[str, list[int]] = {"prepare": [], "frame": []}
            for _ in range(args.calls):
                for name, fn in (("prepare", call_prepare), ("frame", call_frame)):
                    spin(gap_ms / 1000)
                    t0 = clock()
                    fn()
                    cost[name].append(clock() - t0)
            p50 = {name: statistics.median(xs) / 1000 for name, xs in cost.items()}
            print(f"{gap_ms:8.1f}   {p50['prepare']:16.1f}   {p50['frame']:14.2f}   (round {rnd + 1})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
