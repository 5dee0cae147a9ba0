"""Few-shot adaptation on the real tiny model: test-time training, inference, recipes, RL hooks."""

import json

import pytest

from seal_engine.config import FewShotSettings

# Pure-Python parts only at module level: collecting this file (e.g. with -m "not slow")
# must not import torch. The modules that run the model are imported inside the tests.
from seal_engine.fewshot.arc import ArcPair, ArcTask
from seal_engine.fewshot.augment import Geometric
from seal_engine.fewshot.recipes import Recipe, RecipeError
from seal_engine.fewshot.text_tasks import SuiteOptions, text_task_suite

pytestmark = pytest.mark.slow

# A constant made-up suffix: the kind of rule a few LoRA steps pick up and a 135M model
# rarely copies from 4 demonstrations. NOT YET MEASURED (the shared CPU lock was not
# available): confirm the task, epochs and thresholds with /tmp-style measurement runs.
LEARNED_TASK = "suffix_zop"
TTT_RECIPE = Recipe(augmentations=(), loss="output", learning_rate=1e-3, epochs=4)
TTT_SETTINGS = FewShotSettings(max_examples=16, batch_size=4)


def _task(name: str, n_test: int = 10):
    return text_task_suite(0, SuiteOptions(names=[name], n_test=n_test))[0]


def test_ttt_learns_a_text_task_that_in_context_learning_fails(bundle):
    from seal_engine.fewshot.execute import execute_recipe
    from seal_engine.fewshot.inference import answer_text

    task = _task(LEARNED_TASK)
    # Base answers alone, before and after training: the same batch shape, so bf16 kernels
    # (whose rounding depends on the batch) cannot make them differ; only a changed base could.
    before = answer_text(bundle, [(task, None)], TTT_SETTINGS)[0].answers
    run = execute_recipe(bundle, task, TTT_RECIPE, TTT_SETTINGS, seed=0)
    icl, ttt = answer_text(bundle, [(task, None), (task, run.adapter)], TTT_SETTINGS)
    assert icl.accuracy <= 0.2, icl.answers
    assert ttt.accuracy >= 0.8, ttt.answers
    assert run.adapter.losses[-1] < run.adapter.losses[0] / 2
    # The shared base model is left untouched by training.
    assert answer_text(bundle, [(task, None)], TTT_SETTINGS)[0].answers == before


def test_output_loss_masks_the_prompt_and_all_loss_does_not(bundle):
    from seal_engine.fewshot.training import encode_pair
    from seal_engine.training.sft import IGNORE

    out = encode_pair(bundle, "Input: a\nOutput:", " b", "output", 512)
    every = encode_pair(bundle, "Input: a\nOutput:", " b", "all", 512)
    assert out[0] == every[0]
    assert every[1] == every[0]
    n_prompt = len(bundle.tokenizer("Input: a\nOutput:", add_special_tokens=False)["input_ids"])
    assert out[1][:n_prompt] == [IGNORE] * n_prompt and IGNORE not in out[1][n_prompt:]
    assert out[1][-1] == bundle.tokenizer.eos_token_id  # the answer ends with EOS
    assert encode_pair(bundle, "x " * 600, "y", "output", 512) is None  # too long: dropped, not cut


def _flip_task() -> ArcTask:
    grids = [((1, 0, 0), (2, 2, 0), (0, 0, 3)), ((0, 4, 0), (4, 0, 0), (0, 0, 0)), ((5, 5, 0), (0, 0, 0), (0, 6, 6)),
             ((7, 0, 0), (0, 7, 0), (0, 8, 8))]
    flip = Geometric("flip_h")
    pairs = tuple(ArcPair(g, flip(g)) for g in grids)
    return ArcTask("flip", pairs[:3], (pairs[3].input,), (pairs[3].output,))


def test_arc_recipe_runs_and_answers_are_voted(bundle):
    from seal_engine.fewshot.execute import execute_recipe, plan_recipe
    from seal_engine.fewshot.inference import solve_arc

    task = _flip_task()
    settings = FewShotSettings(max_examples=8, batch_size=4, inference_transforms=["identity", "transpose", "flip_h"])
    recipe = Recipe(augmentations=("basic",), loss="output", learning_rate=1e-3, epochs=1)
    plan = plan_recipe(bundle, task, recipe, settings, seed=0)
    assert len(plan.examples) == 8 and plan.steps == 2
    assert all(p.endswith("<|im_start|>assistant\n") for p, _ in plan.pairs)
    run = execute_recipe(bundle, task, recipe, settings, seed=0)
    icl, adapted = solve_arc(bundle, [(task, None), (task, run.adapter)], settings)
    from collections import Counter

    from seal_engine.fewshot.augment import geometric
    from seal_engine.fewshot.grids import text_to_grid

    for outcome in (icl, adapted):
        assert len(outcome.raw) == 1 and len(outcome.raw[0]) == 3  # one answer per view
        # The attempts are the views' answers mapped back to the task's orientation, most votes first.
        grids = [text_to_grid(t) for t in outcome.raw[0]]
        votes = Counter(geometric(op).invert(g) for op, g in zip(settings.inference_transforms, grids) if g is not None)
        tries = outcome.attempts[0]
        assert len(tries) == min(2, len(votes)), (tries, votes)
        assert [votes[t] for t in tries] == sorted((votes[t] for t in tries), reverse=True) and all(votes[t] for t in tries)
        assert all(votes[g] <= votes[tries[-1]] for g in votes if g not in tries)
        assert outcome.solved is (task.test_outputs[0] in tries)


