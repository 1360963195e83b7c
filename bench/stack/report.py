"""Render RESULTS.md from one results dict: header, one table per scenario, and interpretation
paragraphs whose numbers and verdicts are computed from that same run (so text and data agree).
"""

# ruff: noqa: RUF001, RUF003  (× and – are intended: this module writes Markdown for people)
from __future__ import annotations

from pathlib import Path
from typing import Any

Row = dict[str, Any]
Data = dict[str, Any]

# A ratio is a real difference only if its median is outside 1 ± BAND and every round agrees
# on the direction (the min–max over rounds excludes 1.0).
BAND = 0.10
VERDICT_RULE = (
    f"a difference counts when the median ratio is outside 1 ± {BAND:.2f} and every round points the same "
    "way. An alternative beats the chosen option if it has more throughput without costing more CPU per "
    "request, or costs less CPU per request without losing throughput (on a 2-core box, throughput bought "
    "with an extra core is not capacity: production runs one worker per core)."
)


def _sc(data: Data, key: str) -> Data | None:
    return next((s for s in data["scenarios"] if s["key"] == key), None)


def _get(sc: Data | None, target: str, conns: int) -> Row | None:
    if sc is None:
        return None
    return next((r for r in sc["summary"] if r["target"] == target and r["conns"] == conns), None)


def _need(sc: Data | None, target: str, conns: int) -> Row:
    row = _get(sc, target, conns)
    if row is None:
        raise KeyError(f"no row for {target} c={conns}")
    return row


def _ratio(r: Row | None) -> str:
    if r is None or r["ratio_median"] is None:
        return "-"
    return f"{r['ratio_median']:.2f}× ({r['ratio_min']:.2f}–{r['ratio_max']:.2f})"


def _differs(r: Row) -> bool:
    lo, hi, med = r["ratio_min"], r["ratio_max"], r["ratio_median"]
    return bool(abs(med - 1.0) > BAND and not (lo <= 1.0 <= hi))


def _better(r: Row) -> bool:
    return _differs(r) and r["ratio_median"] > 1


def _worse(r: Row) -> bool:
    return _differs(r) and r["ratio_median"] < 1


def _cost_differs(r: Row) -> bool:
    lo, hi, med = r["cpu_cost_ratio_min"], r["cpu_cost_ratio_max"], r["cpu_cost_ratio_median"]
    return bool(abs(med - 1.0) > BAND and not (lo <= 1.0 <= hi))


def _beats(r: Row) -> bool:
    """Does this alternative beat the baseline (see VERDICT_RULE)?"""
    cost_better = _cost_differs(r) and r["cpu_cost_ratio_median"] < 1
    cost_worse = _cost_differs(r) and r["cpu_cost_ratio_median"] > 1
    return (_better(r) and not cost_worse) or (cost_better and not _worse(r))


