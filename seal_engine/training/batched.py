"""Training K LoRA adapters together, each exactly as if trained alone.

Adapter k sees its own data in its own seeded order, in batches of ``batch_size``,
with its own AdamW state and step count; at each step the rows of every adapter that
still has a batch are stacked into one pass. Per-adapter losses are token means over
that adapter's rows only, so the gradient of adapter k equals the one it would get
alone. Rows are sorted by length and cut into micro-batches under a token budget
(gradients accumulate across them), so almost no compute goes to padding.

Initialisation reuses PEFT's own (seeded) so that a candidate trained here and the
same candidate trained by :func:`seal_engine.training.peft.train_lora` start identical.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from seal_engine.config import LoraSettings
from seal_engine.core.lora import (AdapterError, LoraAdapter, TrainedAdapter, adapter_scaling, lora_config, module_paths,
                                   peft_model)
from seal_engine.core.model import ModelBundle
from seal_engine.training.multilora import installed
from seal_engine.training.peft import padded_width, tokenize
from seal_engine.training.sft import IGNORE, build_example, collate_sft

BETAS = (0.9, 0.999)
EPS = 1e-8


def peft_initial_state(bundle: ModelBundle, cfg: LoraSettings, seed: int) -> dict[str, torch.Tensor]:
    """The LoRA weights PEFT would start from for this seed (A random, B zero)."""
    config = lora_config(cfg, bundle.model_id, bundle)
    from peft import get_peft_model_state_dict

    with bundle.lock:
        torch.manual_seed(seed)
        model = peft_model(bundle, config)
        try:
            return {k: v.detach().to("cpu", copy=True) for k, v in get_peft_model_state_dict(model).items()}
        finally:
            model.unload()


def default_token_budget(device: torch.device) -> int:
    """Tokens per forward when the settings name none: on CPU throughput is flat past ~1k
    tokens (bench/cpu_kernels.py), a GPU needs ~16k to fill its SMs."""
    return 16384 if device.type == "cuda" else 1024


class _SlotAdamW:
    """AdamW (no weight decay) over stacked adapters, stepping only the active slots.

    Slot k owns rows k*r:(k+1)*r of every ``lora_A`` (K*r x in) and columns k*r:(k+1)*r of
    every ``lora_B`` (out x K*r). Every adapter trains from step 0 until its own data runs
    out, so all active slots have taken the same number of steps and share one bias
    correction; finished slots are frozen by a 0/1 mask. Updates are multi-tensor
    (``torch._foreach_*``): a handful of kernels per step instead of ~10 per LoRA tensor,
    which is what a GPU step of a small model is bound by. Same arithmetic as torch's AdamW.
    """

    def __init__(self, lora_a: list[torch.Tensor], lora_b: list[torch.Tensor], slots: int, rank: int,
                 lr: float) -> None:
        self.params = list(lora_a) + list(lora_b)
        self.n_a = len(lora_a)
        self.slots, self.rank, self.lr = slots, rank, lr
        self.t = 0
        self.m = [torch.zeros_like(p) for p in self.params]
        self.v = [torch.zeros_like(p) for p in self.params]
        self._masks: tuple[tuple[bool, ...], list[torch.Tensor]] | None = None

    def _slot_masks(self, active: torch.Tensor) -> list[torch.Tensor] | None:
        """Per-parameter 0/1 masks of the active slots (None: all active); they change only
        when an adapter finishes, so they are built then and reused."""
        key = tuple(bool(a) for a in active)
        if all(key):
            return None
        if self._masks is None or self._masks[0] != key:
            col = active.float().repeat_interleave(self.rank)
            masks = []
            for i, p in enumerate(self.params):
                c = col.to(p.device, p.dtype)
                masks.append((c.view(-1, 1) if i < self.n_a else c.view(1, -1)).expand_as(p).contiguous())
            self._masks = (key, masks)
        return self._masks[1]

    @torch.no_grad()
    def step(self, active: torch.Tensor) -> None:
        b1, b2 = BETAS
        self.t += 1
        masks = self._slot_masks(active)
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        # m += (1 - b1) * mask * (g - m);  v += (1 - b2) * mask * (g^2 - v)
        d = torch._foreach_sub(grads, self.m)
        if masks:
            torch._foreach_mul_(d, masks)
        torch._foreach_add_(self.m, d, alpha=1 - b1)
        d = torch._foreach_mul(grads, grads)
        torch._foreach_sub_(d, self.v)
        if masks:
            torch._foreach_mul_(d, masks)
        torch._foreach_add_(self.v, d, alpha=1 - b2)
        # p -= lr / bc1 * mask * m / (sqrt(v) / sqrt(bc2) + eps)
        denom = torch._foreach_sqrt(self.v)
        torch._foreach_div_(denom, (1 - b2**self.t) ** 0.5)
        torch._foreach_add_(denom, EPS)
        upd = torch._foreach_div(self.m, denom)
        if masks:
            torch._foreach_mul_(upd, masks)
        torch._foreach_add_(self.params, upd, alpha=-self.lr / (1 - b1**self.t))
        for p in self.params:
            p.grad = None


# A training example: a sequence (loss on every token) or a (prompt, completion) pair, the
# prompt tokenized as generation sees it and only the completion (ended by EOS) carrying loss.
Example = str | tuple[str, str]


def tokenize_examples(bundle: ModelBundle, examples: Sequence[Example], max_len: int) -> list[tuple[list[int], list[int]]]:
    """(input_ids, labels) per example; labels are -100 where no loss is taken."""
    out = []
    seqs = [e for e in examples if isinstance(e, str)]
    tokenized = iter(tokenize(bundle, seqs, max_len)) if seqs else iter(())
    for e in examples:
        if isinstance(e, str):
            continue
        ex = build_example(bundle, e[0], e[1], max_len)
        if ex is not None and any(lab != IGNORE for lab in ex[1][1:]):
            out.append(ex)
    # Plain sequences first, in order, then pairs: the per-adapter order is shuffled by its seed anyway,
    # and a set of sequences alone keeps exactly the order (and so the schedule) it always had.
    return [(ids, list(ids)) for ids in tokenized] + out


@dataclass(frozen=True)
class Anchors:
    """Texts on which every adapter must keep the base model's next-token distributions.

    Each optimizer step adds, for every adapter still training, ``per_step`` of these
    sequences (in turn) and ``weight`` x the mean per-token KL(base || adapted) over them to
    that adapter's loss. Unlike training on the base model's sampled replies (hard targets,
    which also count as data and lengthen the schedule), this keeps the whole distribution
    where the adapter has nothing to learn and leaves the schedule of the real data alone.

    The base side is computed once, before training, and kept as its ``top_k`` most likely
    tokens per position plus the rest of the mass in one bucket: the KL between those
    (top_k + 1)-bin distributions (a lower bound of the full KL, tight where the base model
    is confident) needs no base forward per step and a few kB per anchor.
    """

    texts: Sequence[Example]  # plain text or (prompt, completion); the KL covers every position
    per_step: int = 2
    weight: float = 1.0
    max_tokens: int = 48  # each anchor cut to this many tokens
    top_k: int = 64

    def tokenized(self, bundle: ModelBundle) -> list[list[int]]:
        return [ids[: self.max_tokens] for ids, _ in tokenize_examples(bundle, self.texts, 4 * self.max_tokens)]


# An anchor ready for training: its token ids and the base model's top-k log-probs / token ids per position.
_Anchor = tuple[list[int], torch.Tensor, torch.Tensor]


@torch.no_grad()
def _base_targets(bundle: ModelBundle, anchors: Anchors) -> list[_Anchor]:
    """Each anchor's ids with the base model's top-k next-token log-probs (LoRA must be off)."""
    out = []
    with bundle.lock:
        for ids in anchors.tokenized(bundle):
            if len(ids) < 2:
                continue
            x = torch.tensor([ids], device=bundle.device)
            logp = F.log_softmax(bundle.model(input_ids=x).logits[0, :-1].float(), dim=-1)
            top = logp.topk(min(anchors.top_k, logp.shape[-1]), dim=-1)
            out.append((ids, top.values.cpu(), top.indices.cpu()))
    return out


def train_adapters_batched(
    bundle: ModelBundle,
    training_sets: Sequence[Sequence[Example]],
    cfg: LoraSettings,
    *,
    seeds: Sequence[int] | None = None,
    token_budget: int | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    anchors: Anchors | None = None,
    starts: Sequence[LoraAdapter | None] | None = None,
) -> list[TrainedAdapter]:
    """One adapter per training set, all trained in shared forward/backward passes.

    ``token_budget`` overrides ``cfg.token_budget`` (see :class:`LoraSettings`);
    ``anchors`` adds a KL penalty to the base model (:class:`Anchors`); ``starts`` (one per
    training set, None: PEFT's initialisation) continues training existing adapters, which must
    have the LoRA tensors ``cfg`` describes (same targets and rank).
    """
    K = len(training_sets)
    if K == 0:
        return []
    token_budget = token_budget or cfg.token_budget or default_token_budget(bundle.device)
    seeds = list(seeds) if seeds is not None else [cfg.seed] * K
    if len(seeds) != K:
        raise ValueError("one seed per training set")
    data = [tokenize_examples(bundle, seqs, cfg.max_seq_length) for seqs in training_sets]
    for i, d in enumerate(data):
        if not d:
            raise AdapterError(f"training set {i}: nothing to train on (every sequence is empty)")
    config = lora_config(cfg, bundle.model_id, bundle)
    # One PEFT wrap per distinct seed (candidates usually share the seed).
    init_by_seed = {s: peft_initial_state(bundle, cfg, s) for s in dict.fromkeys(seeds)}
    inits = [init_by_seed[s] for s in seeds]
    for k, start in enumerate(starts or []):
        if start is not None:
            if abs(adapter_scaling(start) - cfg.alpha / cfg.rank) > 1e-9:
                raise AdapterError(f"the adapter to continue training scales its update by {adapter_scaling(start):g}, "
                                   f"the training settings by alpha/rank = {cfg.alpha / cfg.rank:g}")
            inits[k] = _start_state(start, inits[k])
    rngs = [random.Random(s) for s in seeds]
    bs = cfg.batch_size
    # Every adapter's batch schedule for all epochs, fixed up front (same as train_lora).
    schedules: list[list[list[int]]] = []
    for d, rng in zip(data, rngs):
        batches = []
        for _ in range(cfg.epochs):
            idx = list(range(len(d)))
            rng.shuffle(idx)
            batches.extend(idx[b : b + bs] for b in range(0, len(idx), bs))
        schedules.append(batches)
    total_steps = max(len(s) for s in schedules)
    losses: list[list[float]] = [[] for _ in range(K)]
    tokens = [0] * K
    pad = bundle.tokenizer.pad_token_id
    anchor_set = _base_targets(bundle, anchors) if anchors and anchors.per_step > 0 and anchors.weight > 0 else []
    t0 = time.perf_counter()
    paths = module_paths(TrainedAdapter(config=config, state=inits[0]))
    with installed(bundle, paths, K, cfg.rank, cfg.dropout) as ml:
        for k, init in enumerate(inits):
            ml.load(k, TrainedAdapter(config=config, state=init))
        params = list(ml.parameters())
        for p in params:
            p.requires_grad_(True)
        mods = list(ml.modules.values())
        opt = _SlotAdamW([m.lora_A for m in mods], [m.lora_B for m in mods], K, cfg.rank, cfg.learning_rate)
        model = bundle.model
        was_training = model.training
        model.train()
        try:
            for step in range(total_steps):
                rows: list[tuple[int, tuple[list[int], list[int]]]] = []
                active = torch.zeros(K, dtype=torch.bool)
                for k, sched in enumerate(schedules):
                    if step < len(sched):
                        active[k] = True
                        rows.extend((k, data[k][i]) for i in sched[step])
                # Loss normaliser per adapter: its predicted tokens this step.
                ntok = torch.zeros(K)
                for k, (_, labels) in rows:
                    ntok[k] += sum(1 for lab in labels[1:] if lab != IGNORE)
                step_loss = torch.zeros(K)
                rows.sort(key=lambda r: len(r[1][0]))
                for mb in _micro_batches(rows, token_budget):
                    batch = collate_sft([ex for _, ex in mb], pad)
                    input_ids, attn = batch["input_ids"], batch["attention_mask"]
                    slot = torch.tensor([k for k, _ in mb])
                    ml.route(slot)
                    logits = model(input_ids=input_ids.to(bundle.device), attention_mask=attn.to(bundle.device)).logits
                    labels = batch["labels"][:, 1:].to(bundle.device)
                    tok_loss = F.cross_entropy(
                        logits[:, :-1].float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                        ignore_index=-100, reduction="none",
                    ).view(len(mb), -1)
                    row_loss = tok_loss.sum(dim=1).cpu()
                    weights = 1.0 / ntok[slot]
                    (tok_loss.sum(dim=1) * weights.to(tok_loss.device)).sum().backward()
                    step_loss.index_add_(0, slot, (row_loss * weights).detach())
                    del logits, tok_loss
                if anchor_set:
                    picks = [anchor_set[(step * anchors.per_step + j) % len(anchor_set)] for j in range(anchors.per_step)]
                    _anchor_backward(bundle, ml, [(k, a) for k in range(K) if active[k] for a in picks],
                                     anchors.weight, token_budget, pad)
                opt.step(active)
                for k in range(K):
                    if active[k]:
                        losses[k].append(float(step_loss[k]))
                        tokens[k] += sum(len(ex[0]) for kk, ex in rows if kk == k)
                if on_step:
                    on_step(step + 1, total_steps, float(step_loss[active].mean()))
            states = [ml.export(k, config) for k in range(K)]
        finally:
            ml.route(None)
            for p in params:
                p.requires_grad_(False)
            model.train(was_training)
    seconds = time.perf_counter() - t0
    return [
        TrainedAdapter(
            config=config, state=states[k], seed=seeds[k], losses=losses[k], num_sequences=len(data[k]),
            num_tokens=tokens[k], seconds=seconds,
        )
        for k in range(K)
    ]


def _start_state(start: LoraAdapter, fresh: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``start``'s tensors, checked against the fresh initialisation they replace."""
    if set(start.state) != set(fresh):
        missing, extra = sorted(set(fresh) - set(start.state)), sorted(set(start.state) - set(fresh))
        raise AdapterError("the adapter to continue training has other LoRA targets than the training settings "
                           f"(missing {missing[:3]}, unexpected {extra[:3]})")
    for name, t in fresh.items():
        if tuple(start.state[name].shape) != tuple(t.shape):
            raise AdapterError(f"the adapter to continue training has rank {start.config.r}, the training settings "
                               f"{tuple(t.shape)} for {name}")
    return {name: start.state[name].detach().to(device=t.device, dtype=t.dtype, copy=True) for name, t in fresh.items()}


Row = tuple[int, tuple[list[int], list[int]]]  # (adapter, (input_ids, labels))


def _anchor_backward(bundle: ModelBundle, ml, rows: list[tuple[int, _Anchor]], weight: float, budget: int,
                     pad: int) -> None:
    """Accumulate ``weight`` x each adapter's mean per-token KL(base || adapted) over its anchor rows."""
    ntok = torch.zeros(ml.slots)
    for k, (ids, _, _) in rows:
        ntok[k] += len(ids) - 1
    model = bundle.model
    rows = sorted(rows, key=lambda r: len(r[1][0]))
    batches = _micro_batches([(k, (a[0], a[0])) for k, a in rows], budget)
    pos = 0
    for mb in batches:
        chunk, pos = rows[pos : pos + len(mb)], pos + len(mb)
        batch = collate_sft([ex for _, ex in mb], pad)
        input_ids = batch["input_ids"].to(bundle.device)
        attn = batch["attention_mask"].to(bundle.device)
        slot = torch.tensor([k for k, _ in mb])
        width = input_ids.shape[1] - 1
        k_top = chunk[0][1][1].shape[-1]
        base_lp = torch.zeros(len(mb), width, k_top)
        base_idx = torch.zeros(len(mb), width, k_top, dtype=torch.long)
        for i, (_, (ids, lp, idx)) in enumerate(chunk):  # right-padded rows: positions line up from the left
            base_lp[i, : len(ids) - 1], base_idx[i, : len(ids) - 1] = lp, idx
        base_lp, base_idx = base_lp.to(bundle.device), base_idx.to(bundle.device)
        ml.route(slot)
        logp = F.log_softmax(model(input_ids=input_ids, attention_mask=attn).logits[:, :-1].float(), dim=-1)
        mine = logp.gather(-1, base_idx)
        p_base = base_lp.exp()
        tail_base = (1 - p_base.sum(-1)).clamp(min=1e-6)
        tail_mine = (1 - mine.exp().sum(-1)).clamp(min=1e-6)
        kl = (p_base * (base_lp - mine)).sum(-1) + tail_base * (tail_base.log() - tail_mine.log())
        kl = kl * attn[:, 1:].to(kl.dtype)
        (kl.sum(dim=1) * (weight / ntok[slot].to(kl.device))).sum().backward()
        del logp, mine, kl


def _micro_batches(rows: list[Row], budget: int) -> list[list[Row]]:
    """Consecutive (length-sorted) rows grouped so rows * max_len stays within ``budget``."""
    out: list[list[Row]] = []
    cur: list[Row] = []
    for row in rows:
        width = padded_width(max([len(row[1][0])] + [len(r[1][0]) for r in cur]))
        if cur and width * (len(cur) + 1) > budget:
            out.append(cur)
            cur = []
        cur.append(row)
    if cur:
        out.append(cur)
    return out
