"""The harness's order of runs and its pairing of them: every judged pair is two neighbouring runs,
and a ratio is taken only between runs of the same round and pass (no load is run here)."""

import sys
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path[:0] = [str(BENCH), str(BENCH / "stack"), str(BENCH / "million")]

import harness  # noqa: E402

STORED = ["healthz@10k", "retrieve@10k", "list@10k", "list_user@10k", "update@10k",
          "healthz@1M", "retrieve@1M", "list@1M", "list_user@1M", "update@1M"]  # fmt: skip
CHAIN = ["healthz@10k", "retrieve@10k", "list@10k", "list@1M", "retrieve@1M", "healthz@1M"]
JUDGED = [("retrieve@10k", "healthz@10k"), ("list@10k", "retrieve@10k"), ("list@1M", "list@10k"),
          ("list@1M", "retrieve@1M"), ("retrieve@1M", "healthz@1M")]  # fmt: skip


def _scenario(chain: list[str]) -> harness.Scenario:
    targets = [harness.Target(name, name, "storegate") for name in STORED]
    return harness.Scenario("stored-sqlite", "stored", "healthz@10k", [], targets, chain=chain)


def test_every_judged_pair_runs_back_to_back_and_the_chain_turns_every_other_round() -> None:
    sc = _scenario(CHAIN)
    orders = [[t.name for t in harness.round_order(sc, sc.targets, rnd)] for rnd in range(4)]
    for order in orders:
        assert sorted(order) == sorted(STORED)  # every target, once
        for a, b in JUDGED:
            assert abs(order.index(a) - order.index(b)) == 1, (a, b, order)
    assert orders[0][:6] == CHAIN
    assert orders[1][:6] == CHAIN[::-1]
    rest = [order[6:] for order in orders]
    assert rest[0] != rest[1]  # the others rotate


def test_without_a_chain_the_whole_pool_rotates() -> None:
    sc = _scenario([])
    assert [t.name for t in harness.round_order(sc, sc.targets, 0)] == STORED
    assert [t.name for t in harness.round_order(sc, sc.targets, 1)] == STORED[1:] + STORED[:1]


def _run(target: str, rnd: int, rps: float, pas: int | None = None) -> dict[str, Any]:
    run: dict[str, Any] = {"target": target, "conns": 64, "round": rnd, "rps": rps}
    if pas is not None:
        run["pass"] = pas
    return run


def test_ratios_pair_runs_of_the_same_round_and_pass() -> None:
    runs = [_run("retrieve@1M", 0, 60, 0), _run("healthz@1M", 0, 100, 0),
            _run("retrieve@1M", 0, 90, 1), _run("healthz@1M", 0, 100, 1),
            _run("retrieve@1M", 1, 70, 0), _run("healthz@1M", 1, 50, 0),
            _run("list_user@1M", 0, 30), _run("list_user@1M", 1, 25)]  # fmt: skip
    ratio = harness.paired(runs, "retrieve@1M", "healthz@1M", 64, harness.ratio_of("rps"))
    assert ratio["values"] == [0.6, 0.9, 1.4]
    assert ratio["median"] == 0.9
    # a target run once a round pairs with the chained one's first pass of that round
    other = harness.paired(runs, "list_user@1M", "healthz@1M", 64, harness.ratio_of("rps"))
    assert other["values"] == [0.3, 0.5]
