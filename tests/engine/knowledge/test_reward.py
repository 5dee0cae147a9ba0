import pytest

from seal_engine.knowledge.reward import compute_reward


def test_reward_penalises_only_lost_retention():
    r = compute_reward(0.8, retention=0.7, baseline_retention=0.9, retention_lambda=2.0)
    assert r.forgetting == pytest.approx(0.2)
    assert r.penalty == pytest.approx(0.4)
    assert r.value == pytest.approx(0.4)
    d = r.to_dict()
    assert d["adapted_accuracy"] == 0.8 and d["penalty"] == pytest.approx(0.4) and d["reward"] == pytest.approx(0.4)


def test_better_retention_than_baseline_is_not_a_bonus():
    assert compute_reward(0.5, 1.0, 0.9, 1.0).value == pytest.approx(0.5)
