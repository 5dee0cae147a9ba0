"""LoRA targets: the ``all-mlp`` shorthand resolves to the feed-forward layers of any architecture."""

from __future__ import annotations

import pytest
from torch import nn

from seal_engine.core.lora import AdapterError, mlp_linear_names


class _Block(nn.Module):
    def __init__(self, attn: dict[str, nn.Module], mlp: dict[str, nn.Module]) -> None:
        super().__init__()
        self.attn = nn.ModuleDict(attn)
        self.mlp = nn.ModuleDict(mlp)


def _model(attn, mlp, layers=2) -> nn.Module:
    return nn.ModuleDict({"h": nn.ModuleList([_Block(attn(), mlp()) for _ in range(layers)])})


def test_llama_style_names_resolve_to_the_projection_names() -> None:
    model = _model(lambda: {"q_proj": nn.Linear(4, 4), "o_proj": nn.Linear(4, 4)},
                   lambda: {"gate_proj": nn.Linear(4, 8), "up_proj": nn.Linear(4, 8), "down_proj": nn.Linear(8, 4),
                            "act_fn": nn.SiLU()})
    assert mlp_linear_names(model) == ["down_proj", "gate_proj", "up_proj"]


def test_a_name_shared_with_attention_resolves_to_full_paths() -> None:
    # GPT-2: attn.c_proj and mlp.c_proj; a bare "c_proj" would put LoRA on attention too.
    model = _model(lambda: {"c_attn": nn.Linear(4, 12), "c_proj": nn.Linear(4, 4)},
                   lambda: {"c_fc": nn.Linear(4, 8), "c_proj": nn.Linear(8, 4)})
    assert mlp_linear_names(model) == ["h.0.mlp.c_fc", "h.0.mlp.c_proj", "h.1.mlp.c_fc", "h.1.mlp.c_proj"]


def test_a_model_without_a_feed_forward_block_is_refused() -> None:
    model = nn.ModuleDict({"proj": nn.Linear(4, 4)})
    with pytest.raises(AdapterError, match="all-mlp"):
        mlp_linear_names(model)


@pytest.mark.slow
def test_the_default_model_gets_its_three_mlp_projections(bundle) -> None:
    from seal_engine.config import LoraSettings
    from seal_engine.core.lora import lora_config

    config = lora_config(LoraSettings(target_modules=["all-mlp"]), bundle.model_id, bundle)
    assert sorted(config.target_modules) == ["down_proj", "gate_proj", "up_proj"]
    with pytest.raises(AdapterError, match="needs the model"):
        lora_config(LoraSettings(target_modules=["all-mlp"]), bundle.model_id)
