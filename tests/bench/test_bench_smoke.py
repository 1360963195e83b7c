"""CI smoke of the performance harness: `bench/run --quick` runs end to end and writes its JSON.

It asserts that the harness works, never how fast anything is (timings on a shared CI box mean
nothing). Needs wrk: skipped without it, except under CI, where a missing wrk is a failure.
"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "run"
SCENARIOS = {"floor", "create", "stream", "stored-sqlite"}
TARGETS = {"1a", "1b", "2", "3a", "3b", "3c", "4 ttft c=1", "4 gap c=1", "4 ttft c=64", "4 gap c=64", "5"}


@pytest.mark.timeout(90)
def test_quick_mode_runs_and_writes_its_results(tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        if os.environ.get("CI"):
            pytest.fail("wrk is required for the benchmark smoke in CI: apt-get install -y wrk")
        pytest.skip("wrk is not installed (apt-get install -y wrk)")
    out = subprocess.run(
        [str(RUN), "--quick", "--no-litellm", "--out-dir", str(tmp_path)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=85,
        check=False,
    )
    assert out.returncode == 0, f"bench/run --quick failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"

    results = list(tmp_path.glob("*-quick.json"))
    assert len(results) == 1, sorted(p.name for p in tmp_path.iterdir())
    data = json.loads(results[0].read_text())
    assert data["mode"] == "quick"
    assert set(data["scenarios"]) >= SCENARIOS
    for key in SCENARIOS:
        scenario = data["scenarios"][key]
        assert scenario["runs"], f"{key}: no load runs"
        assert scenario["summary"], f"{key}: no summary"
    streams = data["scenarios"]["stream"]["summary"]
    assert all(row["bad_streams"] == 0 for row in streams), "a stream did not carry exactly 50 chunks"
    assert data["soak"]["samples"], "no RSS samples"
    assert {t["id"] for t in data["targets"]} >= TARGETS
    assert results[0].with_suffix(".md").read_text().startswith("# storegate performance harness")


@pytest.mark.timeout(90)
def test_ttft_legs_splits_each_first_chunk(tmp_path: Path) -> None:
    """bench/ttft_legs.py: every stream's first chunk carries the backend's stamps through the relay
    and through storegate, and the three legs add up to the time to first chunk."""
    out_json = tmp_path / "legs.json"
    out = subprocess.run(
        [sys.executable, str(REPO / "bench" / "ttft_legs.py"), "--rounds", "1", "--seconds", "1",
         "--json", str(out_json)],
        cwd=REPO, capture_output=True, text=True, timeout=85, check=False,
    )  # fmt: skip
    assert out.returncode == 0, f"bench/ttft_legs.py failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}"
    runs = json.loads(out_json.read_text())["runs"]
    assert {(r["target"], r["conns"]) for r in runs} == {
        (target, conns) for target in ("direct", "relay", "storegate") for conns in (1, 64)
    }
    for run in runs:
        p50 = run["p50_ms"]
        assert run["streams"] > 0
        assert p50["leg_backend"] >= 9.0  # the fake backend's 10 ms schedule, on the same clock
        assert p50["leg_in"] > 0 and p50["leg_out"] > 0
    assert "| storegate | 64 |" in out.stdout
