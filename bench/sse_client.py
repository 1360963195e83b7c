"""Streaming load client: `python sse_client.py URL BODY_FILE CONNS SECONDS EXPECT_CHUNKS [--legs]`.

CONNS workers (uvloop, one aiohttp session with CONNS keep-alive connections) each POST the body,
read the SSE stream as it arrives and start the next stream when it ends, until SECONDS have passed
(streams under way then are finished and counted). Per stream it records the time to the first data
event (TTFT, from just before the request is sent) and every gap between consecutive data events;
events that arrive in one read share a timestamp. Prints one `JSON:{...}` line with percentiles.

With `--legs`, against `fakeup.py --stamp` (directly or through a proxy that passes
system_fingerprint on), each first chunk's two stamps split its TTFT into three legs, wall-clock
on this machine: `leg_in` (request sent -> the backend has it), `leg_backend` (-> the backend sent
the first chunk) and `leg_out` (-> this client read it).
"""

from __future__ import annotations

import asyncio
import resource
import sys
import time
from itertools import pairwise
from pathlib import Path
from typing import Any

import aiohttp
import orjson


def pct(xs: list[float], p: float) -> float:
    if not xs:
        return float("nan")
    k = min(len(xs) - 1, max(0, round(p / 100 * (len(xs) - 1))))
    return xs[k]


def summary(xs: list[float]) -> dict[str, float]:
    xs.sort()
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "p50_ms": pct(xs, 50) * 1e3, "p90_ms": pct(xs, 90) * 1e3,
            "p99_ms": pct(xs, 99) * 1e3, "max_ms": xs[-1] * 1e3, "mean_ms": sum(xs) / len(xs) * 1e3}  # fmt: skip


def _legs(event: bytes, sent: float, received: float) -> tuple[float, float, float] | None:
    """(in, backend, out) from a first event's "ARRIVED/SENT" system_fingerprint, if it has one."""
    try:
        arrived, first = map(float, orjson.loads(event[6:])["system_fingerprint"].split("/"))
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError):
        return None
    return arrived - sent, first - arrived, received - first


async def main(url: str, body: bytes, conns: int, seconds: float, expect: int,
               legs: bool = False) -> dict[str, Any]:  # fmt: skip
    ttfts: list[float] = []
    split: list[tuple[float, float, float]] = []
    gaps: list[float] = []
    totals: list[float] = []
    bad_count = 0
    errors: dict[str, int] = {}
    streams = 0
    deadline = time.perf_counter() + seconds
    connector = aiohttp.TCPConnector(limit=conns, keepalive_timeout=60)
    headers = {"Content-Type": "application/json"}
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            nonlocal bad_count, streams
            while time.perf_counter() < deadline:
                t0 = time.perf_counter()
                wall0 = time.time()
                stamps: list[float] = []
                done = False
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        if resp.status != 200:
                            key = f"status_{resp.status}"
                            errors[key] = errors.get(key, 0) + 1
                            await resp.read()
                            await asyncio.sleep(0.01)
                            continue
                        tail = b""
                        async for data in resp.content.iter_any():
                            now = time.perf_counter()
                            buf = tail + data
                            events = buf.split(b"\n\n")
                            tail = events.pop()
                            for ev in events:
                                if ev.startswith(b"data: [DONE]"):
                                    done = True
                                elif ev.startswith(b"data: "):
                                    if legs and not stamps:
                                        leg = _legs(ev, wall0, time.time())
                                        if leg is not None:
                                            split.append(leg)
                                    stamps.append(now)
                except (aiohttp.ClientError, TimeoutError) as exc:
                    key = type(exc).__name__
                    errors[key] = errors.get(key, 0) + 1
                    continue
                end = time.perf_counter()
                streams += 1
                if len(stamps) != expect or not done:
                    bad_count += 1
                if stamps:
                    ttfts.append(stamps[0] - t0)
                    gaps.extend(b - a for a, b in pairwise(stamps))
                    totals.append(end - t0)

        t_start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(conns)))
        elapsed = time.perf_counter() - t_start
    ru = resource.getrusage(resource.RUSAGE_SELF)
    extra = {}
    if legs:
        extra = {name: summary([leg[i] for leg in split])
                 for i, name in enumerate(("leg_in", "leg_backend", "leg_out"))}  # fmt: skip
    return {
        **extra,
        "streams": streams,
        "elapsed_s": elapsed,
        "streams_per_s": streams / elapsed,
        "chunks_per_s": len(gaps) / elapsed + streams / elapsed,
        "bad_chunk_count": bad_count,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "ttft": summary(ttfts),
        "gap": summary(gaps),
        "stream_total": summary(totals),
        "client_self_cpu_s": ru.ru_utime + ru.ru_stime,
    }


if __name__ == "__main__":
    url, body_file, conns, seconds, expect = sys.argv[1:6]
    import uvloop

    result = uvloop.run(main(url, Path(body_file).read_bytes(), int(conns), float(seconds), int(expect),
                             legs="--legs" in sys.argv[6:]))  # fmt: skip
    print("JSON:" + orjson.dumps(result).decode(), flush=True)
