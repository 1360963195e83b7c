"""Where a streamed create spends its time inside storegate, one stream at a time (TTFT at c=1).

    .venv/bin/python bench/request_stamps.py [--seconds 20] [--serve-arg=...]

Starts the fake backend and storegate (its defaults, on a fresh SQLite file), with wall-clock stamps
(perf_counter_ns) wrapped around the request's path by monkeypatching, in the storegate process only:

    in       aiohttp's RequestHandler.data_received, with the request's first bytes
    hreq     aiohttp's RequestHandler._handle_request (after its event-loop passes)
    apph     aiohttp's Application._handle (routing, then the middlewares)
    mw1/mw2  storegate's two middlewares (handle, authenticate)
    auth     Keys.authenticate, entered and left (authd)
    handler  the create route
    chat     Chat.create
    pool     StreamPool.request
    fwd      _Connection.start has written the request to the backend
    back     the backend's first bytes (its headers), back2 its second read (the first chunk)
    out      the first frame handed to the client's socket

Prints the p50 and p90 of every step over the streams (the first three are dropped as warm-up), and
`in -> fwd`, the storegate process's share of the way in (aiohttp's steps included). Measured 2026-11-26 (bench/analysis/
2026-11-26T1345Z.md): ~540 us in -> fwd, of which aiohttp's before our first middleware ~190.
The wrapper itself costs a few microseconds per stamp. Nothing here is judged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import textwrap
from itertools import pairwise
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE), str(HERE / "stack")]

import harness  # noqa: E402
from procs import Server, free_port  # noqa: E402  (bench/stack)

STEPS = ("in", "hreq", "apph", "mw1", "mw2", "auth", "authd", "handler", "chat", "pool", "fwd", "back",
         "back2", "out")  # fmt: skip

# Runs as `python -c` in the storegate process: wraps the steps, then `storegate serve`.
WRAPPER = textwrap.dedent("""
    import atexit, json, sys, time
    import aiohttp.web_app as wa, aiohttp.web_protocol as wp
    from aiohttp import web
    from storegate.api import middleware as mw, routes
    from storegate.backends import stream as st
    from storegate.service import chat as chatmod, keys as km

    OUT = sys.argv.pop(1)
    rec, cur, pc = [], {}, time.perf_counter_ns

    def stamp_async(owner, name, step):
        orig = getattr(owner, name)
        async def wrapped(*a, **k):
            cur[step] = pc()
            return await orig(*a, **k)
        setattr(owner, name, wrapped)

    orig_dr = wp.RequestHandler.data_received
    def dr(self, data):
        if data[:4] == b"POST":
            cur.clear(); cur["in"] = pc()
        return orig_dr(self, data)
    wp.RequestHandler.data_received = dr
    stamp_async(wp.RequestHandler, "_handle_request", "hreq")
    stamp_async(wa.Application, "_handle", "apph")
    stamp_async(routes, "create_chat_completion", "handler")
    stamp_async(chatmod.Chat, "create", "chat")
    stamp_async(st.StreamPool, "request", "pool")
    orig_auth = km.Keys.authenticate
    async def auth(self, a):
        cur["auth"] = pc()
        try:
            return await orig_auth(self, a)
        finally:
            cur["authd"] = pc()
    km.Keys.authenticate = auth
    for name, step in (("handle", "mw1"), ("authenticate", "mw2")):
        def make(orig, step):
            @web.middleware
            async def m(request, handler):
                cur[step] = pc()
                return await orig(request, handler)
            return m
        setattr(mw, name, make(getattr(mw, name), step))
    orig_start = st._Connection.start
    def start(self, *a):
        out = orig_start(self, *a)
        cur["fwd"] = pc()
        return out
    st._Connection.start = start
    orig_cdr = st._Connection.data_received
    def cdr(self, data):
        cur.setdefault("back2" if "back" in cur else "back", pc())
        return orig_cdr(self, data)
    st._Connection.data_received = cdr
    orig_send = routes._Client.send
    def send(self, frame):
        if "out" not in cur:
            cur["out"] = pc(); rec.append(dict(cur))
        return orig_send(self, frame)
    routes._Client.send = send

    atexit.register(lambda: open(OUT, "w").write(json.dumps(rec)))  # run_app returns on SIGTERM
    from storegate.cli.main import main
    sys.exit(main(sys.argv[1:]))
""")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=20.0, help="of streams, one at a time (~2 a second)")
    ap.add_argument("--serve-arg", action="append", default=[], help="extra `storegate serve` argument")
    args = ap.parse_args()

    tmp = Path(tempfile.mkdtemp(prefix="storegate-stamps-"))
    stamps = tmp / "stamps.json"
    fake = harness.fake_server(tmp)
    port = free_port()
    sg = Server(name="storegate", port=port, log=tmp / "storegate.log", cwd=str(HERE.parent), argv=[
        harness.PY, "-c", WRAPPER, str(stamps), "serve", "--host", harness.HOST, "--port", str(port),
        "--db", f"sqlite:///{tmp / 'stamps.db'}", "--backend", f"http://{harness.HOST}:{fake.port}/v1",
        "--shutdown-timeout", "1", *args.serve_arg,  # stopped within Server.stop's 5 s, stamps written
    ])  # fmt: skip
    body = tmp / "body.json"
    body.write_bytes(harness.chat_body(True, 3, stream=True))
    try:
        harness.start_servers([fake, sg], port)
        argv = [harness.PY, str(HERE / "sse_client.py"), f"http://{harness.HOST}:{port}/v1/chat/completions",
                str(body), "1", str(args.seconds), str(harness.CHUNKS)]  # fmt: skip
        out = subprocess.run(argv, capture_output=True, text=True, timeout=args.seconds + 60, check=False)
        if out.returncode != 0:
            raise RuntimeError(f"sse_client failed: {out.stdout[-800:]} {out.stderr[-800:]}")
    finally:
        sg.stop()
        fake.stop()
    if not stamps.exists():
        raise SystemExit(f"storegate wrote no stamps: see {tmp / 'storegate.log'}")
    recs = json.loads(stamps.read_text())[3:]
    if not recs:
        raise SystemExit("too few streams to report: run longer (--seconds)")
    print(f"{len(recs)} streams, one at a time; us between steps (p50, p90)")
    # Between each step and the next one the stream reached: a request whose key was known already
    # (Keys.known, no lookup) has no auth steps, and mw2 -> handler covers its whole authentication.
    pairs: dict[tuple[str, str], list[float]] = {}
    for r in recs:
        for a, b in pairwise(step for step in STEPS if step in r):
            pairs.setdefault((a, b), []).append((r[b] - r[a]) / 1000)
    for (a, b), found in sorted(pairs.items(), key=lambda item: STEPS.index(item[0][0])):
        gaps = sorted(found)
        if len(gaps) * 10 >= len(recs):  # a path one stream in ten took, at least
            print(f"  {a:>7} -> {b:<7} {statistics.median(gaps):9.1f} {gaps[int(len(gaps) * 0.9)]:9.1f}")
    ins = [(r["fwd"] - r["in"]) / 1000 for r in recs if "fwd" in r and "in" in r]
    print(
        f"  in -> fwd (the storegate process's share of the way in, aiohttp's included): p50 "
        f"{statistics.median(ins):.1f} us"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
