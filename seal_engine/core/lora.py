"""LoRA adapters as data: a PEFT config plus the LoRA tensors; save, load, apply.

Adapters are plain data (a PEFT config plus the LoRA tensors) so that callers can keep
many of them, save them in standard PEFT format, and apply any one to the shared base
model only for as long as they need it.
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file

from seal_engine.config import LoraSettings
from seal_engine.core.model import ModelBundle
from seal_engine.errors import InputError

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
# Beside the PEFT files (which PEFT ignores): when the adapter serves a request (seal_engine.serving.relevance).
ADAPTER_RELEVANCE = "seal_relevance.json"


class AdapterError(InputError):
    pass


@dataclass(frozen=True)
class Relevance:
    """Which requests an adapter serves: those whose largest per-token NLL gain (base model minus
    adapter, over the prompt's tokens) is above ``threshold`` nats; the others get the base model.
    ``threshold`` is the ``quantile`` of the gains of ``texts`` general requests (calibration)."""

    threshold: float
    quantile: float
    texts: int

    def to_dict(self) -> dict[str, float | int]:
        return {"threshold": self.threshold, "quantile": self.quantile, "texts": self.texts}


@dataclass
class LoraAdapter:
    config: LoraConfig
    state: dict[str, torch.Tensor]
    relevance: Relevance | None = None  # None: the adapter serves every request that names it

    def save(self, directory: str | Path) -> Path:
        """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (loadable by peft), and
        ``seal_relevance.json`` when the adapter has a relevance threshold."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.config.save_pretrained(str(directory))
        save_file({k: v.contiguous() for k, v in self.state.items()}, str(directory / ADAPTER_WEIGHTS))
        if self.relevance is not None:
            (directory / ADAPTER_RELEVANCE).write_text(json.dumps(self.relevance.to_dict()))
        return directory

    @property
    def num_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.state.values())

    def scaled(self, factor: float) -> LoraAdapter:
        """The same adapter with its weight update (B @ A) multiplied by ``factor``: 0 is the
        base model, 1 this adapter; in between, a point on the line from one to the other."""
        out = copy.copy(self)
        out.state = {k: v * factor if ".lora_B." in k else v for k, v in self.state.items()}
        out.relevance = None  # calibrated for the unscaled update
        return out


    def toward(self, start: LoraAdapter, factor: float) -> LoraAdapter:
        """A point on the way from ``start`` (factor 0: exactly it) to this adapter (1), its LoRA
        tensors interpolated: for a version trained on from ``start``, a smaller step away from it."""
        out = copy.copy(self)
        # lerp is exact at both ends (0: start, 1: this adapter).
        out.state = {k: torch.lerp(start.state[k].to(v.dtype), v, factor) for k, v in self.state.items()}
        out.relevance = None
        return out


@dataclass
class TrainedAdapter(LoraAdapter):
    seed: int = 0
    losses: list[float] = field(default_factory=list)  # mean loss per optimizer step
    num_sequences: int = 0
    num_tokens: int = 0  # non-padding tokens seen in training, all epochs
    seconds: float = 0.0


def load_adapter(directory: str | Path) -> LoraAdapter:
    directory = Path(directory)
    if not (directory / ADAPTER_CONFIG).exists() or not (directory / ADAPTER_WEIGHTS).exists():
        raise AdapterError(f"not a PEFT adapter directory (needs {ADAPTER_CONFIG} and {ADAPTER_WEIGHTS}): {directory}")
    config = LoraConfig.from_pretrained(str(directory))
    relevance = None
    if (directory / ADAPTER_RELEVANCE).exists():
        try:
            d = json.loads((directory / ADAPTER_RELEVANCE).read_text())
            # Numbers, whatever the file holds: the decoder compares them on every request.
            relevance = Relevance(threshold=float(d["threshold"]), quantile=float(d["quantile"]), texts=int(d["texts"]))
        except (ValueError, TypeError, KeyError) as e:
            raise AdapterError(f"unreadable {ADAPTER_RELEVANCE} in {directory}: {e}") from None
    return LoraAdapter(config=config, state=load_file(str(directory / ADAPTER_WEIGHTS)), relevance=relevance)


