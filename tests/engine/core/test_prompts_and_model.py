import dataclasses

import pytest

from seal_engine.core.model import get_model
from seal_engine.knowledge.prompts import (
    STRATEGIES,
    UnknownStrategyError,
    answer_prompt,
    get_strategy,
    self_edit_prompt,
)


def test_model_is_loaded_once_per_process(bundle, engine_settings):
    assert get_model(engine_settings) is bundle
    assert bundle.is_chat  # SmolLM2-Instruct has a chat template
    assert not any(p.requires_grad for p in bundle.model.parameters())


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_chat_and_base_prompts(bundle, name):
    strategy = get_strategy(name)
    chat = self_edit_prompt(bundle, strategy, "Zorblax", "It was founded in 1887.")
    assert "<|im_start|>system" in chat and "Zorblax\nIt was founded in 1887." in chat
    assert chat.endswith("<|im_start|>assistant\n" + strategy.response_prefix)
    base_bundle = dataclasses.replace(bundle, is_chat=False)
    raw = self_edit_prompt(base_bundle, strategy, "Zorblax", "It was founded in 1887.")
    assert "<|im_start|>" not in raw and "Passage:\nZorblax\nIt was founded in 1887." in raw
    assert "<|im_start|>" not in answer_prompt(base_bundle, "Q?") and answer_prompt(base_bundle, "Q?").endswith("Answer:")


def test_custom_template(bundle):
    s = get_strategy("custom", "Summarise {title}: {context}")
    prompt = self_edit_prompt(bundle, s, "T", "C")
    assert "Summarise T: C" in prompt
    with pytest.raises(UnknownStrategyError, match="template"):
        get_strategy("custom")
    with pytest.raises(UnknownStrategyError, match="bad placeholder"):
        get_strategy("custom", "{title} {context} {oops}")


def test_passage_strategy_has_no_prompt():
    assert get_strategy("passage") is None
    with pytest.raises(UnknownStrategyError, match="unknown strategy"):
        get_strategy("poems")
