"""Batched multi-LoRA training and generation are equivalent to one adapter at a time.

Tolerances (float32): per-step training losses within 1e-4 relative; trained
weights within 2% relative Frobenius norm per tensor (Adam divides by the running
gradient magnitude, so elements whose gradient is ~0 amplify rounding noise);
adapted logits within 1e-3 absolute. The serving kernels (dense and gathered, weights
in the model's dtype with the scaling folded in) against the training kernel (float32
LoRA terms, the path serving took before): float32 logits within 1e-4 absolute; bfloat16
logits within 0.1 absolute (logits span about +-30; bfloat16 keeps 8 bits of mantissa)
with the same argmax at every position.
"""

import threading

import pytest
import torch

from seal_engine.config import LoraSettings, SFTSettings
from seal_engine.core.generation import generate
from seal_engine.core.lora import applied_adapter, module_paths
from seal_engine.knowledge.prompts import answer_prompt
from seal_engine.serving.batcher import ContinuousBatcher
from seal_engine.serving.completions import AdapterCache, CompletionRequest, complete
from seal_engine.serving.decoder import Decoder, DecodeRequest
from seal_engine.serving.lora_slots import ServingLora, serving
from seal_engine.training.batched import train_adapters_batched
from seal_engine.training.multilora import installed
from seal_engine.training.peft import train_lora
from seal_engine.training.sft import train_sft
from tests.support.adapters import random_adapter

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


PAIRS = [
    ("Question: Who founded the Zorblax Institute?\nAnswer:", " Marguerite Okonkwo founded it."),
    ("Question: Where is the Zorblax Institute?\nAnswer:", " In Valparaiso."),
    ("Question: When was the Zorblax Institute founded?\nAnswer:", " In 1887, by a chemist."),
]


def test_batched_training_on_pairs_matches_sft_alone(fp32_bundle):
    """(prompt, completion) examples: loss on the completion only, exactly as the PEFT SFT loop trains them."""
    cfg = SFTSettings(epochs=2, batch_size=2, learning_rate=1e-3, max_seq_length=128)
    [b] = train_adapters_batched(fp32_bundle, [PAIRS], cfg, seeds=[4], token_budget=64)
    a = train_sft(fp32_bundle, PAIRS, cfg, seed=4)
    assert len(b.losses) == len(a.losses) == 4
    assert b.losses == pytest.approx(a.losses, rel=1e-4)
    for key in a.state:
        diff = (b.state[key] - a.state[key]).norm() / a.state[key].norm().clamp(min=1e-12)
        assert diff < 2e-2, key
    # Prompt tokens carry no loss: training on the same pairs with other prompts' tokens masked
    # differs from training on the whole text.
    [whole] = train_adapters_batched(fp32_bundle, [[p + c for p, c in PAIRS]], cfg, seeds=[4], token_budget=64)
    assert whole.losses != pytest.approx(b.losses, rel=1e-2)


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


# --- serving kernels and the continuous decoder -------------------------------------------------


def training_kernel_logits(bundle, adapters, rows, ids):
    """Logits through the training layer (float32 LoRA terms, masked), as serving did before."""
    paths = sorted({p for a in adapters for p in module_paths(a)})
    with torch.no_grad(), installed(bundle, paths, len(adapters), max(a.config.r for a in adapters)) as ml:
        for i, a in enumerate(adapters):
            ml.load(i, a)
        ml.route(rows, gather=False)
        return bundle.model(**ids).logits


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_serving_kernels_match_training_kernel(fp32_bundle, bundle, dtype):
    b = fp32_bundle if dtype == "float32" else bundle
    if b.dtype != getattr(torch, dtype):
        pytest.skip(f"the default model is not {dtype} on this machine")
    # Mixed ranks and target sets: slots widen (rank 4 -> 16), grow (1 -> 2 -> 4) and wrap new modules.
    adapters = [random_adapter(b, 4, 1, ["q_proj", "v_proj"]), random_adapter(b, 16, 2), random_adapter(b, 8, 3)]
    rows = [1, -1, 0, 2, 1]
    ids = b.tokenizer(["The Zorblax Institute was founded by"] * len(rows), return_tensors="pt")
    old = training_kernel_logits(b, adapters, rows, ids)
    with torch.inference_mode(), b.lock:
        sl = ServingLora(b)
        assert [sl.acquire([a]) for a in adapters] == [[0], [1], [2]]
        assert sl.rank == 16 and len(sl.loaded) == 4
        with sl.attached():
            sl.route(rows, gather=True)
            gathered = b.model(**ids).logits
            sl.route(rows, gather=False)
            segment = b.model(**ids).logits
            sl.route(None)
            base = b.model(**ids).logits
    if dtype == "bfloat16":
        # bf16 rounds the LoRA term at every layer where the training kernel kept it in fp32,
        # so compare both against the fp32 truth: serving may drift a little further, not much.
        truth = training_kernel_logits(fp32_bundle, adapters, rows, ids)
        old_err = (old.float() - truth).abs().mean()
    for new in (gathered, segment):
        if dtype == "float32":
            assert torch.allclose(new, old, atol=1e-4), (new - old).abs().max()
        else:
            err = (new.float() - truth).abs().mean()
            assert err < 1.5 * old_err, (err, old_err)
        if dtype == "float32":
            assert torch.equal(new.argmax(-1), old.argmax(-1))
        else:
            # Where the truth's top two logits are near-tied, bf16 rounding may pick either (in either
            # kernel); wherever the truth is decided, serving picks its token.
            top2 = truth.topk(2, dim=-1).values
            decided = (top2[..., 0] - top2[..., 1]) > 0.5
            assert decided.float().mean() > 0.5
            assert torch.equal(new.argmax(-1)[decided], truth.argmax(-1)[decided])
    assert torch.equal(gathered[1], base[1])  # a row without adapter is the base model, exactly
    assert not torch.allclose(gathered[0].float(), base[0].float(), atol=1e-2)


