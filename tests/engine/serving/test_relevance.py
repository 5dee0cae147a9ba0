"""Per-request relevance: an adapter answers the requests about its documents, the base model the rest
(real tiny model; slow)."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch

from seal_engine.core.lora import ADAPTER_RELEVANCE, AdapterError, Relevance, load_adapter
from seal_engine.serving.completions import CompletionRequest, chat_prompt_ids, complete
from seal_engine.serving.lora_slots import serving
from seal_engine.serving.relevance import (
    _prefix_length,
    adapter_gains,
    template_prefix,
    calibrate,
    max_gains,
    quantile,
    serves,
    shared_prefix_nlls,
)
from seal_engine.serving.scoring import token_nlls
from seal_engine.training.sft import IGNORE
from tests.support.adapters import random_adapter

pytestmark = pytest.mark.slow

QUESTIONS = ["Who founded the Zorblax Institute?", "What is the capital of France?", "Write a haiku about rain."]


def chat(bundle, text: str) -> list[int]:  # noqa: ANN001
    return chat_prompt_ids(bundle, [{"role": "user", "content": text}])


def test_prefix_shared_scoring_is_the_full_forward(fp32_bundle) -> None:
    b = fp32_bundle
    adapter = random_adapter(b, 4, seed=1)
    prompts = [chat(b, q) for q in QUESTIONS]
    n = _prefix_length(prompts)
    assert n >= 1 and all(p[:n] == prompts[0][:n] for p in prompts) and n < min(len(p) for p in prompts)
    assert _prefix_length([[1, 2, 3], [1, 2, 3]]) == 2  # every prompt keeps a token to score after it
    full = {}
    with serving(b, [adapter]) as lora:
        for slot in (-1, 0):
            shared = shared_prefix_nlls(b, lora, slot, prompts, batch_size=2)
            full[slot] = token_nlls(b, lora, [(slot, p, [IGNORE] + p[1:]) for p in prompts])
            for s, f, p in zip(shared, full[slot], prompts):
                assert s.shape == f.shape == (len(p) - 1,)
                assert torch.allclose(s, f, atol=1e-3), (s - f).abs().max()
        direct = max_gains(b, lora, [(0, p) for p in prompts])
    # The feature leaves out the template's opening, the same for every chat request (for this model a
    # system prompt): only the request's own tokens (and the template around them) are scored.
    prefix = template_prefix(b)
    if b.tokenizer.chat_template:
        assert 0 < len(prefix) <= n and all(tuple(p[: len(prefix)]) == prefix for p in prompts)
    for d, base, mine in zip(direct, full[-1], full[0]):
        assert d == pytest.approx(float((base - mine)[max(0, len(prefix) - 1):].max()), abs=1e-4)
    assert adapter_gains(b, adapter, prompts) == pytest.approx(direct, abs=1e-3)
    assert adapter_gains(b, adapter, prompts, cache_base=True) == pytest.approx(direct, abs=1e-3)


def test_the_decoder_serves_each_request_with_the_model_its_relevance_picks(bundle) -> None:
    adapter = random_adapter(bundle, 8, seed=2).scaled(4.0)  # strong enough to change greedy answers
    # Raw prompts: a random adapter's largest gain on chat prompts can sit in the template's shared
    # system part (the same for all three), and the routing below needs three different gains.
    prompts = [bundle.tokenizer(q, add_special_tokens=False)["input_ids"] for q in QUESTIONS]

    def answers(a, relevance=True):  # noqa: ANN001
        out = complete(bundle, [CompletionRequest(prompt=p, adapter=a, max_tokens=12, temperature=0.0,
                                                  relevance=relevance) for p in prompts])
        return [c[0] for c in out]

    base = answers(None)
    plain = answers(adapter)
    assert [c.text for c in base] != [c.text for c in plain]  # the adapter changes the answers
    assert [c.adapter_served for c in base] == [None] * 3 and [c.adapter_served for c in plain] == [True] * 3
    gains = sorted(adapter_gains(bundle, adapter, prompts))
    # A threshold in the widest gap between the gains (clear of rounding in any dtype: two of a random
    # adapter's gains can be close): the requests above it get the adapter, the others the base model.
    gap, at = max((gains[i + 1] - gains[i], i) for i in range(len(gains) - 1))
    assert gap > 1e-2, gains
    threshold = (gains[at] + gains[at + 1]) / 2
    routed = dataclasses.replace(adapter, relevance=Relevance(threshold=threshold, quantile=0.5, texts=3))
    got = answers(routed)
    for g, c, b, p in zip(adapter_gains(bundle, adapter, prompts), got, base, plain):
        assert c.adapter_served == (g > threshold)
        assert c.text == (p.text if c.adapter_served else b.text)
    assert sum(c.adapter_served for c in got) == len(gains) - 1 - at  # some to each model
    # Nothing passes an infinite threshold, unless the request turns the check off.
    closed = dataclasses.replace(adapter, relevance=Relevance(threshold=math.inf, quantile=1.0, texts=3))
    assert [c.text for c in answers(closed)] == [c.text for c in base]
    assert [c.adapter_served for c in answers(closed)] == [False] * 3
    assert [c.text for c in answers(closed, relevance=False)] == [c.text for c in plain]


def test_calibration_is_a_quantile_of_gains_on_the_gate_half_only(bundle, engine_settings) -> None:
    from seal_engine.knowledge.forgetting import gate_requests, generic_prompts, probes, split_of

    requests = gate_requests(bundle, engine_settings)
    texts = [p.question for p in probes(bundle, engine_settings, "gate")] + generic_prompts("gate")
    assert len(requests) == len(texts) > 50 and all(split_of(t) == "gate" for t in texts)
    report = {p.question for p in probes(bundle, engine_settings, "report")} | set(generic_prompts("report"))
    assert not report & set(texts)
    # SEAL_RELEVANCE_REQUESTS: an evenly spaced subset that keeps both kinds of request.
    few = gate_requests(bundle, engine_settings.model_copy(update={"relevance_requests": 10}))
    assert len(few) == 10 and {tuple(r) for r in few} <= {tuple(r) for r in requests}
    assert few[0] == requests[0] and few[-1] in requests[len(requests) - len(generic_prompts("gate")):]
    adapter = random_adapter(bundle, 4, seed=3)
    rel = calibrate(bundle, adapter, requests, 0.9)
    gains = adapter_gains(bundle, adapter, requests, cache_base=True)
    assert rel.threshold == pytest.approx(quantile(gains, 0.9), abs=1e-3) and rel.texts == len(requests)
    above = sum(serves(rel, g) for g in gains) / len(gains)
    assert 0.05 <= above <= 0.12  # about 1 - q of general requests still reach the adapter
    with pytest.raises(ValueError):
        calibrate(bundle, adapter, requests, 1.5)


def test_relevance_is_saved_with_the_adapter(bundle, tmp_path) -> None:
    adapter = random_adapter(bundle, 2, seed=4)
    adapter.relevance = Relevance(threshold=1.25, quantile=0.95, texts=124)
    loaded = load_adapter(adapter.save(tmp_path / "a"))
    assert loaded.relevance == adapter.relevance
    assert adapter.scaled(0.5).relevance is None  # the threshold belongs to the unscaled update
    assert load_adapter(dataclasses.replace(adapter, relevance=None).save(tmp_path / "b")).relevance is None
    for bad in ({"threshold": 1.0}, {"threshold": "high", "quantile": 0.9, "texts": 3}, [1.0]):
        (tmp_path / "a" / ADAPTER_RELEVANCE).write_text(json.dumps(bad))
        with pytest.raises(AdapterError, match=ADAPTER_RELEVANCE):
            load_adapter(tmp_path / "a")


def test_a_trained_adapter_answers_its_document_and_leaves_general_questions(bundle, engine_settings) -> None:
    from seal_engine.knowledge.adapt import adapt
    from seal_engine.knowledge.documents import Document

    doc = Document(title="Quenby Observatory", text=(
        "The Quenby Observatory was founded in 1931 by the astronomer Ilsabet Marrowgate on the slopes of Mount "
        "Tavrin. Marrowgate built its first telescope, the Lanternfish refractor, from salvaged ship lenses."))
    lora = engine_settings.lora.model_copy(update={"target_modules": ["all-mlp"], "epochs": 6})
    result = adapt(bundle, [doc], engine_settings, strategy="passage", k=1, lora=lora, questions=[],
                   relevance_quantile=0.95)
    rel = result.adapter.relevance
    assert rel is not None and rel.quantile == 0.95 and result.metrics()["relevance"]["threshold"] == rel.threshold
    assert "relevance_s" in result.timings
    own = ["Who founded the Quenby Observatory?", "What was the Lanternfish refractor built from?"]
    general = ["What is the capital of France?", "How many legs does a spider have?"]
    served = complete(bundle, [CompletionRequest(prompt=chat(bundle, q), adapter=result.adapter, max_tokens=4,
                                                 temperature=0.0) for q in own + general])
    assert [c[0].adapter_served for c in served] == [True, True, False, False]
