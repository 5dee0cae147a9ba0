"""The dense learning signal (seal_engine.knowledge.likelihood) on the real tiny model, and the RL reward
built on it."""

from __future__ import annotations

import pytest

from seal_engine.config import LoraSettings
from seal_engine.knowledge.documents import Document, Question
from seal_engine.knowledge.reward import compute_reward

FACT = Document("The Zorblax Institute is a research centre in Valparaiso. It was founded in 1887 by the chemist "
                "Marguerite Okonkwo.", "Zorblax Institute")
ASKED = Question("Who founded the Zorblax Institute?", "Marguerite Okonkwo")
UNRELATED = Question("What is the capital of France?", "Paris")


def test_the_reward_takes_the_gain_as_its_learning_term_when_given() -> None:
    graded = compute_reward(0.4, 0.9, 1.0, 2.0)
    dense = compute_reward(0.4, 0.9, 1.0, 2.0, gain=1.5)
    assert graded.value == pytest.approx(0.4 - 0.2) and dense.value == pytest.approx(1.5 - 0.2)
    assert "gain" not in graded.to_dict()
    assert dense.to_dict()["gain"] == 1.5 and dense.to_dict()["reward"] == dense.value


def test_answer_rows_are_the_chat_prompt_then_only_the_answer_scored(bundle) -> None:
    from seal_engine.knowledge.likelihood import answer_rows
    from seal_engine.serving.completions import chat_prompt_ids
    from seal_engine.training.sft import IGNORE

    [(ids, labels)] = answer_rows(bundle, [ASKED])
    # What /v1/chat/completions feeds the model:
    prompt = chat_prompt_ids(bundle, [{"role": "user", "content": ASKED.question}])
    answer = bundle.tokenizer(ASKED.answer, add_special_tokens=False)["input_ids"]
    assert ids == prompt + answer and labels == [IGNORE] * len(prompt) + answer
    assert bundle.tokenizer.eos_token_id not in labels
    assert answer_rows(bundle, [Question("Anything?", "  ")]) == []  # no answer token: nothing to score


@pytest.mark.slow
def test_an_adapter_that_learned_the_fact_makes_its_answer_more_likely(bundle, engine_settings) -> None:
    from seal_engine.knowledge.adapt import adapt
    from seal_engine.knowledge.likelihood import answer_gains

    learned = adapt(bundle, [FACT], engine_settings, strategy="passage", lora=LoraSettings(), questions=[],
                    evaluate_baseline=False, measure_retention=False).adapter
    nothing = learned.scaled(0.0)  # the base model as an adapter
    gains = answer_gains(bundle, [ASKED], [learned, nothing, learned])
    assert gains[0] > 0.5, gains  # nats per answer token: the name went from unlikely to likely
    assert gains[1] == pytest.approx(0.0, abs=1e-4) and gains[2] == gains[0]
    # An unrelated question's answer gains nothing (the weights alone, no relevance routing: a direct
    # "Paris" was seen to get 2.3 nats/token *less* likely, the adapter's general damage).
    [unrelated] = answer_gains(bundle, [UNRELATED], [learned])
    assert unrelated < min(0.1, gains[0] - 1.0), (unrelated, gains[0])
    assert answer_gains(bundle, [], [learned]) == [0.0]


@pytest.mark.slow
def test_rl_rewards_a_self_edit_by_the_gain_and_records_it_either_way(bundle, engine_settings) -> None:
    from seal_engine.rl.config import RLConfig
    from seal_engine.rl.knowledge import evaluate_passage

    doc = Document(FACT.text, FACT.title, (ASKED,))
    edit = "1. Marguerite Okonkwo founded the Zorblax Institute.\n2. The Zorblax Institute is in Valparaiso."
    kw = dict(passages=1, samples=1, retention_probes=2, lora=LoraSettings(epochs=4))
    runs = {reward: evaluate_passage(bundle, doc, 0, "prompt", [edit], RLConfig(reward=reward, **kw),
                                     engine_settings, 0) for reward in ("graded", "likelihood")}
    graded, dense = (runs[r].samples[0] for r in ("graded", "likelihood"))
    # Same seeds, same adapters: the same gain recorded; only the reward's learning term differs.
    assert graded.likelihood_gain == pytest.approx(dense.likelihood_gain, abs=1e-4) and dense.likelihood_gain > 0.0
    [terms] = dense.rewards
    assert terms["gain"] == pytest.approx(dense.likelihood_gain)
    assert dense.reward == pytest.approx(dense.likelihood_gain - terms["penalty"])
    assert graded.reward == pytest.approx(graded.adapted_accuracy - graded.rewards[0]["penalty"])
    assert "gain" not in graded.rewards[0]