def test_serving_slots_are_reused_and_grown(fp32_bundle):
    a, b, c, d = (random_adapter(fp32_bundle, 4, seed, ["q_proj"]) for seed in range(4))
    with fp32_bundle.lock:
        sl = ServingLora(fp32_bundle)
        assert sl.acquire([a, b, a]) == [0, 1, 0]  # one slot per distinct adapter
        assert sl.users == [2, 1]
        sl.release(1)
        assert sl.acquire([c]) == [1]  # b's slot was idle: c takes it
        assert sl.acquire([d]) == [2] and len(sl.loaded) == 4  # all busy: the slots double
        sl.release(0)
        sl.release(0)
        assert sl.acquire([d, b]) == [2, 0]  # d is loaded already; b goes to the lowest idle slot
        module = sl.modules["model.layers.0.self_attn.q_proj"]
        assert torch.equal(module.at[1, :, :4], c.state["base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"].T)


class Sink:
    def __init__(self, name: str = "", events: list | None = None) -> None:
        self.name, self.events = name, events if events is not None else []
        self.tokens: list[int] = []
        self.reason: str | None = None
        self.error: BaseException | None = None
        self.cancelled = False
        self.done = threading.Event()

    def token(self, token_id: int) -> None:
        self.tokens.append(token_id)
        self.events.append((self.name, "token"))

    def finish(self, reason: str) -> None:
        self.reason = reason
        self.events.append((self.name, "finish"))
        self.done.set()

    def fail(self, error: BaseException) -> None:
        self.error = error
        self.done.set()


def test_decoder_mixed_batch_greedy_equals_each_adapter_alone(fp32_bundle, trained):
    """The continuous decoder (as used by complete()) against transformers' generate, row by row."""
    adapters = [None, *trained[0]]
    questions = ("Who founded the Zorblax Institute?", "Who is the mayor of Quibble?")
    prompts = [answer_prompt(fp32_bundle, q) for q in questions]
    rows = [(p, a) for p in prompts for a in adapters]
    outs = complete(fp32_bundle, [CompletionRequest(p, adapter=a, max_tokens=16, temperature=0) for p, a in rows])
    for (p, a), out in zip(rows, outs):
        assert out[0].text == generate(fp32_bundle, [p], max_new_tokens=16, adapters=[a])[0]


def test_request_joining_mid_decode_gets_its_greedy_output_alone(fp32_bundle, trained):
    tok = fp32_bundle.tokenizer
    first = [answer_prompt(fp32_bundle, "Who founded the Zorblax Institute?"), answer_prompt(fp32_bundle, "Hi")]
    late = answer_prompt(fp32_bundle, "Tell me, in a few words, who is the mayor of the town of Quibble?")
    decoder = Decoder(fp32_bundle)
    early = [Sink(), Sink()]
    decoder.add([DecodeRequest(p, s, adapter=a, max_tokens=24) for p, s, a in zip(first, early, [trained[0][0], None])])
    for _ in range(5):
        decoder.step()
    joiner = Sink()
    decoder.add([DecodeRequest(late, joiner, adapter=trained[0][1], max_tokens=24)])
    while decoder.rows:
        decoder.step()
    assert decoder.cache is None and not decoder.rows  # finished rows leave; the cache goes with the last
    alone = generate(fp32_bundle, [late], max_new_tokens=24, adapters=[trained[0][1]])[0]
    assert tok.decode(joiner.tokens, skip_special_tokens=True) == alone
    for p, s, a in zip(first, early, [trained[0][0], None]):
        assert tok.decode(s.tokens, skip_special_tokens=True) == generate(fp32_bundle, [p], max_new_tokens=24,
                                                                           adapters=[a])[0]


