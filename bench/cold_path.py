"""How much slower does storegate's code run when it has not run for a few milliseconds?

    .venv/bin/python bench/cold_path.py [--rounds 2] [--calls 150] [--gap spin|sleep|churn]

In one process, no server: times one call of `service.call.prepare` (a streamed create's parse and
checks, the step between the request's body and the backend) right after the process spent a gap
doing something else. With `--gap spin` (the default) that is a Python loop that only reads the
clock and touches almost no memory, so whatever the call finds evicted was evicted by the machine,
not by the gap's own work; `sleep` idles, `churn` rewrites 60 MB of memory. Beside it, a call with
a tiny footprint (framing one SSE chunk for the client's connection, a few bytes of work). A first
round is run and discarded (first calls), and the gaps are visited in a shuffled order per round.
Prints the p50 per gap.

At one stream at a time (TTFT at c=1) the request path's code last ran one stream earlier (~0.5 s);
in between the process relayed a chunk every 10 ms and idled. That is the 3-30 ms rows.
Measured 2026-11-27 (bench/analysis/2026-11-27T1301Z.md). Nothing here is judged.
"""

from __future__ import annotations

import argparse
import random
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


_MEMORY = bytearray(64 << 20)


def churn(seconds: float) -> None:
    end, at = time.perf_counter() + seconds, 0
    while time.perf_counter() < end:
        _MEMORY[at : at + (1 << 20)] = b"x" * (1 << 20)
        at = (at + (1 << 20)) % (60 << 20)


GAPS = {"spin": spin, "sleep": time.sleep, "churn": churn}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--calls", type=int, default=150, help="per gap and round")
    ap.add_argument("--gap", choices=sorted(GAPS), default="spin", help="what the process does in a gap")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    gap = GAPS[args.gap]
    shuffle = random.Random(args.seed).shuffle

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
    print(f"gap: {args.gap}")
    print("gap (ms)   prepare p50 (us)   frame p50 (us)")
    for rnd in range(args.rounds + 1):  # round 0 warms up and is not printed
        rows = []
        order = list(GAPS_MS)
        shuffle(order)
        for gap_ms in order:
            cost: dict[str, list[int]] = {"prepare": [], "frame": []}
            for _ in range(args.calls if rnd else 20):
                for name, fn in (("prepare", call_prepare), ("frame", call_frame)):
                    gap(gap_ms / 1000)
                    t0 = clock()
                    fn()
                    cost[name].append(clock() - t0)
            p50 = {name: statistics.median(xs) / 1000 for name, xs in cost.items()}
            rows.append((gap_ms, p50))
        for gap_ms, p50 in sorted(rows) if rnd else []:
            print(f"{gap_ms:8.1f}   {p50['prepare']:16.1f}   {p50['frame']:14.2f}   (round {rnd})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
