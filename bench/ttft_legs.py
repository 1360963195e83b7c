"""Where does a stream's time to first chunk go? Direct, through the bare TCP relay and through
storegate (its defaults), at 1 and 64 concurrent streams, each time to first chunk split into three
legs by wall-clock stamps the fake backend puts in the first chunk (`fakeup.py --stamp`):

- in:      the client sends the request -> the backend has read it;
- backend: the backend's own wait before it writes the first chunk (10 ms here, as in bench/run);
- out:     the backend writes the first chunk -> the client has read it.

    .venv/bin/python bench/ttft_legs.py [--rounds 3] [--seconds 6] [--serve-arg=--event-loop=asyncio]

Prints each run, then per target and concurrency the medians over rounds of each run's p50, and
what storegate and the relay add to each leg over direct. All processes run on this machine, so the
stamps share one clock. The targets run in an order rotated per round; nothing here is judged,
bench/run's TTFT target is. Measured 2026-11-26 (bench/analysis/2026-11-26T1130Z-ttft-legs.md).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "stack")]

import harness  # noqa: E402
from procs import Server, free_port  # noqa: E402  (bench/stack)

LEGS = ("ttft", "leg_in", "leg_backend", "leg_out")


def run(port: int, body: Path, conns: int, seconds: float) -> dict[str, Any]:
    argv = [harness.PY, str(HERE / "sse_client.py"), f"http://{harness.HOST}:{port}/v1/chat/completions",
            str(body), str(conns), str(seconds), str(harness.CHUNKS), "--legs"]  # fmt: skip
    out = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60, check=False)
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("JSON:")), None)
    if out.returncode != 0 or line is None:
        raise RuntimeError(f"sse_client failed rc={out.returncode}: {out.stdout[-800:]} {out.stderr[-800:]}")
    rec: dict[str, Any] = json.loads(line[5:])
    if rec["errors"] or rec["bad_chunk_count"] or rec["leg_in"].get("n", 0) != rec["streams"]:
        raise RuntimeError(f"bad run on port {port}: {line[:600]}")
    return rec


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--seconds", type=float, default=6.0, help="per run at 64 streams (runs at 1 take 2/3)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `storegate serve` argument")
    ap.add_argument("--json", type=Path, help="also write every run here")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="storegate-legs-"))
    fake_port = free_port()
    fake = Server(name="fake", port=fake_port, log=tmp / "fake.log", cwd=str(HERE), argv=[
        harness.PY, str(HERE / "fakeup.py"), str(fake_port), "--chunks", str(harness.CHUNKS),
        "--delay", str(harness.CHUNK_DELAY), "--stamp",
    ])  # fmt: skip
    relay = harness.relay_server(tmp, fake_port)
    sg = harness.storegate_server("storegate", tmp, f"sqlite:///{tmp / 'legs.db'}",
                                  f"http://{harness.HOST}:{fake_port}/v1")  # fmt: skip
    sg.argv += args.serve_arg
    servers = [fake, relay, sg]
    body = tmp / "body.json"
    body.write_bytes(harness.chat_body(True, 3, stream=True))
    runs: list[dict[str, Any]] = []
    try:
        harness.start_servers(servers, sg.port)
        targets = [("direct", fake_port), ("relay", relay.port), ("storegate", sg.port)]
        for _, port in targets:  # warm every path once
            run(port, body, 8, 1.5)
        for rnd in range(args.rounds):
            order = targets[rnd % 3 :] + targets[: rnd % 3]
            for conns in (64, 1):
                for name, port in order:
                    rec = run(port, body, conns, args.seconds if conns > 1 else args.seconds * 2 / 3)
                    p50 = {leg: rec[leg]["p50_ms"] for leg in LEGS}
                    runs.append({"round": rnd, "target": name, "conns": conns, "p50_ms": p50,
                                 "streams": rec["streams"]})  # fmt: skip
                    print(f"round {rnd} {name:9s} c={conns:<2d} " + "  ".join(
                        f"{leg} {p50[leg]:6.2f}" for leg in LEGS) + " ms (p50)", flush=True)  # fmt: skip
    finally:
        for server in reversed(servers):
            server.stop()
    print(f"\nMedian over {args.rounds} rounds of each run's p50, ms; +x: added over direct")
    print(f"| target | c | {' | '.join(LEGS)} |\n|---|---:|" + "---:|" * len(LEGS))
    for conns in (64, 1):
        base = {leg: statistics.median(r["p50_ms"][leg] for r in runs
                                       if r["target"] == "direct" and r["conns"] == conns) for leg in LEGS}  # fmt: skip
        for name in ("direct", "relay", "storegate"):
            mine = {leg: statistics.median(r["p50_ms"][leg] for r in runs
                                           if r["target"] == name and r["conns"] == conns) for leg in LEGS}  # fmt: skip
            cells = [f"{mine[leg]:.2f}" + ("" if name == "direct" else f" ({mine[leg] - base[leg]:+.2f})")
                     for leg in LEGS]  # fmt: skip
            print(f"| {name} | {conns} | {' | '.join(cells)} |")
    if args.json:
        args.json.write_text(json.dumps({"serve_args": args.serve_arg, "runs": runs}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
