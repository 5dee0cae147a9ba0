"""Many LoRA adapters on one frozen base model, in one forward pass.

Training (:class:`MultiLora`, :func:`installed`): every targeted ``nn.Linear`` is
wrapped by a :class:`MultiLoraLinear` holding K adapters side by side in float32:
``A`` is (K*r, d_in) and ``B`` is (d_out, K*r). Each batch row names its adapter (or
none); a per-row mask that is zero outside the row's adapter's r columns (and carries
its alpha/r scaling) selects it:

    y = W x + B ((A x) * mask_row)

Two small matmuls per module for any K, no per-row gathers, and the gradient of
adapter k comes only from the rows that use it, which is what makes batched training
exactly equivalent to training each adapter alone (see :mod:`seal_engine.training.batched`).

Serving keeps its adapters differently: see :mod:`seal_engine.serving.lora_slots`.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from seal_engine.core.lora import PEFT_PREFIX, LoraAdapter, adapter_scaling
from seal_engine.core.model import ModelBundle

# Above this many stacked LoRA columns (K*r), per-row gathers beat the masked matmul.
GATHER_ABOVE_COLUMNS = 128


@dataclass
class RowRouting:
    """Shared by every wrapped module: which adapter each batch row uses.

    Either ``mask`` (few slots: one matmul over all slots, masked per row) or
    ``index`` + ``scale`` (many slots: each row gathers its own A and B).
    """

    mask: torch.Tensor | None = None  # (batch, K*r) float32
    index: torch.Tensor | None = None  # (batch,) slot per row, 0 where unused
    scale: torch.Tensor | None = None  # (batch,) scaling, 0 for rows without adapter


class MultiLoraLinear(nn.Module):
    def __init__(self, base: nn.Linear, slots: int, rank: int, routing: RowRouting, dropout: float = 0.0) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        self.rank = rank
        self.dropout = dropout
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.zeros(slots * rank, base.in_features, device=dev), requires_grad=False)
        self.lora_B = nn.Parameter(torch.zeros(base.out_features, slots * rank, device=dev), requires_grad=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        routing = self.routing
        if routing.index is not None:
            return self._gathered(x, out, routing.index, routing.scale)
        mask = routing.mask
        if mask is None:
            return out
        h = x.to(self.lora_A.dtype)
        if self.dropout and self.training:
            h = nn.functional.dropout(h, self.dropout)
        h = h @ self.lora_A.T
        # mask: (batch, K*r) -> broadcast over every position of the row.
        h = h * mask.view(mask.shape[0], *([1] * (h.dim() - 2)), mask.shape[1])
        return (out.to(h.dtype) + h @ self.lora_B.T).to(out.dtype)

    def _gathered(self, x: torch.Tensor, out: torch.Tensor, index: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """Punica-style: each row's own (r x d_in) A and (d_out x r) B, batched matmuls."""
        r, d_in, d_out = self.rank, self.base.in_features, self.base.out_features
        slots = self.lora_A.shape[0] // r
        a = self.lora_A.view(slots, r, d_in)[index]  # (batch, r, d_in)
        b = self.lora_B.view(d_out, slots, r).transpose(0, 1)[index]  # (batch, d_out, r)
        h = x.to(a.dtype).reshape(x.shape[0], -1, d_in)
        h = torch.bmm(h, a.transpose(1, 2)) * scale.view(-1, 1, 1)
        delta = torch.bmm(h, b.transpose(1, 2)).view(*out.shape)
        return (out.to(delta.dtype) + delta).to(out.dtype)


