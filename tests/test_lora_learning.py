"""The LoRA inner loop on the real tiny model (small step counts)."""

import pytest
import torch
from peft import PeftModel

from seal_engine.lora import applied_adapter, collate, load_adapter, train_lora
from seal_engine.qa import answer_questions
from seal_engine.settings import LoraSettings

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