def test_late_request_streams_before_an_earlier_long_request_finishes(bundle):
    events: list[tuple[str, str]] = []
    engine = ContinuousBatcher(bundle, max_rows=8)
    try:
        long, late = Sink("long", events), Sink("late", events)
        engine.submit([DecodeRequest(answer_prompt(bundle, "Write a long story about a dragon."), long,
                                     max_tokens=64)])
        while len(long.tokens) < 3 and not long.done.is_set():
            long.done.wait(0.01)
        engine.submit([DecodeRequest(answer_prompt(bundle, "Say hi."), late, max_tokens=4)])
        assert late.done.wait(120) and long.done.wait(120)
    finally:
        engine.close()
    assert long.error is None and late.error is None
    assert len(long.tokens) > 10, "the long request ended too early to test anything"
    assert events.index(("late", "token")) < events.index(("long", "finish"))
    assert events.index(("late", "finish")) < events.index(("long", "finish"))


def test_decoder_stops_at_stop_strings_and_cancels(fp32_bundle):
    decoder = Decoder(fp32_bundle)
    stop, cancel = Sink(), Sink()
    prompt = answer_prompt(fp32_bundle, "Count from one to twenty, separated by commas.")
    decoder.add([DecodeRequest(prompt, stop, max_tokens=40, stop=[","]),
                 DecodeRequest(prompt, cancel, max_tokens=40)])
    decoder.step()
    cancel.cancelled = True
    while decoder.rows:
        decoder.step()
    assert cancel.reason == "cancelled" and len(cancel.tokens) == 2
    assert stop.reason == "stop" and "," in fp32_bundle.tokenizer.decode(stop.tokens)


def test_token_budget_comes_from_settings_then_device(fp32_bundle, monkeypatch):
    """The micro-batch budget: the argument, else LoraSettings.token_budget, else by device."""
    import seal_engine.training.batched as bt

    seen: list[int] = []
    real = bt._micro_batches
    monkeypatch.setattr(bt, "_micro_batches", lambda rows, budget: seen.append(budget) or real(rows, budget))
    one_set = [SETS[0]]
    bt.train_adapters_batched(fp32_bundle, one_set, LoraSettings(epochs=1, token_budget=48))
    assert set(seen) == {48}
    seen.clear()
    bt.train_adapters_batched(fp32_bundle, one_set, LoraSettings(epochs=1, token_budget=48), token_budget=96)
    assert set(seen) == {96}
    seen.clear()
    bt.train_adapters_batched(fp32_bundle, one_set, LoraSettings(epochs=1))
    assert set(seen) == {bt.default_token_budget(fp32_bundle.device)} == {1024}
    assert bt.default_token_budget(torch.device("cuda")) == 16384
    with pytest.raises(ValueError):
        LoraSettings(token_budget=8)


def test_streamed_choice_is_seeded_as_that_choice_of_complete(fp32_bundle):
    """Choice j of a seeded request samples with choice j's seed, streamed or not."""
    from seal_engine.serving.completions import _row_seed, stream_completion

    prompt = answer_prompt(fp32_bundle, "Tell me about the sea.")
    req = CompletionRequest(prompt, max_tokens=12, temperature=1.0, seed=7)
    streamed = ["".join(stream_completion(fp32_bundle, req, choice=j)) for j in (0, 1)]
    assert streamed[0] != streamed[1]  # distinct seeds (before: both choices drew with choice 0's)
    for j in (0, 1):  # each alone, batch 1: the same row seed gives the same text
        alone = complete(fp32_bundle, [CompletionRequest(prompt, max_tokens=12, temperature=1.0,
                                                         seed=_row_seed(7, j))])[0][0]
        assert streamed[j] == alone.text


def test_batched_training_when_slot_columns_equal_a_layer_width(fp32_bundle):
    """K*r = 576 = the hidden size, so lora_B of q_proj is square: the finished slots' masks
    must still follow B's columns (an orientation guessed from shapes got this wrong)."""
    # One epoch: sets of 2, 5 and 1 rows take 1, 3 and 1 steps, so slots 0 and 2 are frozen for two.
    cfg = LoraSettings(rank=192, alpha=32, epochs=1, batch_size=2, learning_rate=1e-3)
    assert 3 * cfg.rank == fp32_bundle.model.config.hidden_size
    batched = train_adapters_batched(fp32_bundle, SETS, cfg, seeds=SEEDS)
    for b, s, seed in zip(batched, SETS, SEEDS):
        alone = train_lora(fp32_bundle, s, cfg, seed=seed)
        assert b.losses == pytest.approx(alone.losses, rel=1e-4)


def test_distinct_slots_dedupes_by_identity_and_gives_the_base_model_slot_minus_one() -> None:
    from seal_engine.serving.lora_slots import distinct_slots

    a, b = object(), object()  # identity is all it reads
    unique, slots = distinct_slots([a, None, b, a, None, b])  # type: ignore[list-item]
    assert unique == [a, b] and [unique[s] if s >= 0 else None for s in slots] == [a, None, b, a, None, b]
    assert slots == [0, -1, 1, 0, -1, 1] and distinct_slots([]) == ([], [])
