"""CI smoke of the performance harness: `bench/run --quick` runs end to end and writes its JSON.

It asserts that the harness works, never how fast anything is (timings on a shared CI box mean
nothing). Needs wrk: skipped without it, except under CI, where a missing wrk is a failure.
"""

import json
import os
import shutil
import subprocess
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