class MultiLora:
    """K adapter slots installed in a model; use through :func:`installed`."""

    def __init__(self, bundle: ModelBundle, paths: Sequence[str], slots: int, rank: int, dropout: float = 0.0) -> None:
        self.bundle = bundle
        self.slots = slots
        self.rank = rank
        self.routing = RowRouting()
        self.modules: dict[str, MultiLoraLinear] = {}
        self._originals: dict[str, nn.Linear] = {}
        self.scaling = torch.zeros(slots)
        root = bundle.model
        for path in paths:
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            base = getattr(parent, name)
            if not isinstance(base, nn.Linear):
                raise TypeError(f"{path} is not a Linear layer")
            wrapped = MultiLoraLinear(base, slots, rank, self.routing, dropout)
            setattr(parent, name, wrapped)
            self._originals[path] = base
            self.modules[path] = wrapped

    def remove(self) -> None:
        root = self.bundle.model
        for path, base in self._originals.items():
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            setattr(parent, name, base)
        self.routing.mask = self.routing.index = self.routing.scale = None

    # -- adapters in and out -------------------------------------------------
    def load(self, slot: int, adapter: LoraAdapter) -> None:
        """Copy a PEFT-format adapter into ``slot`` (zero-padding a smaller rank)."""
        r = adapter.config.r
        if r > self.rank:
            raise ValueError(f"adapter rank {r} exceeds slot rank {self.rank}")
        cols = slice(slot * self.rank, slot * self.rank + r)
        with torch.no_grad():
            for path, mod in self.modules.items():
                a = adapter.state.get(f"{PEFT_PREFIX}{path}.lora_A.weight")
                b = adapter.state.get(f"{PEFT_PREFIX}{path}.lora_B.weight")
                mod.lora_A[slot * self.rank : (slot + 1) * self.rank].zero_()
                mod.lora_B[:, slot * self.rank : (slot + 1) * self.rank].zero_()
                if a is not None and b is not None:
                    mod.lora_A[cols].copy_(a)
                    mod.lora_B[:, cols].copy_(b)
        self.scaling[slot] = adapter_scaling(adapter)

    def export(self, slot: int, config) -> dict[str, torch.Tensor]:
        """PEFT-format state dict of ``slot``."""
        rows = slice(slot * self.rank, (slot + 1) * self.rank)
        state = {}
        for path, mod in self.modules.items():
            state[f"{PEFT_PREFIX}{path}.lora_A.weight"] = mod.lora_A[rows].detach().to("cpu", copy=True)
            state[f"{PEFT_PREFIX}{path}.lora_B.weight"] = mod.lora_B[:, rows].detach().to("cpu", copy=True)
        return state

    def parameters(self) -> Iterator[nn.Parameter]:
        for mod in self.modules.values():
            yield mod.lora_A
            yield mod.lora_B

    # -- routing -------------------------------------------------------------
    def route(self, row_slots: Sequence[int] | torch.Tensor | None, gather: bool | None = None) -> None:
        """Set each batch row's slot (-1: base model only); None turns LoRA off.

        ``gather`` picks the kernel; by default gathers are used for many slots.
        """
        self.routing.mask = self.routing.index = self.routing.scale = None
        if row_slots is None:
            return
        idx = torch.as_tensor(row_slots, dtype=torch.long)
        if gather if gather is not None else self.slots * self.rank > GATHER_ABOVE_COLUMNS:
            on = idx >= 0
            self.routing.scale = torch.where(on, self.scaling[idx.clamp(min=0)], 0.0).to(self.bundle.device)
            self.routing.index = idx.clamp(min=0).to(self.bundle.device)
            return
        onehot = torch.zeros(len(idx), self.slots)
        on = idx >= 0
        onehot[on.nonzero().squeeze(1), idx[on]] = self.scaling[idx[on]]
        mask = onehot.repeat_interleave(self.rank, dim=1)
        self.routing.mask = mask.to(self.bundle.device)


@contextmanager
def installed(bundle: ModelBundle, paths: Sequence[str], slots: int, rank: int, dropout: float = 0.0) -> Iterator[MultiLora]:
    """Install K slots on the shared model for the duration of the block (under its lock)."""
    with bundle.lock:
        ml = MultiLora(bundle, paths, slots, rank, dropout)
        try:
            yield ml
        finally:
            ml.remove()
