"""LoRA slots for serving (:class:`ServingLora`, :func:`serving`): no gradients, so the weights are kept
in the model's dtype with the scaling folded into B, in slots that adapters are loaded
into and evicted from while the model serves (see :mod:`seal_engine.serving.decoder`). Rows are
grouped by slot (SGMV-style): two batched matmuls over the slots' weights in place, so
nothing is gathered or cached per routing and rows can join and leave at any step. The
masked kernel would multiply every row by every slot (K times the work: at 32 adapters it
cost more than the base layer); per-row gathers copy each row's weights and remain the
fallback for skewed mixes (one adapter on most rows, a few others on one row each).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from seal_engine.core.lora import PEFT_PREFIX, LoraAdapter, adapter_scaling, module_paths
from seal_engine.core.model import ModelBundle


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
            a = adapter.state.get(f"{PEFT_PREFIX}{path}.lora_A.weight")
            b = adapter.state.get(f"{PEFT_PREFIX}{path}.lora_B.weight")
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

def distinct_slots(adapters: Sequence[LoraAdapter | None]) -> tuple[list[LoraAdapter], list[int]]:
    """The distinct adapters of ``adapters`` (by identity, first seen first) for :func:`serving`, and
    each entry's slot among them (-1 for None: the base model)."""
    unique: list[LoraAdapter] = []
    slots: list[int] = []
    for a in adapters:
        if a is None:
            slots.append(-1)
            continue
        slot = next((i for i, u in enumerate(unique) if u is a), len(unique))
        if slot == len(unique):
            unique.append(a)
        slots.append(slot)
    return unique, slots


@contextmanager
def serving(bundle: ModelBundle, adapters: Sequence[LoraAdapter]) -> Iterator[ServingLora]:
    """Distinct ``adapters`` loaded for inference (slot i = adapters[i]), in the model for the block."""
    with bundle.lock:
        sl = ServingLora(bundle)
        sl.acquire(adapters)
        with sl.attached():
            yield sl