def _table(sc: Data) -> str:
    lines = [
        f"| target | conns | req/s (median) | req/s ratio vs {sc['baseline']} (median, min–max) "
        "| p50 ms | p99 ms | server CPU % | CPU µs/req (ratio, min–max) | wrk CPU % | errors |",
        "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in sc["summary"]:
        cpu = f"{r['server_cpu_pct']:.0f}"
        if sc["key"] == "proxy" and "upstream" in r["other_cpu_pct"]:
            cpu += f" (+{r['other_cpu_pct']['upstream']:.0f} upstream)"
        cost = (
            f"{r['cpu_us_per_req']:.0f} ({r['cpu_cost_ratio_median']:.2f}×, "
            f"{r['cpu_cost_ratio_min']:.2f}–{r['cpu_cost_ratio_max']:.2f})"
        )
        lines.append(
            f"| {r['label']} | {r['conns']} | {r['rps_median']:,.0f} | {_ratio(r)} | {r['p50_ms']:.2f} "
            f"| {r['p99_ms']:.2f} | {cpu} | {cost} | {r['wrk_cpu_pct']:.0f} | {r['errors']} |"
        )
    return "\n".join(lines)


def _noise(sc: Data) -> str:
    runs = sc["runs"]
    foreign = sorted(r["foreign_cpu_pct"] for r in runs)
    steal = max(r["steal_pct"] for r in runs)
    busy = sum(1 for f in foreign if f > 20)
    return (
        f"Noise: processes outside this benchmark used a median {foreign[len(foreign) // 2]:.0f}% of a core "
        f"(max {foreign[-1]:.0f}%; >20% in {busy} of {len(runs)} runs), steal ≤ {steal:.0f}%."
    )


def interpret_framework(data: Data) -> tuple[str, str]:
    sc, px = _sc(data, "framework"), _sc(data, "proxy")
    a64, a1 = _need(sc, "aiohttp", 64), _need(sc, "aiohttp", 1)
    alts = [t for t in ("uvicorn", "granian") if _get(sc, t, 64)]
    parts = [
        f"At c=64 aiohttp.web served {a64['rps_median']:,.0f} req/s "
        f"({a64['cpu_us_per_req']:.0f} µs of server CPU per request, p99 {a64['p99_ms']:.1f} ms)."
    ]
    floor_better = []
    for t in alts:
        r64, r1 = _need(sc, t, 64), _need(sc, t, 1)
        if _beats(r64) or _beats(r1):
            floor_better.append(r64)
        parts.append(
            f"{r64['label']} ran at {_ratio(r64)} of aiohttp's throughput at c=64 "
            f"({r64['cpu_us_per_req']:.0f} µs CPU/req, i.e. {r64['cpu_cost_ratio_median']:.2f}× aiohttp's; "
            f"p99 {r64['p99_ms']:.1f} ms) and {_ratio(r1)} at c=1 "
            f"(p50 {r1['p50_ms']:.3f} vs {a1['p50_ms']:.3f} ms)."
        )
    g = _get(sc, "granian", 64)
    if g and g["server_cpu_pct"] > 105:
        parts.append(
            f"Granian's Rust I/O thread lets its one worker use {g['server_cpu_pct']:.0f}% CPU, so on "
            "this 2-core box part of its lead is CPU taken from wrk; CPU µs/req is the fairer column."
        )
    raw = _get(sc, "raw", 64)
    if raw:
        fw = [r for r in sc["summary"] if r["target"] != "raw"] if sc else []
        top = max(r["rps_median"] for r in fw if r["conns"] == 64)
        fw_wrk = max(r["wrk_cpu_pct"] for r in fw)
        srv = [r["server_cpu_pct"] for r in fw if r["conns"] == 64]
        parts.append(
            f"wrk ceiling: against a raw uvloop protocol that skips HTTP parsing, the same `wrk -t1 -c64` reached "
            f"{raw['rps_median']:,.0f} req/s ({raw['rps_median'] / top:.1f}× the fastest framework) with wrk at "
            f"{raw['wrk_cpu_pct']:.0f}% of a core, whereas during the framework runs wrk never used more than "
            f"{fw_wrk:.0f}% (servers {min(srv):.0f}–{max(srv):.0f}% at c=64): wrk has headroom and is not what "
            "limits these numbers."
        )
    gp64, gp1 = _get(px, "granian-server", 64), _get(px, "granian-server", 1)
    hot_beats = None
    if gp64 and gp1:
        hot_beats = _beats(gp64) or _beats(gp1)
        parts.append(
            f"On the real hot path (scenario 2: the same aiohttp.ClientSession proxy served by Starlette on "
            f"granian) granian ran at {_ratio(gp64)} of the aiohttp.web proxy's throughput at c=64 and "
            f"{_ratio(gp1)} at c=1, at {gp64['cpu_cost_ratio_median']:.2f}× / {gp1['cpu_cost_ratio_median']:.2f}× "
            "its CPU per request."
        )
    if not floor_better:
        return " ".join(parts), "confirmed"
    names = " and ".join(r["label"].split(" (")[0] for r in floor_better)
    if hot_beats is None:
        return " ".join(parts), f"not confirmed on the bare floor ({names} beats it); hot-path check not run"
    if hot_beats:
        return " ".join(parts), "not confirmed: granian also beats it on the proxied hot path"
    return (
        " ".join(parts),
        f"confirmed for the hot path ({names} beats it on an empty handler, "
        "but that lead does not carry over to the proxy)",
    )


def interpret_proxy(data: Data) -> tuple[str, str]:
    sc = _sc(data, "proxy")
    a64, a1 = _need(sc, "aiohttp-client", 64), _need(sc, "aiohttp-client", 1)
    h64, h1 = _need(sc, "httpx-client", 64), _need(sc, "httpx-client", 1)
    d64, d1 = _need(sc, "direct", 64), _need(sc, "direct", 1)
    parts = [
        f"The aiohttp proxy reaches {1 / d64['ratio_median']:.2f}× the throughput of hitting the upstream "
        f"directly at c=64 ({a64['rps_median']:,.0f} vs {d64['rps_median']:,.0f} req/s; three processes share "
        f"2 cores) and adds {a1['p50_ms'] - d1['p50_ms']:.2f} ms to p50 at c=1; the proxy process spends "
        f"{a64['cpu_us_per_req']:.0f} µs CPU per forwarded request (server and client side of the hop).",
        f"httpx.AsyncClient (sniffio present, its best case) reached {_ratio(h64)} of the aiohttp client's "
        f"throughput at c=64 (p99 {h64['p99_ms']:.0f} ms vs {a64['p99_ms']:.1f} ms) and {_ratio(h1)} at c=1, "
        f"spending {h64['cpu_us_per_req']:.0f} vs {a64['cpu_us_per_req']:.0f} µs CPU per request: httpcore's "
        "pool scans every connection for every request (encode/httpx#3215), so it degrades with concurrency.",
    ]
    n64 = _get(sc, "httpx-nosniffio", 64)
    logs = sc.get("server_log_head", {}) if sc else {}
    if n64 and "sniffio_available=False" in logs.get("proxy-httpx-nosniffio", ""):
        parts.append(
            f"A fresh `pip install httpx` today comes without sniffio (anyio ≥4.12 dropped it) and httpcore 1.0.x "
            f"then retries a failing import on every lock (encode/httpcore#1102): that variant ran at "
            f"{_ratio(n64)} at c=64."
        )
    h = (h64, h1)
    verdict = (
        "not confirmed"
        if any(_beats(r) for r in h)
        else "confirmed"
        if all(_worse(r) for r in h)
        else "confirmed (no measurable difference)"
    )
    return " ".join(parts), verdict


def interpret_sqlite(data: Data) -> tuple[str, str]:
    sc = _sc(data, "sqlite")
    d64, d1 = _need(sc, "direct", 64), _need(sc, "direct", 1)
    t64, t1 = _need(sc, "thread", 64), _need(sc, "thread", 1)
    s64, s1 = _need(sc, "aiosqlite", 64), _need(sc, "aiosqlite", 1)
    parts = [
        f"Reading directly on the event loop served {d64['rps_median']:,.0f} req/s at c=64 "
        f"({d64['cpu_us_per_req']:.0f} µs CPU per request including HTTP, p99 {d64['p99_ms']:.1f} ms).",
        f"asyncio.to_thread with a connection per thread ran at {_ratio(t64)} and aiosqlite at {_ratio(s64)} "
        f"(CPU per request {t64['cpu_cost_ratio_median']:.2f}× and {s64['cpu_cost_ratio_median']:.2f}× direct); "
        f"at c=1 they were {_ratio(t1)} and {_ratio(s1)}, p50 {t1['p50_ms']:.3f} / {s1['p50_ms']:.3f} ms vs "
        f"{d1['p50_ms']:.3f} ms direct.",
    ]
    if s64["server_cpu_pct"] < d64["server_cpu_pct"] - 10:
        parts.append(
            f"aiosqlite funnels every query through its one connection thread, so at c=64 its server used only "
            f"{s64['server_cpu_pct']:.0f}% CPU (direct: {d64['server_cpu_pct']:.0f}%): it waits on thread "
            "hand-offs, not on CPU."
        )
    bare = sc.get("extra", {}).get("bare_read") if sc else None
    if bare:
        parts.append(
            f"A bare random primary-key read of a page-cached row, timed in-process without HTTP, took "
            f"{bare['mean_us']:.1f} µs on average (p99 {bare['p99_us']:.1f} µs): that is how long the direct path "
            "blocks the loop, and it is less than handing the read to another thread and waking the loop again; "
            "under the GIL the extra thread buys no parallelism."
        )
    parts += [
        "Caveat: the direct path blocks the loop for the whole read, so it stays right only while reads are "
        "point lookups on a warm file; the writer thread and WAL checkpoints are not part of this measurement.",
    ]
    rows = (t64, s64, t1, s1)
    if any(_beats(r) for r in rows):
        verdict = "not confirmed"
    elif _worse(t64) and _worse(s64):
        verdict = "confirmed"
    else:
        verdict = "confirmed (alternatives are not faster)"
    return " ".join(parts), verdict


INTERPRET = {"framework": interpret_framework, "proxy": interpret_proxy, "sqlite": interpret_sqlite}
CHOICE = {
    "framework": "aiohttp.web server",
    "proxy": "aiohttp.ClientSession for the backend",
    "sqlite": "SQLite reads directly on the event loop",
}


def write_markdown(data: Data, path: Path, json_rel: Path) -> None:
    m = data["machine"]
    libs = ", ".join(f"{k} {v}" for k, v in m["libraries"].items() if v)
    cfg = data["config"]
    out = [
        "# Stack benchmark: server, proxy client, SQLite reads",
        "",
        "Generated by `bench/stack/stack_bench.py` from the run recorded in "
        f"[`{json_rel}`]({json_rel}); do not edit by hand, re-run instead.",
        "",
        f"- **Date (UTC):** {data['date_utc']} (run took {data['elapsed_s']:.0f} s)",
        f"- **Command:** `{data['command']}` (from the repo root)",
        f"- **Machine:** nproc={m['nproc']}, {m['cpu_model']}, {m['mem_gib']} GiB, Linux {m['kernel']}, "
        f"load avg at start {m['loadavg_start'][0]:.2f}",
        f"- **Python:** {m['python_impl']} {m['python']}; SQLite {m['sqlite']}; {m['wrk']}",
        f"- **Libraries:** {libs}; aiohttp C parser: {m['aiohttp_c_parser']}",
        "- **Method:** each server is its own process on 127.0.0.1 (one worker, uvloop); load is `wrk -t1` "
        f"for {cfg['duration_c64_s']} s at 64 connections and {cfg['duration_c1_s']} s at 1 connection, after a "
        f"{cfg['warmup_s']} s warm-up per target; {cfg['rounds']} rounds, target order rotated each round, and each "
        "run starts once all servers are idle. Ratios are computed per round against that round's baseline; the "
        "median (min–max) over rounds is shown. CPU µs/req is the server process group's CPU time divided by "
        "requests served (less sensitive to neighbours than req/s). Absolute numbers are for reading only: this "
        "is a shared, noisy 2-core VM where wrk takes one core and the server(s) the other.",
        f"- **Verdict rule:** {VERDICT_RULE}",
        "",
    ]
    verdicts = []
    for sc in data["scenarios"]:
        text, verdict = INTERPRET[sc["key"]](data)
        verdicts.append((sc["key"], verdict))
        out += [
            f"## {sc['title']}",
            "",
            _table(sc),
            "",
            text,
            "",
            _noise(sc),
            "",
            f"**Verdict — {CHOICE[sc['key']]}: {verdict}.**",
            "",
        ]
    out += ["## Summary", ""]
    out += [f"- {CHOICE[k]}: **{v}**" for k, v in verdicts]
    out.append("")
    path.write_text("\n".join(out))
