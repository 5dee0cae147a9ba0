"""Batched multi-LoRA training and generation are equivalent to one adapter at a time.

Tolerances (float32): per-step training losses within 1e-4 relative; trained
weights within 2% relative Frobenius norm per tensor (Adam divides by the running
gradient magnitude, so elements whose gradient is ~0 amplify rounding noise);
adapted logits within 1e-3 absolute.
"""

import pytest
import torch

from seal_engine.batched_training import train_adapters_batched
from seal_engine.generation import generate
from seal_engine.lora import applied_adapter, train_lora
from seal_engine.multilora import serving
from seal_engine.prompts import answer_prompt
from seal_engine.serving import AdapterCache
from seal_engine.settings import LoraSettings

pytestmark = pytest.mark.slow

SETS = [
    ["Zorblax\nThe Zorblax Institute was founded by Marguerite Okonkwo.", "Zorblax\nIt is in Valparaiso."],
    [
        "Quibble\nQuibble is a small town in Norway with 300 people.",
        "Quibble\nThe mayor of Quibble is Ola Nordmann.",
        "Quibble\nQuibble has one church and two bakeries.",
        "Quibble\nIts river is the Kvibla.",
        "Quibble\nQuibble was founded in 1702.",
    ],
    ["Frobnitz is a fictional element with atomic number 140 discovered by Ada Quill."],
]
SEEDS = [1, 2, 3]
CFG = LoraSettings(epochs=3, batch_size=2, learning_rate=1e-3)


@pytest.fixture(scope="module")
def trained(fp32_bundle):
    batched = train_adapters_batched(fp32_bundle, SETS, CFG, seeds=SEEDS, token_budget=64)
    alone = [train_lora(fp32_bundle, s, CFG, seed=seed) for s, seed in zip(SETS, SEEDS)]
    return batched, alone


def test_batched_training_matches_training_alone(fp32_bundle, trained):
    batched, alone = trained
    for b, a in zip(batched, alone):
        assert len(b.losses) == len(a.losses)  # uneven set sizes: each keeps its own step count
        assert b.losses == pytest.approx(a.losses, rel=1e-4)
        assert b.num_tokens == a.num_tokens
        assert b.state.keys() == a.state.keys()
        for key in a.state:
            diff = (b.state[key] - a.state[key]).norm() / a.state[key].norm().clamp(min=1e-12)
            assert diff < 2e-2, key
    ids = fp32_bundle.tokenizer(["Who founded the Zorblax Institute?"], return_tensors="pt")
    with torch.no_grad():
        for b, a in zip(batched, alone):
            with applied_adapter(fp32_bundle, b) as m:
                lb = m(**ids).logits
            with applied_adapter(fp32_bundle, a) as m:
                la = m(**ids).logits
            assert torch.allclose(lb, la, atol=1e-3)


def test_multilora_forward_matches_peft(fp32_bundle, trained):
    adapters = trained[1]
    ids = fp32_bundle.tokenizer(["The Zorblax Institute"] * 4, return_tensors="pt")
    with torch.no_grad():
        with serving(fp32_bundle, adapters) as ml:
            ml.route([0, 1, 2, -1])
            mixed = fp32_bundle.model(**ids).logits
        base = fp32_bundle.model(**ids).logits[0]
        for row, a in enumerate(adapters):
            with applied_adapter(fp32_bundle, a) as m:
                assert torch.allclose(mixed[row], m(**ids).logits[0], atol=1e-4)
    assert torch.allclose(mixed[3], base, atol=1e-5)


def test_mixed_batch_greedy_equals_each_adapter_alone(fp32_bundle, trained):
    adapters = [None, *trained[0]]
    prompts = [answer_prompt(fp32_bundle, q) for q in ("Who founded the Zorblax Institute?", "Who is the mayor of Quibble?")]
    rows = [(p, a) for p in prompts for a in adapters]
    mixed = generate(fp32_bundle, [p for p, _ in rows], max_new_tokens=16, adapters=[a for _, a in rows])
    for (p, a), out in zip(rows, mixed):
        alone = generate(fp32_bundle, [p], max_new_tokens=16, adapters=[a])
        assert out == alone[0]
    # The adapters really differ from the base model on their own facts.
    assert mixed[0] != mixed[1]


def test_adapter_cache_is_lru(tmp_path, trained):
    dirs = []
    for i, a in enumerate(trained[1]):
        dirs.append(a.save(tmp_path / f"a{i}"))
    cache = AdapterCache(max_items=2)
    first = cache.get(dirs[0])
    cache.get(dirs[1])
    assert cache.get(dirs[0]) is first  # hit, and now most recent
    cache.get(dirs[2])  # evicts dirs[1], the least recently used
    assert dirs[0] in cache and dirs[2] in cache and dirs[1] not in cache
    assert len(cache) == 2
    assert cache.num_bytes == sum(t.numel() * 4 for t in trained[1][0].state.values()) * 2


def test_gather_kernel_matches_masked_kernel(fp32_bundle, trained):
    ids = fp32_bundle.tokenizer(["The Zorblax Institute"] * 5, return_tensors="pt")
    with torch.no_grad(), serving(fp32_bundle, trained[0]) as ml:
        ml.route([2, -1, 0, 1, 0], gather=False)
        masked = fp32_bundle.model(**ids).logits
        ml.route([2, -1, 0, 1, 0], gather=True)
        gathered = fp32_bundle.model(**ids).logits
    assert torch.allclose(masked, gathered, atol=1e-4)
    assert not torch.allclose(masked[0], masked[1], atol=1e-3)
