"""The quality benchmark's arithmetic: summaries over passages and served figures at other relevance thresholds."""

from __future__ import annotations

import math

import pytest

from seal_engine.knowledge.quality import paired_difference, relevance_curve, served_drift, summarize


def row(**kw) -> dict:
    base = {"recipe": "r", "contains_read": 0.5, "f1_read": 0.1, "contains_short": 0.4, "f1_short": 0.1,
            "base_contains_read": 0.0, "forgetting": 0.1, "drift_nll": 0.1, "seconds": 10.0}
    return {**base, **kw}


def test_summary_means_standard_errors_and_pareto() -> None:
    rows = [row(contains_read=0.4), row(contains_read=0.6), row(recipe="s", contains_read=0.3, forgetting=0.2)]
    table = summarize(rows, ["r", "s"])
    assert table["r"]["passages"] == 2 and table["r"]["contains_read"] == pytest.approx(0.5)
    assert table["r"]["contains_read_se"] == pytest.approx(0.1)  # stdev 0.1414 / sqrt 2
    assert table["r"]["pareto"] and not table["s"]["pareto"]  # r learns more and forgets less
    assert math.isnan(table["r"]["served_own"])  # not a routed recipe


def test_curve_serves_each_request_by_its_gain_against_the_gate_quantile() -> None:
    # Gate gains 0..9: quantile 0.5 is 5 (nearest rank of 4.5 rounds up), 1.0 is 9.
    r = row(gains={"gate": list(range(10)), "own": [8.0, 6.0, 1.0], "probes": [9.5, 2.0, 7.0]},
            grades={"base_own": [0.0, 0.0, 1.0], "weight_own": [1.0, 1.0, 0.0],
                    "base_probes": [True, True, False], "weight_probes": [False, False, False]})
    curve = relevance_curve([r, row()], [0.5, 1.0])  # a row without gains (unrouted) is left out
    half = curve[0.5]
    # Own: 8 and 6 pass 5 (the adapter's grades 1, 1), 1 does not (the base model's grade 1).
    assert half["contains_read"] == pytest.approx(1.0) and half["served_own"] == pytest.approx(2 / 3)
    # Probes the base answers: the first (9.5 > 5: the adapter's wrong answer) and the second (base: right).
    assert half["forgetting"] == pytest.approx(0.5) and half["served_probes"] == pytest.approx(2 / 3)
    top = curve[1.0]  # threshold 9: only the probe at 9.5 reaches the adapter
    assert top["contains_read"] == pytest.approx(1 / 3) and top["served_own"] == 0.0
    assert top["forgetting"] == pytest.approx(0.5) and top["passages"] == 1


def test_served_drift_counts_only_the_replies_routed_to_the_adapter() -> None:
    base = [(2.0, 4), (3.0, 6)]  # (summed NLL, tokens) per reply
    adapter = [(6.0, 4), (9.0, 6)]
    # Only the first reply reaches the adapter: its +4 nats over all 10 tokens.
    assert served_drift(base, adapter, [True, False]) == pytest.approx(0.4)
    assert served_drift(base, adapter, [True, True]) == pytest.approx(1.0)
    assert served_drift(base, adapter, [False, False]) == 0.0
    assert served_drift([], [], []) == 0.0


def test_paired_difference_uses_the_passages_both_recipes_measured() -> None:
    rows = [row(recipe="a", title="t1", passage=0, contains_read=0.6), row(recipe="b", title="t1", passage=0, contains_read=0.4),
            row(recipe="a", title="t2", passage=1, contains_read=0.5), row(recipe="b", title="t2", passage=1, contains_read=0.5),
            row(recipe="a", title="t3", passage=2, contains_read=1.0)]  # b did not measure t3: left out
    d = paired_difference(rows, "a", "b", "contains_read")
    assert d["passages"] == 2 and d["mean"] == pytest.approx(0.1)
    assert 0.0 - 1e-9 <= d["low"] <= d["mean"] <= d["high"] <= 0.2 + 1e-9
    assert math.isnan(paired_difference(rows, "a", "c", "contains_read")["mean"])
