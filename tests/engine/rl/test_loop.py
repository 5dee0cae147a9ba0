"""The RL engine: policy SFT (completion-only loss), policy-driven sampling, one ReST-EM iteration."""

from __future__ import annotations

import pytest
import torch

from seal_engine.config import LoraSettings, SamplingSettings, SFTSettings
from seal_engine.knowledge.documents import load_documents
from seal_engine.training.sft import IGNORE, build_example, collate_sft, completion_loss, train_sft

PAIRS = [
    ("Read the passage and list implications.\nPassage: The sky is green on Zorbia.\nImplications:\n1.",
     " Zorbia has a green sky.\n2. Visitors to Zorbia see green above them."),
    ("Read the passage and list implications.\nPassage: Mount Quill is 9000 m tall.\nImplications:\n1.",
     " Mount Quill is very tall.\n2. Climbing Mount Quill takes a long time."),
]


def test_prompt_and_padding_carry_no_loss(bundle):
    prompt, completion = PAIRS[0]
    ids, labels = build_example(bundle, prompt, completion, 1024)
    n_prompt = len(bundle.tokenizer(prompt, add_special_tokens=False)["input_ids"])
    assert labels[:n_prompt] == [IGNORE] * n_prompt
    assert labels[n_prompt:] == ids[n_prompt:]
    assert ids[-1] == bundle.tokenizer.eos_token_id
    batch = collate_sft([build_example(bundle, p, c, 1024) for p, c in PAIRS], bundle.tokenizer.pad_token_id)
    assert bool(((batch["attention_mask"] == 0) <= (batch["labels"] == IGNORE)).all())
    # A too-long prompt is cut from the left; the completion survives.
    ids, labels = build_example(bundle, prompt * 50, completion, 64)
    assert len(ids) == 64 and labels[-1] == bundle.tokenizer.eos_token_id


def test_sft_lowers_completion_loss_and_stacks(bundle):
    cfg = SFTSettings(epochs=4, learning_rate=1e-3, batch_size=2, rank=8, alpha=16)
    before = completion_loss(bundle, PAIRS, None)
    policy = train_sft(bundle, PAIRS, cfg)
    after = completion_loss(bundle, PAIRS, policy)
    assert len(policy.losses) == 4
    assert after < before - 0.5, (before, after)
    # Stacking: training continues from the previous policy (same shape, moved weights).
    again = train_sft(bundle, PAIRS, cfg.model_copy(update={"epochs": 1}), init=policy)
    assert again.state.keys() == policy.state.keys()
    assert any(not torch.equal(again.state[k], policy.state[k]) for k in policy.state)
    assert completion_loss(bundle, PAIRS, again) < before


def test_policy_writes_the_self_edits(bundle):
    from seal_engine.knowledge.documents import Document
    from seal_engine.knowledge.prompts import get_strategy, self_edit_prompt
    from seal_engine.knowledge.self_edits import sample_self_edits_many

    strat = get_strategy("implications")
    doc = Document("Zorbia is a small country with a green sky.", "Zorbia")
    prompt = self_edit_prompt(bundle, strat, doc.title, doc.text)
    target = " Zorbia zebras zigzag zealously."
    policy = train_sft(bundle, [(prompt, target)], SFTSettings(epochs=12, learning_rate=2e-3, batch_size=1, rank=8, alpha=16))
    greedy = SamplingSettings(temperature=0.0, max_new_tokens=12)
    [(p0, base_edits)] = sample_self_edits_many(bundle, [(doc, strat)], 2, greedy)
    [(p1, policy_edits)] = sample_self_edits_many(bundle, [(doc, strat)], 2, greedy, policy=policy)
    assert p0 == p1 == prompt
    assert all(e.startswith("1. Zorbia zebras zigzag") for e in policy_edits), policy_edits
    assert base_edits != policy_edits


