"""ReST-EM over few-shot tasks: the knowledge RL loop, unchanged, with recipes as the self-edits."""

from __future__ import annotations

import json

import pytest

from seal_engine.config import FewShotSettings, LoraSettings, SFTSettings
from seal_engine.fewshot.datasets import TaskError, gradable, load_task_dataset, task_from_json, task_to_dict
from seal_engine.fewshot.text_tasks import text_task
from seal_engine.rl.config import RLConfig
from seal_engine.rl.loop import run_iteration, select_best
from seal_engine.rl.results import PassageResult

UPPER = text_task("upper", [{"input": w, "output": w.upper()} for w in ("apple", "river", "candle", "garden")],
                  [{"input": w, "output": w.upper()} for w in ("window", "rocket")])


def test_task_round_trip_and_gradable():
    again = task_from_json(json.loads(json.dumps(task_to_dict(UPPER))))
    assert again == UPPER and gradable(UPPER)
    assert not gradable(text_task("x", [("a", "A"), ("b", "B")]))
    suite = load_task_dataset("text", "builtin:text-suite")
    assert len(suite) >= 20 and all(gradable(t) for t in suite)
    other = load_task_dataset("text", "builtin:text-suite:1")  # same families, other examples
    assert [t.name for t in other] == [t.name for t in suite] and other != suite
    assert load_task_dataset("text", "builtin:text-suite:0") == suite
    with pytest.raises(TaskError, match="seed"):
        load_task_dataset("text", "builtin:text-suite:x")


def test_config_rules_for_tasks():
    with pytest.raises(ValueError, match="repeats"):
        RLConfig(task="text", repeats=2)
    cfg = RLConfig(task="arc", strategy="passage")  # the knowledge strategy is irrelevant for tasks
    assert cfg.is_task


def test_select_best_keeps_only_successful_recipes():
    from seal_engine.rl.results import RecipeSampleResult

    def s(k, reward, error=None):
        return RecipeSampleResult(passage=0, sample=k, prompt="p", text=f"r{k}", seeds=[k], rewards=[], reward=reward,
                                  adapted_accuracy=reward, retention=None, error=error)

    zero = PassageResult(0, "a", 0.0, None, 0.0, 0.0, [s(0, 0.0), s(1, 0.0, "invalid JSON")])
    some = PassageResult(1, "b", 0.0, None, 0.0, 0.0, [s(0, 0.5), s(1, 1.0)])
    assert [x.text for x in select_best([zero, some], successful_only=True)] == ["r1"]
    assert len(select_best([zero, some])) == 2  # knowledge rule: the best of each, whatever it is
    # Stored results come back with their recipe fields.
    back = PassageResult.from_dict(json.loads(json.dumps(zero.to_dict())))
    assert back.samples[1].error == "invalid JSON"


@pytest.mark.slow
def test_one_iteration_over_a_text_task(bundle, engine_settings):
    # Two batches an epoch (as with 6 episodes in 4s), of two episodes each; written recipes of at most 3 epochs.
    fewshot = FewShotSettings(max_examples=4, batch_size=2, step_budget=24, max_epochs=3, paraphrases=0,
                              recipe_max_new_tokens=48, lora=LoraSettings(rank=8, alpha=16))
    config = RLConfig(task="text", passages=1, samples=2, iterations=1, fewshot=fewshot,
                      sft=SFTSettings(epochs=1, rank=8, alpha=16))
    stored = []
    result = run_iteration(bundle, [UPPER], config, engine_settings, 0, None, on_passage=stored.append)
    [pr] = result.passages
    assert stored == [pr] and pr.title == "upper" and len(pr.samples) == 2
    assert 0.0 <= pr.baseline_accuracy <= 1.0 and 0.0 <= pr.passage_accuracy <= 1.0  # in-context, default recipe
    for s in pr.samples:
        assert s.prompt and s.text and 0.0 <= s.reward <= 1.0
        assert s.error is not None or s.recipe is not None  # ran a valid recipe, or says why not
    kept = [s for s in pr.samples if s.reward > 0 and s.error is None]
    assert result.metrics["kept"] == (1 if kept else 0)
    assert (result.policy is not None) == bool(kept)


def test_recipe_completion_is_what_follows_the_prompt():
    from seal_engine.fewshot.prompts import RESPONSE_PREFIX
    from seal_engine.rl.fewshot import recipe_completion

    written = RESPONSE_PREFIX + '"basic"], "loss": "output", "learning_rate": 0.001, "epochs": 2}'
    assert recipe_completion(written) == written[len(RESPONSE_PREFIX):]
    # A recipe found in chatter is fine-tuned on in its canonical form.
    chatty = 'Sure: {"epochs": 2, "loss": "all", "learning_rate": 0.01, "augmentations": []} ok?'
    got = RESPONSE_PREFIX + recipe_completion(chatty)
    assert json.loads(got) == {"augmentations": [], "loss": "all", "learning_rate": 0.01, "epochs": 2}


def test_bad_task_files_are_task_errors(tmp_path):
    from seal_engine.fewshot.arc import TaskError

    ch = tmp_path / "x_challenges.json"
    ch.write_text(json.dumps({"t1": {"train": [{"input": [[1]], "output": [[2]]}], "test": [{"input": [[1]]}]}}))
    (tmp_path / "x_solutions.json").write_text("{oops")
    with pytest.raises(TaskError, match="malformed JSON"):
        load_task_dataset("arc", str(ch))
    (tmp_path / "x_solutions.json").write_text("[1, 2]")
    with pytest.raises(TaskError, match="solutions are"):
        load_task_dataset("arc", str(ch))
    (tmp_path / "x_solutions.json").write_text(json.dumps({"t1": [[[2]]]}))
    [task] = load_task_dataset("arc", str(ch))  # the solutions file beside the challenges
    assert task.test_outputs == (((2,),),) and gradable(task)
    with pytest.raises(TaskError, match="no such file"):
        load_task_dataset("arc", str(ch), solutions=str(tmp_path / "missing.json"))
    (tmp_path / "t.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(TaskError):
        load_task_dataset("text", str(tmp_path / "t.json"))
