"""Test-time training: (prompt, completion) pairs -> a fresh LoRA adapter.

Reuses the shared PEFT loop (:func:`seal_engine.training.peft.run_peft_training`) and the SFT
example encoding; "output" loss masks the prompt (label -100) as policy SFT does,
"all" loss trains on every real token.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from seal_engine.config import FewShotSettings
from seal_engine.core.lora import TrainedAdapter, lora_config
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.recipes import Recipe
from seal_engine.training.peft import run_peft_training
from seal_engine.training.sft import IGNORE, build_example, collate_sft

Example = tuple[list[int], list[int]]  # (input_ids, labels)

_NO_LIMIT = 1 << 30


def encode_pair(bundle: ModelBundle, prompt: str, completion: str, loss: str, max_len: int) -> Example | None:
    """Token ids and labels of one pair; None when it is longer than ``max_len`` tokens
    (cutting an episode would cut its demonstrations or its answer)."""
    ex = build_example(bundle, prompt, completion, _NO_LIMIT)
    if ex is None or len(ex[0]) > max_len:
        return None
    ids, labels = ex
    return ids, (list(ids) if loss == "all" else labels)


def encode(bundle: ModelBundle, pairs: Sequence[tuple[str, str]], loss: str, max_len: int) -> list[Example]:
    return [e for e in (encode_pair(bundle, p, c, loss, max_len) for p, c in pairs) if e is not None]


def trained_tokens(examples: Sequence[Example]) -> int:
    return sum(sum(1 for x in lab if x != IGNORE) for _, lab in examples)


def train_adapter(
    bundle: ModelBundle,
    examples: Sequence[Example],
    recipe: Recipe,
    settings: FewShotSettings,
    *,
    seed: int,
    on_step: Callable[[int, int, float], None] | None = None,
) -> TrainedAdapter:
    """A fresh LoRA (shape from ``settings.lora``) trained with the recipe's epochs and rate."""
    pad = bundle.tokenizer.pad_token_id
    return run_peft_training(
        bundle, lora_config(settings.lora, bundle.model_id, bundle), list(examples), lambda rows: collate_sft(rows, pad),
        epochs=recipe.epochs, batch_size=settings.batch_size, learning_rate=recipe.learning_rate, seed=seed,
        on_step=on_step,
    )
