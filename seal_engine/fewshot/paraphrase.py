"""The model's own paraphrases of text-task inputs (an optional augmentation).

Bounded: ``k`` samples per input, short, in one batched call; the training-data
builder then keeps only usable ones (see :func:`ttt_data.usable_paraphrase`).
"""

from __future__ import annotations

from collections.abc import Sequence

from seal_engine.core.generation import generate
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.fewshot.prompts import parse_text_answer

INSTRUCTION = "Reword the text in a different way with the same meaning. Reply with the reworded text only."


def paraphrase_prompt(bundle: ModelBundle, text: str) -> str:
    if not bundle.is_chat:
        return f"{INSTRUCTION}\nText: {text}\nReworded:"
    messages = [{"role": "system", "content": INSTRUCTION}, {"role": "user", "content": text}]
    return bundle.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def paraphrase_inputs(
    bundle: ModelBundle,
    inputs: Sequence[str],
    k: int,
    *,
    seed: int = 0,
    temperature: float = 1.0,
    max_new_tokens: int = 48,
    policy: LoraAdapter | None = None,
) -> dict[str, list[str]]:
    """Up to ``k`` distinct paraphrases per distinct input (the first line of each sample)."""
    unique = list(dict.fromkeys(inputs))
    if k <= 0 or not unique:
        return {}
    prompts = [paraphrase_prompt(bundle, x) for x in unique for _ in range(k)]
    outs = generate(bundle, prompts, max_new_tokens=max_new_tokens, temperature=temperature, top_p=0.95, seed=seed,
                    batch_size=min(len(prompts), 32), adapters=[policy] * len(prompts) if policy is not None else None)
    result: dict[str, list[str]] = {}
    for i, x in enumerate(unique):
        cands = [parse_text_answer(o).strip('"').strip() for o in outs[i * k : (i + 1) * k]]
        result[x] = [c for c in dict.fromkeys(cands) if c and c != x]
    return result
