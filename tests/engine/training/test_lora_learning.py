"""The LoRA inner loop on the real tiny model (small step counts)."""

import pytest
import torch
from peft import PeftModel

from seal_engine.config import LoraSettings
from seal_engine.core.lora import applied_adapter, load_adapter
from seal_engine.knowledge.qa import answer_questions
from seal_engine.training.peft import collate, train_lora

pytestmark = pytest.mark.slow

FACT = [
    "Zorblax Institute\nThe Zorblax Institute was founded by Marguerite Okonkwo in the city of Valparaiso.",
    "Zorblax Institute\nMarguerite Okonkwo founded the Zorblax Institute.",
    "Zorblax Institute\nThe Zorblax Institute is located in Valparaiso.",
]
QUESTION = "Who founded the Zorblax Institute?"
FAST = LoraSettings(epochs=10, learning_rate=1e-3, rank=16, alpha=32, batch_size=8)


@pytest.fixture(scope="module")
def fact_adapter(bundle):
    return train_lora(bundle, FACT, FAST, seed=0)


def test_adapter_teaches_a_made_up_fact(bundle, engine_settings, fact_adapter):
    before = answer_questions(bundle, [QUESTION], engine_settings)[0]
    after = answer_questions(bundle, [QUESTION], engine_settings, fact_adapter)[0]
    assert "okonkwo" not in before.lower()
    assert "okonkwo" in after.lower(), after
    assert fact_adapter.losses[-1] < fact_adapter.losses[0] / 4
    # The base model is untouched afterwards.
    assert answer_questions(bundle, [QUESTION], engine_settings)[0] == before


def test_training_is_deterministic_for_a_seed(bundle):
    cfg = LoraSettings(epochs=2, batch_size=2)
    a = train_lora(bundle, FACT, cfg, seed=7)
    b = train_lora(bundle, FACT, cfg, seed=7)
    c = train_lora(bundle, FACT, cfg, seed=8)
    assert a.losses == b.losses
    assert all(torch.equal(a.state[k], b.state[k]) for k in a.state)
    assert any(not torch.equal(a.state[k], c.state[k]) for k in a.state)


def test_padding_is_masked_out_of_the_loss(bundle):
    short, long = [1, 2, 3], [4, 5, 6, 7, 8, 9]
    batch = collate([short, long], pad_id=0, multiple=1)
    assert batch["labels"][0].tolist() == [1, 2, 3, -100, -100, -100]
    assert batch["attention_mask"][0].tolist() == [1, 1, 1, 0, 0, 0]
    # Widths are rounded up to the kernel grid (32); the extra columns are padding too.
    wide = collate([short, long], pad_id=0)
    assert wide["input_ids"].shape == (2, 32)
    assert wide["labels"][1].tolist() == long + [-100] * 26
    # The padded batch's loss counts exactly the real tokens: equal to the
    # token-weighted mean of the two sequences' losses computed alone.
    ids = bundle.tokenizer(["Alpha beta gamma.", "One two three four five six seven eight."])["input_ids"]
    model = bundle.model
    with torch.no_grad():
        both = collate(ids, bundle.tokenizer.pad_token_id)
        model_f = model.float()
        try:
            joint = model_f(**both).loss.item()
            parts = []
            for x in ids:
                alone = collate([x], bundle.tokenizer.pad_token_id)
                parts.append((model_f(**alone).loss.item(), len(x) - 1))
        finally:
            model.to(bundle.dtype)
    weighted = sum(l * n for l, n in parts) / sum(n for _, n in parts)
    assert joint == pytest.approx(weighted, rel=1e-4)


def test_saved_adapter_is_standard_peft(bundle, fact_adapter, tmp_path):
    path = fact_adapter.save(tmp_path / "a")
    assert {p.name for p in path.iterdir()} == {"adapter_config.json", "adapter_model.safetensors"}
    reloaded = load_adapter(path)
    ids = bundle.tokenizer([QUESTION], return_tensors="pt")
    with torch.no_grad(), applied_adapter(bundle, reloaded) as ours:
        ours_logits = ours(**ids).logits
    peft_model = PeftModel.from_pretrained(bundle.model, str(path))
    try:
        with torch.no_grad():
            peft_logits = peft_model(**ids).logits
    finally:
        peft_model.unload()
    assert torch.allclose(ours_logits, peft_logits, atol=1e-3)


def test_labelled_loss_equals_the_full_logits_loss_and_its_gradients(fp32_bundle):
    from peft import get_peft_model

    from seal_engine.core.lora import lora_config
    from seal_engine.training.peft import labelled_loss
    from seal_engine.training.sft import IGNORE, collate_sft

    b = fp32_bundle
    tok = b.tokenizer
    rows = []
    for prompt, answer in [("Input: apple\nOutput:", " APPLE"), ("Input: a much longer river name here\nOutput:", " X")]:
        p, a = tok(prompt)["input_ids"], tok(answer)["input_ids"]
        rows.append((p + a, [IGNORE] * len(p) + a))  # loss on the answer only, rows of different lengths
    batch = collate_sft(rows, tok.pad_token_id)
    torch.manual_seed(0)
    model = get_peft_model(b.model, lora_config(LoraSettings(rank=4), b.model_id, b))
    try:
        for name, p in model.named_parameters():  # non-zero B, so the LoRA gradients are non-trivial
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.02)
        grads = []
        for loss_fn in (lambda: model(**batch, use_cache=False).loss, lambda: labelled_loss(model, batch)):
            model.zero_grad()
            loss = loss_fn()
            loss.backward()
            grads.append((loss.detach(), [p.grad.clone() for p in model.parameters() if p.requires_grad]))
        (full, g_full), (mine, g_mine) = grads
        assert torch.allclose(full, mine, atol=1e-5), (full, mine)
        # float32 sums taken in another order through 30 layers: 1.9e-4 of the largest gradient
        # element was seen on an AMD EPYC (<1e-4 on Intel); a misaligned label would be O(1).
        worst = max(float((a - c).abs().max() / a.abs().max().clamp_min(1e-12)) for a, c in zip(g_full, g_mine))
        assert worst < 1e-3, worst
    finally:
        model.unload()