@pytest.mark.slow
def test_one_rl_iteration_on_the_tiny_model(bundle, engine_settings, squad_dev):
    from seal_engine.rl.config import RLConfig
    from seal_engine.rl.loop import passages_for_iteration, run_iteration, sample_iteration

    pool = load_documents(squad_dev.parent / "train.json")[:20]
    # Two passages of two samples (a best of each, a mean over passages); the smallest inner loop and grading.
    config = RLConfig(
        passages=2, samples=2, repeats=1, max_questions=1, retention_probes=2,
        lora=LoraSettings(epochs=1), sampling=SamplingSettings(max_new_tokens=32),
        sft=SFTSettings(epochs=1, learning_rate=1e-3),
    )
    stored = []
    result = run_iteration(bundle, pool, config, engine_settings, 0, None, on_passage=stored.append)
    assert [len(p.samples) for p in result.passages] == [2, 2]
    rewards = [s.reward for p in result.passages for s in p.samples]
    assert len(rewards) == 4 and all(-1.0 <= r <= 1.0 for r in rewards)
    assert len(stored) == 2 and len(result.kept) == 2
    assert result.policy is not None
    # A fresh LoRA starts with B = 0; the trained policy has moved away from it.
    assert any(k.endswith("lora_B.weight") and v.abs().sum() > 0 for k, v in result.policy.state.items())
    m = result.metrics
    # The figures are those of the stored samples (best-of-n is the mean of each passage's best reward),
    # and what the policy is trained on is each passage's best self-edit.
    best = [max(p.samples, key=lambda s: (s.reward, -s.sample)) for p in result.passages]
    assert m["mean_reward"] == pytest.approx(sum(rewards) / 4)
    assert m["mean_best_of_n_reward"] == pytest.approx(sum(b.reward for b in best) / 2)
    assert result.kept == [(b.prompt, b.text) for b in best]
    assert m["samples"] == 4 and m["kept"] == 2
    # Resuming with both passages done recomputes nothing but the SFT step.
    again = run_iteration(bundle, pool, config, engine_settings, 0, None, done={p.passage: p for p in result.passages})
    assert [s.reward for p in again.passages for s in p.samples] == rewards
    # The next iteration samples with the new policy.
    docs = passages_for_iteration(pool, config, 1)
    assert len(sample_iteration(bundle, docs, config, 1, result.policy)) == 2


def test_run_directory_resumes_across_new_and_execution_only_settings(tmp_path):
    """A run stored before a setting existed, or with another token budget, is the same run;
    a different inner loop is not."""
    import json

    from seal_engine.rl.config import RLConfig
    from seal_engine.rl.local import prepare_run_dir

    config = RLConfig.small()
    prepare_run_dir(tmp_path, config)
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["lora"]["token_budget"]  # as written before the setting existed
    (tmp_path / "config.json").write_text(json.dumps(stored))
    prepare_run_dir(tmp_path, config)
    prepare_run_dir(tmp_path, config.model_copy(update={"lora": config.lora.model_copy(update={"token_budget": 64})}))
    with pytest.raises(ValueError, match="different configuration"):
        prepare_run_dir(tmp_path, config.model_copy(update={"lora": config.lora.model_copy(update={"epochs": 3})}))


def test_rank_correlation_is_spearmans_rho_with_ties_averaged():
    from seal_engine.rl.loop import rank_correlation

    assert rank_correlation([(1, 10), (2, 20), (3, 30)]) == pytest.approx(1.0)
    assert rank_correlation([(1, 30), (2, 20), (3, 10)]) == pytest.approx(-1.0)
    # x ranks 1, 2.5, 2.5, 4 against y ranks 1, 2, 3, 4: rho = 4.5 / sqrt(4.5 * 5)
    assert rank_correlation([(0.1, 0), (0.5, 1), (0.5, 2), (0.9, 3)]) == pytest.approx(4.5 / (4.5 * 5) ** 0.5)
    assert rank_correlation([(1, 1), (2, 2)]) is None and rank_correlation([(1, 5), (2, 5), (3, 5)]) is None