def test_refused_recipe_is_not_trained(bundle):
    from seal_engine.fewshot.execute import execute_recipe

    task = _task(LEARNED_TASK)
    big = Recipe(augmentations=("reorder",), loss="all", learning_rate=1e-3, epochs=10)
    with pytest.raises(RecipeError, match="over the budget of 5"):
        execute_recipe(bundle, task, big, FewShotSettings(step_budget=5), seed=0)


def test_free_recipe_sampling_and_resampling(bundle):
    from seal_engine.fewshot.prompts import RESPONSE_PREFIX, recipe_prompt
    from seal_engine.fewshot.recipe_sampling import sample_recipes

    tasks = [_task(LEARNED_TASK), _flip_task()]
    settings = FewShotSettings(max_resamples=1, recipe_max_new_tokens=48, recipe_decoding="free")
    prompt = recipe_prompt(bundle, tasks[1], settings)
    assert prompt.endswith(RESPONSE_PREFIX) and '"size"' in prompt and "in\n100\n220\n003\nout\n001" in prompt
    drawn = sample_recipes(bundle, tasks, 3, settings, seed=0)
    assert [p for p, _ in drawn] == [recipe_prompt(bundle, t, settings) for t in tasks]
    for _, draws in drawn:
        assert len(draws) == 3
        for d in draws:
            assert d.text.startswith(RESPONSE_PREFIX) and d.tries in (1, 2)
            assert (d.recipe is None) == bool(d.error)
            if d.ok:
                assert d.tries >= 1 and d.text.endswith("}")  # cut right after the object
            else:
                assert d.tries == 2  # re-drawn once, then recorded as failed
    # The tiny model, decoding freely, practically never writes a valid recipe (measured: 0 of 6 here), so the
    # branches above are checked, deterministically, with a scripted writer in
    # tests/engine/fewshot/test_recipes.py::test_free_sampling_cuts_valid_draws_and_redraws_only_invalid_ones.


def test_constrained_sampling_writes_only_valid_recipes_and_still_varies(bundle):
    from seal_engine.fewshot.recipe_sampling import sample_recipes

    tasks = [_task(LEARNED_TASK), _flip_task()]
    settings = FewShotSettings(max_resamples=0)  # constrained is the default: nothing to re-draw
    drawn = sample_recipes(bundle, tasks, 6, settings, seed=0)
    for (_, draws), domain in zip(drawn, ("text", "arc")):
        assert all(d.ok and d.tries == 1 for d in draws), [d.error for d in draws]
        # The text is the canonical JSON, so the writer is later fine-tuned on exactly it.
        assert [d.text for d in draws] == [d.recipe.to_json() for d in draws]
        assert all(d.recipe.learning_rate in settings.recipe_learning_rates for d in draws)
        assert len({d.text for d in draws}) > 1  # sampled from the writer, not a fixed answer
    assert any(d.recipe.augmentations for _, draws in drawn for d in draws)


def test_rl_hooks_score_recipes_and_record_failures(bundle):
    from seal_engine.fewshot.prompts import RESPONSE_PREFIX
    from seal_engine.rl.fewshot import evaluate_task_recipes, recipe_completion
    from seal_engine.rl.loop import select_best
    from seal_engine.rl.results import PassageResult, RecipeSampleResult

    # Two batches an epoch (steps = epochs x batches), of two episodes each: small, cheap steps.
    task = _task(LEARNED_TASK, n_test=2)
    settings = FewShotSettings(max_examples=4, batch_size=2, step_budget=12)
    good = Recipe(augmentations=(), loss="output", learning_rate=1e-3, epochs=2).to_json()
    over = Recipe(augmentations=(), loss="output", learning_rate=1e-3, epochs=10).to_json()
    texts = ["Here you go: " + good + " Good luck!", "I would train for a while.", over]
    result = evaluate_task_recipes(bundle, task, 3, "PROMPT", texts, settings, seed=0)
    assert result.passage == 3 and result.title == task.name and result.baseline_retention is None
    assert 0 <= result.baseline_accuracy <= 1 and 0 <= result.passage_reward <= 1
    ok, bad, refused = result.samples
    assert isinstance(ok, RecipeSampleResult) and ok.error is None and ok.steps == 4 and ok.examples == 4
    assert ok.recipe["epochs"] == 2 and ok.reward == ok.adapted_accuracy == ok.rewards[0]["reward"]
    assert bad.error == "no JSON object found" and bad.reward == 0 and bad.steps == 0
    assert "over the budget of 12" in refused.error and refused.reward == 0 and refused.recipe["epochs"] == 10
    again = PassageResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.samples[2].error == refused.error and again.samples[0].reward == ok.reward
    # What the RL loop keeps and fine-tunes the writer on (seal_engine.rl.loop.select_best / train_policy).
    kept = [(s.prompt, recipe_completion(s.text)) for s in select_best([result], successful_only=True)]
    assert kept == ([("PROMPT", good[len(RESPONSE_PREFIX):])] if ok.reward > 0 else [])