# Target shorthands: every linear layer (PEFT's own), or every linear layer of the feed-forward
# blocks, found by the block's name in any architecture (Llama/Qwen/Mistral/GPT-2/Phi "mlp",
# "feed_forward", "ffn", Mixtral "block_sparse_moe", T5 "DenseReluDense").
ALL_LINEAR = "all-linear"
ALL_MLP = "all-mlp"
MLP_BLOCKS = frozenset({"mlp", "feed_forward", "ffn", "block_sparse_moe", "DenseReluDense"})


def mlp_linear_names(model: torch.nn.Module) -> list[str]:
    """The feed-forward linear layers of ``model`` as PEFT target names: their own names where
    no linear layer outside the feed-forward blocks shares them (gate_proj, up_proj, ...), else
    full module paths (GPT-2's c_proj is in attention too)."""
    linear = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    mlp = [n for n in linear if MLP_BLOCKS & set(n.split(".")[:-1])]
    if not mlp:
        raise AdapterError(f"target_modules {ALL_MLP!r}: this model has no feed-forward block named one of "
                           f"{sorted(MLP_BLOCKS)}; name its modules instead")
    leaves = {n.rsplit(".", 1)[-1] for n in mlp}
    outside = {n.rsplit(".", 1)[-1] for n in set(linear) - set(mlp)}
    return sorted(leaves) if not leaves & outside else sorted(mlp)


def lora_config(cfg: LoraSettings, base_model_id: str, bundle: ModelBundle | None = None) -> LoraConfig:
    """PEFT's config for ``cfg``; ``bundle`` resolves the ``all-mlp`` shorthand (required for it)."""
    targets: str | list[str] = cfg.target_modules
    if targets == [ALL_LINEAR]:
        targets = ALL_LINEAR
    elif targets == [ALL_MLP]:
        if bundle is None:
            raise AdapterError(f"target_modules {ALL_MLP!r} needs the model to resolve it")
        with bundle.lock:  # no serving or training wrappers are installed while it is held elsewhere
            targets = mlp_linear_names(bundle.model)
    return LoraConfig(
        r=cfg.rank,
        lora_alpha=cfg.alpha,
        lora_dropout=cfg.dropout,
        target_modules=targets,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base_model_id,
    )


def peft_model(bundle: ModelBundle, config: LoraConfig) -> PeftModel:
    try:
        # A private copy: PEFT overwrites base_model_name_or_path with the local path.
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*base_model_name_or_path.*")
            return get_peft_model(bundle.model, copy.deepcopy(config))
    except ValueError as e:  # target modules not found in this architecture
        raise AdapterError(f"cannot apply LoRA to {bundle.model_id}: {e}") from None


@contextmanager
def applied_adapter(bundle: ModelBundle, adapter: LoraAdapter | None) -> Iterator[torch.nn.Module]:
    """The base model with ``adapter`` applied (or the bare model for None), under the lock."""
    with bundle.lock:
        if adapter is None:
            yield bundle.model
            return
        model = peft_model(bundle, adapter.config)
        try:
            result = set_peft_model_state_dict(model, adapter.state)
            if result.unexpected_keys:
                raise AdapterError(f"adapter does not fit {bundle.model_id}: unexpected {result.unexpected_keys[:3]}")
            model.eval()
            yield model
        finally:
            model.unload()


# PEFT names adapter tensors by their module path under this prefix.
PEFT_PREFIX = "base_model.model."


def module_paths(adapter: LoraAdapter) -> list[str]:
    """Paths (inside the base model) of the modules an adapter's tensors belong to."""
    paths = []
    for key in adapter.state:
        if key.endswith(".lora_A.weight"):
            paths.append(key[len(PEFT_PREFIX) : -len(".lora_A.weight")] if key.startswith(PEFT_PREFIX) else key[: -len(".lora_A.weight")])
    return sorted(paths)


def adapter_scaling(adapter: LoraAdapter) -> float:
    cfg = adapter.config
    r = cfg.r
    return cfg.lora_alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else cfg.lora_alpha / r
