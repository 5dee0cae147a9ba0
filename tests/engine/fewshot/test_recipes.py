"""Recipe parsing and validation (clear reasons), the step budget, voting and pass@2."""

import json

import pytest

from seal_engine.config import FewShotSettings
from seal_engine.fewshot.recipes import (
    GROUPS,
    Recipe,
    RecipeError,
    check_budget,
    default_recipe,
    extract_json_object,
    find_json_object,
    parse_recipe,
    recipe_steps,
    schema_text,
    validate_recipe,
)
from seal_engine.fewshot.voting import exact_match, solved, vote

S = FewShotSettings()
GOOD = {"augmentations": ["basic", "size"], "loss": "output", "learning_rate": 0.001, "epochs": 3}


def test_parse_a_valid_recipe():
    r = parse_recipe(json.dumps(GOOD), "arc", S)
    assert r == Recipe(augmentations=("basic", "size"), loss="output", learning_rate=1e-3, epochs=3)
    assert parse_recipe(r.to_json(), "arc", S) == r  # round trip


def test_json_embedded_in_chatter_and_fences():
    text = ('Sure! Here is a recipe {not json} for you:\n```json\n'
            '{"augmentations": ["paraphrase"], "loss": "all", "learning_rate": 5e-4, "epochs": 2}\n```\nGood luck {')
    r = parse_recipe(text, "text", S)
    assert r.augmentations == ("paraphrase",) and r.loss == "all" and r.epochs == 2
    obj, start, end = find_json_object(text)
    assert text[start:end].startswith('{"augmentations"') and text[end:].startswith("\n```")


def test_first_object_wins_and_nested_values_do_not_confuse():
    assert extract_json_object('{"a": {"b": 1}} {"c": 2}') == {"a": {"b": 1}}
    assert extract_json_object('[1, 2] then {"x": [1, {"y": 2}]}') == {"x": [1, {"y": 2}]}


def test_duplicates_collapse_and_integral_floats_are_whole_epochs():
    r = parse_recipe(json.dumps({**GOOD, "augmentations": ["basic", "basic"], "epochs": 2.0}), "arc", S)
    assert r.augmentations == ("basic",) and r.epochs == 2 and isinstance(r.epochs, int)
    assert parse_recipe(json.dumps({**GOOD, "augmentations": []}), "arc", S).augmentations == ()


@pytest.mark.parametrize("text,reason", [
    ("no braces at all", "no JSON object found"),
    ('{"augmentations": ["basic"], "loss": "output",', "invalid JSON"),
    ("{'augmentations': ['basic']}", "invalid JSON"),
    ("[1, 2, 3]", "no JSON object found"),
    (json.dumps({**GOOD, "augmentations": ["basic", "zoom"]}), "unknown augmentation group 'zoom' (choose from basic"),
    (json.dumps({**GOOD, "augmentations": "basic"}), "augmentations must be a list"),
    (json.dumps({**GOOD, "loss": "inputs"}), 'loss must be "all" or "output"'),
    (json.dumps({**GOOD, "learning_rate": 0.5}), "learning_rate 0.5 is outside [1e-05, 0.01]"),
    (json.dumps({**GOOD, "learning_rate": 0}), "learning_rate 0 is outside"),
    (json.dumps({**GOOD, "learning_rate": "1e-3"}), "learning_rate '1e-3' is outside"),
    (json.dumps({**GOOD, "learning_rate": True}), "learning_rate True is outside"),
    (json.dumps({**GOOD, "epochs": 50}), "epochs 50 is not a whole number in [1, 10]"),
    (json.dumps({**GOOD, "epochs": 0}), "epochs 0 is not a whole number"),
    (json.dumps({**GOOD, "epochs": 2.5}), "epochs 2.5 is not a whole number"),
    (json.dumps({**GOOD, "max_examples": 0}), "max_examples 0 is not a whole number in [1, 48]"),
    (json.dumps({**GOOD, "batch_size": 4}), "unknown field 'batch_size'"),
    (json.dumps({k: v for k, v in GOOD.items() if k != "loss"}), "missing field 'loss'"),
])
def test_invalid_recipes_give_reasons(text, reason):
    with pytest.raises(RecipeError) as e:
        parse_recipe(text, "arc", S)
    assert reason in e.value.reason, e.value.reason
    assert str(e.value) == e.value.reason


