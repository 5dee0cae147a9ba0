"""One adaptation end to end on the real tiny model: progress moves within every stage, the recipe knobs apply."""

from __future__ import annotations

import pytest
import torch

from seal_engine.knowledge.documents import Document
from tests.conftest import drift_noise

DOC = Document("The Zorblax Institute is a research centre in Valparaiso. It was founded in 1887 by the chemist "
               "Marguerite Okonkwo.", "Zorblax Institute")


@pytest.mark.slow
def test_progress_moves_within_every_stage(bundle, engine_settings) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.adapt import STAGE_ORDER, adapt

    settings = engine_settings.model_copy(update={
        "forgetting_probes": 24, "forgetting_prompts": 4, "forgetting_probe_tokens": 8,
        "sampling": engine_settings.sampling.model_copy(update={"max_new_tokens": 12})})
    seen: dict[str, list[float]] = {}

    def progress(stage: str, done: int, total: int) -> None:
        seen.setdefault(stage, []).append(done / total)

    result = adapt(bundle, [DOC], settings, strategy="implications", k=1, questions=[], measure_forgetting=True,
                   lora=LoraSettings(epochs=3, batch_size=1), progress=progress, anchors=2)
    assert list(seen) == ["self_edits", "training", "forgetting"]
    assert [st for st in STAGE_ORDER if st in seen] == list(seen)  # the order the job's progress spans assume
    for stage, fractions in seen.items():
        assert fractions == sorted(fractions) and fractions[-1] == 1.0, (stage, fractions)
        # Not just a start and an end: intermediate values while the stage runs (per decoding step,
        # per optimizer step, per probe batch).
        assert len({f for f in fractions if 0.0 < f < 1.0}) >= (1 if stage == "forgetting" else 2), (stage, fractions)
    assert len(result.adapter.losses) == 3 * len(result.sequences)
    assert result.forgetting is not None and result.metrics()["forgetting"] == result.forgetting.forgetting


@pytest.mark.slow
def test_scale_zero_is_the_base_model(bundle, engine_settings) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.adapt import adapt

    settings = engine_settings.model_copy(update={"forgetting_probes": 16, "forgetting_prompts": 2})
    result = adapt(bundle, [DOC], settings, strategy="passage", questions=[], measure_forgetting=True, scale=1e-6,
                   lora=LoraSettings(epochs=4, learning_rate=1e-2))  # a large update, scaled to nothing
    # bfloat16 rounds differently from batch to batch (and thread count to thread count): a drift of
    # ~1e-3 nats/token and one near-tie probe are noise there; float32 reads exactly nothing forgotten.
    noise = 0.0 if bundle.dtype == torch.float32 else 1.0 / result.forgetting.probes
    assert result.forgetting.forgetting <= noise and abs(result.forgetting.drift_nll) < drift_noise(bundle)


@pytest.mark.slow
def test_the_gate_falls_back_to_a_scaled_down_update_before_rejecting(bundle, engine_settings) -> None:
    # (Rejection once every fallback still forgets: tests/engine/knowledge/test_forgetting.py.)
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.adapt import adapt

    settings = engine_settings.model_copy(update={"forgetting_probes": 24, "forgetting_prompts": 2})
    harsh = LoraSettings(epochs=12, learning_rate=1e-2)
    # In bfloat16 even a negligible update re-draws the rounding, and near-tie probes of ~20 may flip
    # (2 of 18 seen on an AMX machine: 11.1%); the harsh update still forgets far more than that.
    bound = 0.05 if bundle.dtype == torch.float32 else 0.15
    seen: list[tuple[str, float]] = []
    result = adapt(bundle, [DOC], settings, strategy="passage", questions=[], max_forgetting=bound, lora=harsh,
                   fallback_scales=[0.9, 1e-4], progress=lambda stage, done, total: seen.append((stage, done / total)))
    # x0.9 still forgot too much; x1e-4 is within the bound and is what the user gets.
    tried, kept = result.fallbacks
    assert round(tried["scale"], 6) == 0.9 and tried["forgetting"] > bound
    assert round(kept["scale"], 6) == 0.0001 and kept["forgetting"] == result.forgetting.forgetting <= bound
    assert result.metrics()["forgetting_fallbacks"] == result.fallbacks
    # Progress moved through every check, the fallbacks' included (three checks: past two thirds).
    checks = [f for stage, f in seen if stage == "forgetting"]
    assert checks == sorted(checks) and any(2 / 3 < f < 1.0 for f in checks), checks
    # The adapter returned is the scaled one: its update is 1e-4 of the trained one.
    key = next(k for k in result.adapter.state if ".lora_B." in k)
    assert result.adapter.state[key].abs().max() < 1e-3


@pytest.mark.slow
def test_the_default_recipe_passes_the_default_gate_and_learns(bundle, engine_settings) -> None:
    from seal_engine.config import EngineSettings
    from seal_engine.knowledge.adapt import adapt
    from seal_engine.knowledge.documents import Question
    from seal_engine.knowledge.qa import chat_answers

    defaults = EngineSettings()
    settings = engine_settings.model_copy(update={"recipe": defaults.recipe, "lora": defaults.lora})
    recipe = settings.recipe
    assert recipe.max_forgetting is not None  # the service's default gate is on
    result = adapt(bundle, [DOC], settings, questions=[Question("Who founded the Zorblax Institute?", "Okonkwo")],
                   max_forgetting=recipe.max_forgetting, fallback_scales=recipe.fallback_scales,
                   **{k: v for k, v in recipe.adapt_kwargs().items() if k != "fallback_scales"})
    assert result.forgetting is not None and result.forgetting.forgetting <= recipe.max_forgetting
    # The gate's figure is the reward's retention: the old retention probes are not asked as well.
    assert result.reward is not None and result.reward.retention == result.forgetting.retained
    [reply] = chat_answers(bundle, ["Who founded the Zorblax Institute?"], [result.adapter], max_tokens=64)
    assert "okonkwo" in reply.lower(), reply
    # By default the adapter answers what is about its document and leaves the rest to the base model.
    assert result.adapter.relevance is not None and result.adapter.relevance.quantile == recipe.relevance_quantile
    general = ["What is the capital of France?"]
    assert chat_answers(bundle, general, [result.adapter], max_tokens=16) == chat_answers(bundle, general, [None],
                                                                                        max_tokens=16)
