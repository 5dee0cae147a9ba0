"""Randomly initialised weights of real architectures, for GPU throughput benchmarks.

No model hub is reachable from the GPU machines and at most 64 MiB travels there, so
throughput on them is measured with random weights of a real config and the default
model's tokenizer: the speed of a forward/backward/decode step does not depend on the
weights' values (though random weights rarely emit EOS, so generation runs to its limit).
"""

from __future__ import annotations

import threading

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from seal_engine.core.model import ModelBundle, resolve_device, resolve_dtype
from seal_engine.config import EngineSettings

# None: the config.json in the model directory (the default model's own).
RANDOM_CONFIGS: dict[str, dict | None] = {
    "smollm2-135m": None,
    # Llama 3.2 1B's shape (1.24B parameters, tied embeddings).
    "llama-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                     num_attention_heads=32, num_key_value_heads=8, head_dim=64, vocab_size=128256,
                     max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5,
                     tie_word_embeddings=True, hidden_act="silu", bos_token_id=1, eos_token_id=2),
}


def random_bundle(name: str, model_dir: str, settings: EngineSettings) -> ModelBundle:
    """Random weights (seed 0) of architecture ``name``, with the tokenizer in ``model_dir``."""
    spec = RANDOM_CONFIGS[name]
    config = AutoConfig.from_pretrained(model_dir) if spec is None else AutoConfig.for_model(**spec)
    device = resolve_device(settings.device)
    dtype = resolve_dtype(settings.dtype, device)
    tok = AutoTokenizer.from_pretrained(model_dir)
    tok.pad_token = tok.pad_token or tok.eos_token
    tok.padding_side = "left"
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, dtype=dtype).to(device).eval().requires_grad_(False)
    return ModelBundle(model_id=f"random-{name}", model=model, tokenizer=tok, device=device, dtype=dtype,
                       is_chat=bool(tok.chat_template), lock=threading.RLock())
