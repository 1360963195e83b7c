"""The harness's order of runs and its pairing of them: every judged pair is two neighbouring runs,
and a ratio is taken only between runs of the same round and pass (no load is run here: the
scenarios are built, not started)."""

import argparse
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path[:0] = [str(BENCH), str(BENCH / "stack"), str(BENCH / "million")]

import harness  # noqa: E402
import stores  # noqa: E402


def _config(**overrides: Any) -> harness.Config:
    args = argparse.Namespace(quick=False, no_litellm=True, profile=False, sizes=None, soak_s=None,
                              soak_window=None, stores=None, **overrides)  # fmt: skip
    return harness.make_config(args)


def _stored(sizes: list[int]) -> harness.Scenario:
    """The stored scenario's targets and chain as stored_scenario makes them, without its stores."""
    labels = [stores.label(n) for n in sizes]
    targets = [harness.Target(f"{key}@{lab}", key, f"storegate-{lab}",
                              limit={64: 10, 1: 10} if key in ("update", "delete") else None)
               for lab in labels for key in stores.SCENARIOS]  # fmt: skip
    return harness.Scenario("stored-sqlite", "stored", f"healthz@{labels[0]}", [], targets,
                            chain=harness.stored_chain(sizes))  # fmt: skip


def _judged(sc: harness.Scenario) -> list[tuple[str, str]]:
    """The pairs evaluate_* compares at 64 connections."""
    if sc.key == "create":
        return [("sg_store", "sg_nostore"), ("sg_store", "litellm")]
    if sc.key == "stream":
        return [("sg_store", "direct")]
    big, small = (stores.label(n) for n in (1_000_000, 10_000))
    return [(f"retrieve@{lab}", f"healthz@{lab}") for lab in (big, small)] + [
        (f"list@{lab}", f"retrieve@{lab}") for lab in (big, small)] + [(f"list@{big}", f"list@{small}")]  # fmt: skip


@pytest.fixture
def scenarios(tmp_path: Path) -> list[harness.Scenario]:
    cfg = _config()
    create = harness.create_scenario(tmp_path, cfg)
    create.targets.append(harness.Target("litellm", "LiteLLM", "litellm", lines=[("GET", "/", None)]))
    return [_stored([10_000, 1_000_000]), create, harness.stream_scenario(tmp_path)]


def test_every_judged_pair_runs_back_to_back_in_every_pass(scenarios: list[harness.Scenario]) -> None:
    for sc in scenarios:
        names = {t.name for t in sc.targets}
        for rnd in range(4):
            runs = harness.round_runs(sc, rnd, 64, 2)
            assert sorted(t.name for p, t in runs if p in (0, None)) == sorted(names)  # each target, once...
            chained = [t.name for p, t in runs if p == 1]
            assert sorted(chained) == sorted(n for n in sc.chain if n in names)  # ...and the chain again
            for pas in (0, 1):
                order = [t.name for p, t in runs if p == pas]
                for a, b in _judged(sc):
                    assert abs(order.index(a) - order.index(b)) == 1, (sc.key, rnd, pas, a, b, order)
            first, second = ([t.name for p, t in runs if p == pas] for pas in (0, 1))
            assert second == first[::-1]  # there and back
            assert [p for p, _ in runs] == [0] * len(first) + [1] * len(first) + [None] * (
                len(names) - len(first)
            )


def test_the_chain_turns_every_other_round_and_the_rest_rotates(scenarios: list[harness.Scenario]) -> None:
    stored = scenarios[0]
    orders = [[t.name for _, t in harness.round_runs(stored, rnd, 64, 1)] for rnd in range(2)]
    assert orders[0][:6] == stored.chain
    assert orders[1][:6] == stored.chain[::-1]
    assert orders[0][6:] != orders[1][6:] and sorted(orders[0][6:]) == sorted(orders[1][6:])


def test_one_connection_and_a_single_pass_run_each_target_once_without_a_pass(
    scenarios: list[harness.Scenario],
) -> None:
    for sc in scenarios:
        for conns, passes in ((1, 2), (64, 1)):
            runs = harness.round_runs(sc, 0, conns, passes)
            assert all(p is None for p, _ in runs)
            assert len(runs) == len({t.name for _, t in runs}) == sum(conns in t.conns for t in sc.targets)


def test_quick_mode_chains_its_one_size_without_repeats() -> None:
    sc = _stored([10_000])
    assert [t.name for _, t in harness.round_runs(sc, 0, 64, 2) if _ == 1] == [
        "list@10k", "retrieve@10k", "healthz@10k"]  # fmt: skip


def test_count_bounded_targets_cannot_be_chained() -> None:
    sc = _stored([10_000])
    sc.chain = ["update@10k", "healthz@10k"]
    with pytest.raises(AssertionError, match="count-bounded"):
        harness.round_runs(sc, 0, 64, 2)


def test_passes_below_one_are_refused() -> None:
    with pytest.raises(SystemExit):
        _config(passes=0)


def _run(target: str, rnd: int, rps: float, pas: int | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"target": target, "conns": 64, "round": rnd, "rps": rps}
    if pas is not None:
        run["pass"] = pas
    return run


def test_ratios_pair_runs_of_the_same_round_and_pass() -> None:
    runs = [_run("retrieve@1M", 0, 60, 0), _run("healthz@1M", 0, 100, 0),
            _run("retrieve@1M", 0, 90, 1), _run("healthz@1M", 0, 120, 1),
            _run("retrieve@1M", 1, 70, 0), _run("healthz@1M", 1, 50, 0),
            _run("list_user@1M", 0, 30), _run("list_user@1M", 1, 25)]  # fmt: skip
    ratio = harness.paired(runs, "retrieve@1M", "healthz@1M", 64, harness.ratio_of("rps"))
    assert ratio["values"] == [0.6, 0.75, 1.4]
    assert ratio["median"] == 0.75
    # a target run once a round pairs with the chained one's first pass of that round
    other = harness.paired(runs, "list_user@1M", "healthz@1M", 64, harness.ratio_of("rps"))
    assert other["values"] == [0.3, 0.5]
