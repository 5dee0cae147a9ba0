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

Serving (:class:`ServingLora`, :func:`serving`): no gradients, so the weights are kept
in the model's dtype with the scaling folded into B, in slots that adapters are loaded
into and evicted from while the model serves (see :mod:`seal_engine.serving.decoder`). Rows are
grouped by slot (SGMV-style): two batched matmuls over the slots' weights in place, so
nothing is gathered or cached per routing and rows can join and leave at any step. The
masked kernel would multiply every row by every slot (K times the work: at 32 adapters it
cost more than the base layer); per-row gathers copy each row's weights and remain the
fallback for skewed mixes (one adapter on most rows, a few others on one row each).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle

_PREFIX = "base_model.model."


def module_paths(adapter: LoraAdapter) -> list[str]:
    """Paths (inside the base model) of the modules an adapter's tensors belong to."""
    paths = []
    for key in adapter.state:
        if key.endswith(".lora_A.weight"):
            paths.append(key[len(_PREFIX) : -len(".lora_A.weight")] if key.startswith(_PREFIX) else key[: -len(".lora_A.weight")])
    return sorted(paths)


def adapter_scaling(adapter: LoraAdapter) -> float:
    cfg = adapter.config
    r = cfg.r
    return cfg.lora_alpha / math.sqrt(r) if getattr(cfg, "use_rslora", False) else cfg.lora_alpha / r


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
                a = adapter.state.get(f"{_PREFIX}{path}.lora_A.weight")
                b = adapter.state.get(f"{_PREFIX}{path}.lora_B.weight")
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
            state[f"{_PREFIX}{path}.lora_A.weight"] = mod.lora_A[rows].detach().to("cpu", copy=True)
            state[f"{_PREFIX}{path}.lora_B.weight"] = mod.lora_B[:, rows].detach().to("cpu", copy=True)
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


# --- serving -----------------------------------------------------------------------------------


@dataclass
class ServeRouting:
    """Which slot each batch row uses; shared by every :class:`ServingLinear` of a model.

    The segment kernel lays the rows out slot by slot, each slot's rows padded to the
    longest group: padded position ``p`` reads row ``pad_src[p]`` and routed row ``i`` finds
    its result at ``row_pos[i]``.
    """

    rows: torch.Tensor | None = None  # (m,) the rows that use an adapter; None: none does (LoRA skipped)
    slots: torch.Tensor | None = None  # (m,) their slots
    every_row: bool = False  # rows == arange(batch)
    identity: bool = False  # and row i uses slot i: the layout is the batch itself
    kernel: str = "segment"  # "segment" or "rows"
    span: int = 0  # slots [0, span) are laid out
    group: int = 0  # rows per slot in the padded layout
    pad_src: torch.Tensor | None = None  # (span*group,)
    row_pos: torch.Tensor | None = None  # (m,)