def test_groups_are_per_domain():
    with pytest.raises(RecipeError, match="unknown augmentation group 'paraphrase'"):
        parse_recipe(json.dumps({**GOOD, "augmentations": ["paraphrase"]}), "arc", S)
    with pytest.raises(RecipeError, match="unknown augmentation group 'basic' \\(choose from paraphrase, reorder\\)"):
        parse_recipe(json.dumps(GOOD), "text", S)


def test_bounds_follow_settings():
    tight = FewShotSettings(max_epochs=2, lr_max=1e-3)
    with pytest.raises(RecipeError, match=r"epochs 3 is not a whole number in \[1, 2\]"):
        parse_recipe(json.dumps(GOOD), "arc", tight)
    with pytest.raises(RecipeError, match="learning_rate 0.002"):
        parse_recipe(json.dumps({**GOOD, "learning_rate": 2e-3, "epochs": 1}), "arc", tight)


def test_step_budget():
    r = Recipe(augmentations=(), loss="output", learning_rate=1e-3, epochs=4)
    s = FewShotSettings(batch_size=4, step_budget=20)
    assert recipe_steps(r, 17, 4) == 4 * 5
    assert check_budget(r, 17, s) == 20  # at the budget: allowed
    with pytest.raises(RecipeError) as e:
        check_budget(r, 21, s)
    assert e.value.reason == (
        "the recipe needs 24 training steps (4 epochs x 21 examples in batches of 4), over the budget of 20"
    )


def test_default_recipes_are_valid_and_schema_lists_groups():
    for domain in ("arc", "text"):
        d = default_recipe(domain)
        assert parse_recipe(d.to_json(), domain, S) == d
        schema = schema_text(domain, S)
        assert all(f'"{g}"' in schema for g in GROUPS[domain])
        assert "learning_rate" in schema and "epochs" in schema


# --- voting --------------------------------------------------------------------------

A, B, C = ((1,),), ((2,),), ((3,),)


def test_vote_majority_then_first_seen():
    assert vote([B, A, A, C, B, A]) == [A, B]
    assert vote([C, B, B, C]) == [C, B]  # tie: the one seen first (plain view first)
    assert vote([None, None, A]) == [A]  # unparsable answers cast no vote
    assert vote([None]) == []
    assert vote([A, B, C], attempts=1) == [A]
    assert vote([A, B, C], attempts=3) == [A, B, C]


def test_pass_at_2_needs_every_test_output():
    assert solved([[A, B]], [B])
    assert not solved([[A, C]], [B])
    assert solved([[A], [B, C]], [A, C])
    assert not solved([[A], [B]], [A, C])  # one of two test inputs wrong: not solved
    assert not solved([[A]], [A, B])  # a missing test input: not solved
    assert not solved([[]], [A])


def test_text_exact_match():
    assert exact_match(" dax\n", "dax")
    assert not exact_match("Dax", "dax")
    assert not exact_match("dax.", "dax")


