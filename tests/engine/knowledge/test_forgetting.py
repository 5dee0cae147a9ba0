"""Forgetting measures: fixed gate/report halves, and replay data that never holds a report item."""

from __future__ import annotations

import json
from importlib import resources

import pytest

from seal_engine.knowledge.forgetting import SPLITS, generic_prompts, split_of
from tests.conftest import drift_noise


def _all_prompts() -> list[str]:
    return json.loads(resources.files("seal_engine.data").joinpath("generic_prompts.json").read_text())


def test_halves_are_fixed_disjoint_and_cover_everything() -> None:
    prompts = _all_prompts()
    gate, report = generic_prompts("gate"), generic_prompts("report")
    assert gate and report and not set(gate) & set(report) and sorted(gate + report) == sorted(prompts)
    assert [split_of(p) for p in prompts] == [split_of(p) for p in prompts]  # a function of the text alone
    probes = json.loads(resources.files("seal_engine.data").joinpath("probes_SmolLM2-135M-Instruct.json").read_text())
    halves = {s: [p for p in probes if split_of(p["question"]) == s] for s in SPLITS}
    assert all(len(h) > len(probes) // 4 for h in halves.values())


@pytest.mark.slow
def test_replay_never_contains_report_prompts_or_probes(bundle, engine_settings) -> None:
    from seal_engine.knowledge.chat_format import user_turn
    from seal_engine.knowledge.forgetting import probes
    from seal_engine.knowledge.replay import replay_examples

    replay = replay_examples(bundle, 1000)
    assert replay, "the base model answered no generic prompt within the replay length"
    allowed = {user_turn(bundle, p) for p in generic_prompts("gate")}
    assert {prompt for prompt, _ in replay} <= allowed
    report_texts = generic_prompts("report") + [q.question for q in probes(bundle, engine_settings, "report")]
    for prompt, reply in replay:
        assert not any(t in prompt for t in report_texts)


@pytest.mark.slow
def test_forgetting_of_the_base_model_itself_is_zero(bundle, engine_settings) -> None:
    from seal_engine.knowledge.forgetting import forgetting_check, measure_forgetting

    check = forgetting_check(bundle, engine_settings, "report", max_tokens=16, max_probes=12, max_prompts=4)
    assert sum(check.base_correct) > 0
    # An adapter whose B is zero is the base model: nothing forgotten, no drift.
    from seal_engine.config import LoraSettings
    from seal_engine.training.batched import train_adapters_batched

    [adapter] = train_adapters_batched(bundle, [["Zorblax\nThe Zorblax Institute is in Valparaiso."]],
                                       LoraSettings(epochs=1, learning_rate=1e-9))
    [f] = measure_forgetting(bundle, check, [adapter])
    assert f.forgetting == 0.0 and f.probes == sum(check.base_correct)
    assert abs(f.drift_nll) < drift_noise(bundle)  # bfloat16 rounds differently from batch to batch


@pytest.mark.slow
def test_the_gate_rejects_an_adapter_trained_to_forget_and_passes_a_gentle_one(bundle, engine_settings) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.knowledge.adapt import adapt
    from seal_engine.knowledge.documents import Document
    from seal_engine.knowledge.forgetting import ForgettingExceeded

    settings = engine_settings.model_copy(update={"forgetting_probes": 24, "forgetting_prompts": 4})
    doc = Document("The Zorblax Institute is a research centre in Valparaiso. It was founded in 1887 by the "
                   "chemist Marguerite Okonkwo.", "Zorblax Institute")
    # Trained to forget, and forgetting still at the one scaled-down update tried: rejected, saying what was tried.
    with pytest.raises(ForgettingExceeded) as err:
        adapt(bundle, [doc], settings, strategy="passage", questions=[], max_forgetting=0.1,
              lora=LoraSettings(epochs=12, learning_rate=1e-2), fallback_scales=[0.9])
    assert err.value.code == "forgetting_exceeded" and err.value.measured.forgetting > 0.1
    assert f"{err.value.measured.forgetting:.1%}" in str(err.value)
    [tried] = err.value.details()["forgetting_fallbacks"]
    assert round(tried["scale"], 6) == 0.9 and tried["forgetting"] > 0.1 and "x0.9 forgot" in str(err.value)
    gentle = adapt(bundle, [doc], settings, strategy="passage", questions=[], max_forgetting=0.1,
                   lora=LoraSettings(epochs=1, learning_rate=1e-5))
    assert gentle.forgetting is not None and gentle.forgetting.forgetting <= 0.1
    assert gentle.metrics()["forgetting"] == gentle.forgetting.forgetting