class ServingLinear(nn.Module):
    """A frozen Linear plus LoRA slots for inference, in the base layer's dtype.

    ``at`` is (slots, d_in, r) = A^T per slot and ``bt`` is (slots, r, d_out) = (scaling * B)^T,
    so both kernels multiply the stored weights as they are: nothing is converted or
    copied per call.
    """

    def __init__(self, base: nn.Linear, routing: ServeRouting) -> None:
        super().__init__()
        self.base = base
        self.routing = routing
        # Plain tensors, not parameters: nothing here is ever trained.
        self.at = base.weight.new_zeros(0, base.in_features, 1)
        self.bt = base.weight.new_zeros(0, 1, base.out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        rt = self.routing
        if rt.rows is None:
            return out
        d_in, d_out = x.shape[-1], out.shape[-1]
        x3 = x.reshape(x.shape[0], -1, d_in)
        tokens = x3.shape[1]
        if rt.identity:  # the segment kernel when row i uses slot i: nothing to reorder
            out.view(rt.span, tokens, d_out).baddbmm_(torch.bmm(x3, self.at[: rt.span]), self.bt[: rt.span])
            return out
        if rt.kernel == "segment":
            # SGMV-style: one (group*tokens x d_in) @ (d_in x r) @ (r x d_out) chain per slot,
            # as two batched matmuls over the slots' own weights.
            xp = x3.index_select(0, rt.pad_src).view(rt.span, rt.group * tokens, d_in)
            h = torch.bmm(xp, self.at[: rt.span])
            delta = torch.bmm(h, self.bt[: rt.span]).view(-1, tokens, d_out).index_select(0, rt.row_pos)
        else:
            # Punica-style: each row gathers its own A and B (copies; for skewed mixes).
            xs = x3 if rt.every_row else x3.index_select(0, rt.rows)
            delta = torch.bmm(torch.bmm(xs, self.at[rt.slots]), self.bt[rt.slots])
        # `out` is this call's own fresh tensor: add in place.
        if rt.every_row:
            return out.add_(delta.view_as(out))
        return out.index_add_(0, rt.rows, delta.view(len(rt.rows), *out.shape[1:]))


class ServingLora:
    """LoRA slots on the shared model for inference; adapters come and go while it serves.

    :meth:`acquire` gives adapters slots (the one an adapter is already loaded in, else the
    lowest slot no active row uses, growing the slots when every one is in use) and
    :meth:`release` hands one back; an idle adapter stays loaded until its slot is taken.
    The wrappers are in the model only between :meth:`attach` and :meth:`detach`, which
    the caller does under ``bundle.lock``: the model is plain whenever serving does not
    hold it, so training and PEFT can use it in between.
    """

    def __init__(self, bundle: ModelBundle) -> None:
        self.bundle = bundle
        self.routing = ServeRouting()
        self.modules: dict[str, ServingLinear] = {}
        self._places: dict[str, tuple[nn.Module, str]] = {}
        self.rank = 1
        self.loaded: list[LoraAdapter | None] = []  # the adapter in each slot
        self.users: list[int] = []  # active rows per slot

    # -- slots ---------------------------------------------------------------------------------
    def acquire(self, adapters: Sequence[LoraAdapter]) -> list[int]:
        """A slot for each adapter (one active row each), loading the ones not loaded yet."""
        new = []
        for a in adapters:
            if all(a is not b for b in self.loaded) and all(a is not b for b in new):
                new.append(a)
        for a in new:
            self._fit(a)
        free = [i for i, n in enumerate(self.users) if n == 0 and all(self.loaded[i] is not a for a in adapters)]
        if len(new) > len(free):  # grow once, to at least double
            self._resize(max(len(self.loaded) + len(new) - len(free), 2 * len(self.loaded)), self.rank)
            free = [i for i, n in enumerate(self.users) if n == 0 and all(self.loaded[i] is not a for a in adapters)]
        for a, slot in zip(new, free):
            self.loaded[slot] = None
            self._write(slot, a)
            self.loaded[slot] = a
        slots = [next(i for i, b in enumerate(self.loaded) if b is a) for a in adapters]
        for slot in slots:
            self.users[slot] += 1
        return slots

    def release(self, slot: int) -> None:
        if slot >= 0:
            self.users[slot] -= 1

    def _fit(self, adapter: LoraAdapter) -> None:
        """Wrap the modules this adapter needs and widen the slots to its rank."""
        root = self.bundle.model
        for path in module_paths(adapter):
            if path in self.modules:
                continue
            parent_path, _, name = path.rpartition(".")
            parent = root.get_submodule(parent_path) if parent_path else root
            base = getattr(parent, name)
            if isinstance(base, ServingLinear):
                base = base.base
            if not isinstance(base, nn.Linear):
                raise TypeError(f"{path} is not a Linear layer")
            mod = ServingLinear(base, self.routing)
            mod.at = base.weight.new_zeros(len(self.loaded), base.in_features, self.rank)
            mod.bt = base.weight.new_zeros(len(self.loaded), self.rank, base.out_features)
            self.modules[path] = mod
            self._places[path] = (parent, name)
        if adapter.config.r > self.rank:
            self._resize(len(self.loaded), adapter.config.r)

    def _resize(self, slots: int, rank: int) -> None:
        keep, old_rank = min(len(self.loaded), slots), self.rank
        # New slots need no zeros (a slot is read only once written, and the segment kernel
        # drops what padding computes); a wider rank does, for the adapters already loaded.
        alloc = torch.empty if rank == old_rank else torch.zeros
        for mod in self.modules.values():
            at = alloc(slots, mod.at.shape[1], rank, dtype=mod.at.dtype, device=mod.at.device)
            bt = alloc(slots, rank, mod.bt.shape[2], dtype=mod.bt.dtype, device=mod.bt.device)
            at[:keep, :, :old_rank] = mod.at[:keep]
            bt[:keep, :old_rank] = mod.bt[:keep]
            mod.at, mod.bt = at, bt
        self.rank = rank
        self.loaded = (self.loaded + [None] * slots)[:slots]
        self.users = (self.users + [0] * slots)[:slots]

    @torch.no_grad()
    def _write(self, slot: int, adapter: LoraAdapter) -> None:
        r, scaling = adapter.config.r, adapter_scaling(adapter)
        for path, mod in self.modules.items():
            a = adapter.state.get(f"{_PREFIX}{path}.lora_A.weight")
            b = adapter.state.get(f"{_PREFIX}{path}.lora_B.weight")
            if a is None or b is None:
                mod.at[slot].zero_()
                mod.bt[slot].zero_()
                continue
            mod.at[slot, :, :r].copy_(a.T)
            mod.bt[slot, :r].copy_((b.float() * scaling).T)
            if r < self.rank:
                mod.at[slot, :, r:].zero_()
                mod.bt[slot, r:].zero_()

    # -- rows ----------------------------------------------------------------------------------
    def route(self, row_slots: Sequence[int] | torch.Tensor | None, gather: bool | None = None) -> None:
        """Set each batch row's slot (-1: base model only); None turns LoRA off.

        ``gather`` forces the per-row kernel (True) or the segment kernel (False); by default
        the segment kernel runs unless padding the groups would more than double the rows.
        """
        rt = self.routing
        rt.rows = None
        if row_slots is None:
            return
        idx = torch.as_tensor(row_slots, dtype=torch.long).cpu()
        rows = (idx >= 0).nonzero().squeeze(1)
        if len(rows) == 0:
            return
        slots = idx[rows]
        counts = torch.bincount(slots)
        span, group, m = len(counts), int(counts.max()), len(rows)
        # Each row's place in the slot-major layout: slot * group + its rank among the slot's rows.
        order = torch.argsort(slots, stable=True)
        starts = counts.cumsum(0) - counts
        row_pos = torch.empty(m, dtype=torch.long)
        row_pos[order] = slots[order] * group + torch.arange(m) - starts[slots[order]]
        pad_src = torch.zeros(span * group, dtype=torch.long)  # padding reads row 0; its result is dropped
        pad_src[row_pos] = rows
        dev = self.bundle.device
        rt.kernel = ("rows" if gather else "segment") if gather is not None else (
            "segment" if span * group <= 2 * m else "rows")
        rt.every_row = m == len(idx)
        rt.identity = (rt.kernel == "segment" and rt.every_row and group == 1 and span == m
                       and bool((slots == torch.arange(m)).all()))
        rt.span, rt.group = span, group
        rt.slots, rt.pad_src, rt.row_pos = slots.to(dev), pad_src.to(dev), row_pos.to(dev)
        rt.rows = rows.to(dev)

    # -- in and out of the model -----------------------------------------------------------------
    def attach(self) -> None:
        for path, mod in self.modules.items():
            parent, name = self._places[path]
            setattr(parent, name, mod)

    def detach(self) -> None:
        for path, mod in self.modules.items():
            parent, name = self._places[path]
            setattr(parent, name, mod.base)

    @contextmanager
    def attached(self) -> Iterator[ServingLora]:
        with self.bundle.lock:
            self.attach()
            try:
                yield self
            finally:
                self.detach()

@contextmanager
def serving(bundle: ModelBundle, adapters: Sequence[LoraAdapter]) -> Iterator[ServingLora]:
    """Distinct ``adapters`` loaded for inference (slot i = adapters[i]), in the model for the block."""
    with bundle.lock:
        sl = ServingLora(bundle)
        sl.acquire(adapters)
        with sl.attached():
            yield sl