def test_constrained_pattern_accepts_exactly_canonical_recipes():
    import re

    from seal_engine.fewshot.constrained import recipe_pattern
    from seal_engine.fewshot.prompts import RESPONSE_PREFIX

    settings = FewShotSettings(max_epochs=6)
    arc, text = recipe_pattern("arc", settings), recipe_pattern("text", settings)

    def completion(recipe: Recipe) -> str:
        return recipe.to_json()[len(RESPONSE_PREFIX):]

    ok = [Recipe(augmentations=("basic", "chain"), loss="all", learning_rate=3e-4, epochs=6), default_recipe("arc"),
          Recipe(augmentations=(), learning_rate=1e-4, epochs=1)]
    for r in ok:
        assert re.fullmatch(arc, completion(r)), r
        validate_recipe(json.loads(r.to_json()), "arc", settings)
    assert re.fullmatch(text, completion(default_recipe("text")))
    bad = [
        Recipe(augmentations=("basic",), learning_rate=5e-4, epochs=2),  # off the learning-rate grid
        Recipe(augmentations=("basic",), epochs=7),  # above max_epochs
        Recipe(augmentations=("paraphrase",)),  # a text group in an ARC recipe
    ]
    for r in bad:
        assert not re.fullmatch(arc, completion(r)), r
    assert not re.fullmatch(arc, 'group names], "loss": "all" or "output", "learning_rate": 0.001, "epochs": 2}')
    assert not re.fullmatch(arc, '], "loss": "output", "learning_rate": 0.001, "epochs": 2} and more')


def test_learning_rate_grid_must_lie_within_bounds():
    assert FewShotSettings(recipe_learning_rates=[1e-3, 1e-4, 1e-3]).recipe_learning_rates == [1e-4, 1e-3]
    with pytest.raises(ValueError, match="within"):
        FewShotSettings(recipe_learning_rates=[0.5])
    with pytest.raises(ValueError, match="within"):
        FewShotSettings(recipe_learning_rates=[])
    assert "one of 0.0001, 0.0003, 0.001, 0.003" in schema_text("text", FewShotSettings())
    assert "number from" in schema_text("text", FewShotSettings(recipe_decoding="free"))


def test_default_learning_rate_grid_follows_the_bounds():
    assert FewShotSettings(lr_max=1e-3).recipe_learning_rates == [1e-4, 3e-4, 1e-3]
    assert FewShotSettings(lr_min=0.005, lr_max=0.008).recipe_learning_rates == [0.005, 0.008]


def test_free_sampling_cuts_valid_draws_and_redraws_only_invalid_ones(monkeypatch):
    """sample_recipes with a scripted writer (no model): a valid draw is cut right after its JSON object and
    kept; only invalid draws are drawn again, at most max_resamples times, and the last failure is recorded."""
    from seal_engine.fewshot import recipe_sampling
    from seal_engine.fewshot.prompts import RESPONSE_PREFIX
    from seal_engine.fewshot.text_tasks import SuiteOptions, text_task_suite

    task = text_task_suite(0, SuiteOptions(names=["suffix_zop"], n_test=2))[0]
    good = json.dumps(GOOD | {"augmentations": []})
    script = [["not json", good + " and then some chatter", "{oops"],  # round 0: draws 0, 1, 2
              [good + "\n\nmore", "still {not json"],  # round 1: only draws 0 and 2
              ["{nope"]]  # round 2: only draw 2
    calls: list[list[str]] = []

    def writer(_bundle, prompts, **_kw):
        calls.append(list(prompts))
        return script[len(calls) - 1]

    monkeypatch.setattr(recipe_sampling, "generate", writer)
    monkeypatch.setattr(recipe_sampling, "recipe_prompt", lambda _b, t, _s: f"write a recipe for {t.name}")
    settings = FewShotSettings(recipe_decoding="free", max_resamples=2)
    [(prompt, draws)] = recipe_sampling.sample_recipes(None, [task], 3, settings, seed=0)
    assert prompt == f"write a recipe for {task.name}" and [len(c) for c in calls] == [3, 2, 1]
    assert [(d.ok, d.tries) for d in draws] == [(True, 2), (True, 1), (False, 3)]
    assert draws[0].text == draws[1].text == RESPONSE_PREFIX + good  # the chatter after the object is cut off
    assert draws[1].recipe.to_json() == draws[0].recipe.to_json() and draws[0].error is None
    assert draws[2].recipe is None and draws[2].text == RESPONSE_PREFIX + "{nope" and draws[2].error
