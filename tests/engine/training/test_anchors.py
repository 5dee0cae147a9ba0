"""The KL anchor to the base model (training.batched.Anchors) and scaled adapter updates (LoraAdapter.scaled)."""

from __future__ import annotations

import pytest

PASSAGE = ("Zorblax Institute\nThe Zorblax Institute is a research centre in Valparaiso. It was founded in 1887 by "
           "the chemist Marguerite Okonkwo, who directed it for forty years.")
ANCHORS = [("", "The capital of France is Paris. Water boils at 100 degrees Celsius at sea level."),
           ("", "Photosynthesis turns light, water and carbon dioxide into sugar and oxygen.")]


@pytest.mark.slow
def test_anchors_hold_the_adapter_to_the_base_model_where_it_has_nothing_to_learn(bundle) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.forgetting import answer_nll
    from seal_engine.training.batched import Anchors, train_adapters_batched

    cfg = LoraSettings(epochs=6, learning_rate=3e-3)
    [free] = train_adapters_batched(bundle, [[PASSAGE]], cfg)
    [held] = train_adapters_batched(bundle, [[PASSAGE]], cfg, anchors=Anchors(ANCHORS, per_step=2, weight=5.0))
    # The anchor changes nothing about the schedule of the real data (the same optimizer steps).
    assert len(held.losses) == len(free.losses) == 6
    base = answer_nll(bundle, ANCHORS, None)
    drift_free = answer_nll(bundle, ANCHORS, free) - base
    drift_held = answer_nll(bundle, ANCHORS, held) - base
    assert drift_free > 0.05 and drift_held < 0.5 * drift_free, (drift_free, drift_held)
    # ... and the passage is still learned (its loss falls as it does without the anchor).
    assert held.losses[-1] < 0.6 * held.losses[0]


@pytest.mark.slow
def test_a_scaled_update_is_a_point_between_base_and_adapter(bundle) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.forgetting import answer_nll
    from seal_engine.training.batched import train_adapters_batched

    [adapter] = train_adapters_batched(bundle, [[PASSAGE]], LoraSettings(epochs=4, learning_rate=3e-3))
    pair = [("", PASSAGE)]
    base, full = answer_nll(bundle, pair, None), answer_nll(bundle, pair, adapter)
    assert answer_nll(bundle, pair, adapter.scaled(0.0)) == pytest.approx(base, abs=1e-4)
    assert answer_nll(bundle, pair, adapter.scaled(1.0)) == pytest.approx(full, abs=1e-4)
    half = answer_nll(bundle, pair, adapter.scaled(0.5))
    assert full < half < base
    assert adapter.scaled(0.5).state is not adapter.state  # the original is left as it was
    assert answer_nll(bundle, pair, adapter) == pytest.approx(full, abs=1e-4)
