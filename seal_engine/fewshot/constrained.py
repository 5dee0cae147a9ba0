"""Constrained recipe decoding: the writer can only emit recipes that the schema accepts.

A 135M writer shown the recipe schema copies its placeholders ("[group names]",
"number from 1e-05 to 0.01") instead of filling them in, so free decoding gives ReST-EM
no valid recipe to learn from. Here the completion after the response prefix is decoded
under a regular expression of the canonical recipe JSON: lm-format-enforcer masks every
token that would leave the language, and the writer still picks each value (groups,
loss, learning rate from a grid, epochs) by its own probabilities, so fine-tuning the
writer on kept recipes shifts exactly those choices.
"""

from __future__ import annotations

import json
import re
import weakref
from collections.abc import Callable

import torch
from lmformatenforcer import RegexParser, TokenEnforcer, TokenEnforcerTokenizerData

from seal_engine.config import FewShotSettings
from seal_engine.fewshot.recipes import GROUPS, Domain

AllowedTokensFn = Callable[[int, torch.Tensor], list[int]]


def _alternatives(values: list[str]) -> str:
    return "(" + "|".join(re.escape(v) for v in values) + ")"


def recipe_pattern(domain: Domain, settings: FewShotSettings) -> str:
    """The regex of a recipe's completion after ``RESPONSE_PREFIX`` (``{"augmentations": [``),
    in the spacing and key order of :meth:`Recipe.to_json`; each group at most once in
    count (duplicates are dropped by validation)."""
    names = list(GROUPS[domain])
    group = _alternatives([json.dumps(g) for g in names])
    groups = f"({group}(, {group}){{0,{len(names) - 1}}})?" if names else ""
    rates = _alternatives([json.dumps(lr) for lr in settings.recipe_learning_rates])
    epochs = _alternatives([str(e) for e in range(1, settings.max_epochs + 1)])
    return (
        groups + re.escape('], "loss": ') + _alternatives(['"all"', '"output"'])
        + re.escape(', "learning_rate": ') + rates + re.escape(', "epochs": ') + epochs + re.escape("}")
    )


# Building the token prefix tree decodes the whole vocabulary (seconds): once per tokenizer.
_TOKENIZER_DATA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _regular_tokens(tokenizer) -> list[tuple[int, str, bool]]:
    """(id, text, starts a word) for every non-special token; a token's text is read after a
    fixed token so that a leading space (SentencePiece / byte-level "Ġ") is kept."""
    anchor = tokenizer.encode("0", add_special_tokens=False)[-1]
    special = set(tokenizer.all_special_ids)
    out = []
    for i in range(len(tokenizer)):
        if i in special:
            continue
        after = tokenizer.decode([anchor, i])[1:]
        alone = tokenizer.decode([i])
        out.append((i, after, len(after) > len(alone)))
    return out


def _tokenizer_data(tokenizer, eos: list[int]) -> TokenEnforcerTokenizerData:
    data = _TOKENIZER_DATA.get(tokenizer)
    if data is None or data.eos_token_id != eos:
        data = TokenEnforcerTokenizerData(
            _regular_tokens(tokenizer), lambda ids: tokenizer.decode(ids).rstrip("\ufffd"), eos,
            use_bitmask=False, vocab_size=len(tokenizer),
        )
        _TOKENIZER_DATA[tokenizer] = data
    return data


def stop_token_ids(bundle) -> list[int]:
    """Every id that ends generation: the tokenizer's EOS and the generation config's."""
    ids = {bundle.tokenizer.eos_token_id}
    cfg = getattr(bundle.model, "generation_config", None)
    extra = getattr(cfg, "eos_token_id", None)
    ids.update(extra if isinstance(extra, list) else [extra])
    return sorted(i for i in ids if i is not None)


def allowed_tokens_fn(bundle, pattern: str) -> AllowedTokensFn:
    """A ``prefix_allowed_tokens_fn`` for ``generate``: each row may only continue its prompt
    with text matching ``pattern``, then a stop token. One per generate call (the enforcer
    keys its states by the token sequences it has seen, the first sighting being the prompt)."""
    enforcer = TokenEnforcer(_tokenizer_data(bundle.tokenizer, stop_token_ids(bundle)), RegexParser(pattern))

    def allowed(_batch_id: int, ids: torch.Tensor) -> list[int]:
        return enforcer.get_allowed_tokens(ids.tolist()).allowed_tokens

    return allowed
