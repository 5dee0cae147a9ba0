"""Adaptation quality on the user's path: what an adapter learned, what it forgot, how long it took.

For each recipe (keyword arguments of :func:`seal_engine.knowledge.adapt.adapt`) and each
passage, one adapter is trained on that passage alone, then:

  (a) learned: the passage's questions asked as a chat user asks them through
      ``/v1/chat/completions`` (one plain user turn, the model's own template, greedy, the
      serving decoder), graded ``contains`` and F1 on the first ``short_tokens`` tokens of
      the reply and on ``read_tokens`` (what a user reads); the base model beside it;
  (b) forgot: probe forgetting on the *report* half of the general-fact probes (never seen
      by any training data, reward or gate) and answer drift (nats/token) of the base
      model's own replies to the report half of the generic prompts
      (:mod:`seal_engine.knowledge.forgetting`);
  (c) seconds for the adaptation alone (self-edits + training).

Every recipe's adapters for a passage are evaluated together in shared decode batches.
``bench/quality.py`` and ``seal eval --path chat`` run it.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

from seal_engine.config import EngineSettings
from seal_engine.core.grading import grade_offline
from seal_engine.core.lora import Relevance
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.adapt import adapt
from seal_engine.knowledge.documents import Document
from seal_engine.knowledge.forgetting import (ForgettingCheck, ForgettingExceeded, gate_requests, measure_forgetting,
                                              pair_nlls)
from seal_engine.knowledge.qa import chat_answers
from seal_engine.serving.completions import chat_prompt_ids
from seal_engine.serving.relevance import adapter_gains, quantile, serves

# Per recipe, the figures a summary averages over passages.
FIGURES = ("contains_read", "f1_read", "contains_short", "f1_short", "base_contains_read", "forgetting", "drift_nll",
           "seconds", "weight_contains_read", "weight_forgetting", "weight_drift_nll", "served_own", "served_replies")


def first_tokens(bundle: ModelBundle, text: str, n: int) -> str:
    ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return bundle.tokenizer.decode(ids, skip_special_tokens=True)


def grade_replies(bundle: ModelBundle, answers: Sequence[str], golds: Sequence[str], short: int) -> dict[str, float]:
    """``contains`` and F1 of whole replies (``_read``) and of their first ``short`` tokens (``_short``)."""
    out: dict[str, float] = {}
    for tag, texts in (("read", list(answers)), ("short", [first_tokens(bundle, a, short) for a in answers])):
        grades = [grade_offline(a, g) for a, g in zip(texts, golds)]
        for grader in ("contains", "f1"):
            out[f"{grader}_{tag}"] = statistics.fmean(g[grader] for g in grades) if grades else 0.0
    return out


def evaluate_passage(bundle: ModelBundle, settings: EngineSettings, doc: Document,
                     recipes: Mapping[str, Mapping[str, Any]], check: ForgettingCheck, *, read_tokens: int = 128,
                     short_tokens: int = 32, seed: int = 0) -> list[dict]:
    """One row per recipe: the adapter for ``doc`` trained by it, graded as above.

    A recipe's ``lora`` entry overrides the settings' LoRA fields. A recipe with a
    ``max_forgetting`` gate whose adapter is rejected leaves the user the base model: its row
    says ``rejected`` and carries the base model's answers (nothing learned, nothing forgotten).
    A recipe with a ``relevance_quantile`` is graded as served (each request routed to the
    adapter or the base model, :mod:`seal_engine.serving.relevance`); the same adapter serving
    every request is graded beside it (``weight_*`` figures), and the row keeps each question's
    and probe's relevance gain and grades, from which any other threshold's figures follow; its
    drift is the served one (:func:`served_drift`)."""
    adapters, rows, rejected = [], [], []
    for name, recipe in recipes.items():
        spec = dict(recipe)
        lora = settings.lora.model_copy(update=spec.pop("lora", {}))
        t = time.perf_counter()
        try:
            result = adapt(bundle, [doc], settings, lora=lora, questions=[], seed=seed, **spec)
        except ForgettingExceeded as e:
            rejected.append({"recipe": name, "title": doc.title, "seconds": time.perf_counter() - t, "rejected": True,
                             "gate_forgetting": e.measured.forgetting, "forgetting": 0.0, "retained": 1.0,
                             "probes": len(check.probes), "drift_nll": 0.0})
            continue
        seconds = time.perf_counter() - t
        adapters.append(result.adapter)
        rows.append({"recipe": name, "title": doc.title, "seconds": seconds, "timings": result.timings,
                     "train_steps": len(result.adapter.losses), "examples": result.adapter.num_sequences,
                     "rejected": False, "fallbacks": result.fallbacks,
                     "gate_forgetting": result.forgetting.forgetting if result.forgetting else None})
    # The routed adapters once more, serving every request (what the weights alone do).
    weights = {k: dataclasses.replace(a, relevance=None) for k, a in enumerate(adapters) if a.relevance is not None}
    questions = [q.question for q in doc.questions]
    golds = [q.answer for q in doc.questions]
    subjects = [None, *adapters, *weights.values()]
    answers = chat_answers(bundle, questions * len(subjects), [a for a in subjects for _ in questions],
                           max_tokens=read_tokens)
    per = [answers[i * len(questions) : (i + 1) * len(questions)] for i in range(len(subjects))]
    base = grade_replies(bundle, per[0], golds, short_tokens)
    forgot = measure_forgetting(bundle, check, [*adapters, *weights.values()])
    for row, mine, f in zip(rows, per[1:], forgot):
        row.update(grade_replies(bundle, mine, golds, short_tokens))
        row.update({f"base_{k}": v for k, v in base.items()})
        row.update(f.to_dict())
        row["answers"] = mine
    # Each routed adapter's per-reply NLLs (the base model's are the check's), for the served drift.
    reply_nlls = dict(zip(weights, pair_nlls(bundle, check.replies, list(weights.values())))) if check.replies else {}
    for (k, weight), mine, f in zip(weights.items(), per[1 + len(adapters):], forgot[len(adapters):]):
        row, adapter = rows[k], adapters[k]
        row.update({f"weight_{key}": v for key, v in grade_replies(bundle, mine, golds, short_tokens).items()})
        row.update({f"weight_{key}": v for key, v in f.to_dict().items()})
        row["relevance"] = adapter.relevance.to_dict()
        asked = [chat_prompt_ids(bundle, [{"role": "user", "content": q}]) for q in questions]
        probes = [chat_prompt_ids(bundle, [{"role": "user", "content": q.question}]) for q in check.probes]
        replies = [bundle.tokenizer(prompt, add_special_tokens=False)["input_ids"] for prompt, _ in check.replies]
        gains = adapter_gains(bundle, weight, asked + probes + replies + gate_requests(bundle, settings))
        cut = [len(asked), len(asked) + len(probes), len(asked) + len(probes) + len(replies)]
        row["gains"] = {"own": gains[: cut[0]], "probes": gains[cut[0] : cut[1]], "replies": gains[cut[1] : cut[2]],
                        "gate": gains[cut[2]:]}
        row["grades"] = {"base_own": _contains(per[0], golds), "weight_own": _contains(mine, golds),
                         "base_probes": list(check.base_correct), "weight_probes": list(f.correct)}
        row["served_own"] = statistics.fmean(serves(adapter.relevance, g) for g in row["gains"]["own"])
        routed = [serves(adapter.relevance, g) for g in row["gains"]["replies"]]
        row["served_replies"] = statistics.fmean(routed)
        row["drift_nll"] = served_drift(check.base_reply_nlls, reply_nlls[k], routed) if k in reply_nlls else None
    for row in rejected:
        row.update(grade_replies(bundle, per[0], golds, short_tokens))
        row.update({f"base_{k}": v for k, v in base.items()})
        row["answers"] = per[0]
    return [*rows, *rejected]


def served_drift(base: Sequence[tuple[float, int]], adapter: Sequence[tuple[float, int]],
                 routed: Sequence[bool]) -> float:
    """Nats per token the served model adds to the base model's own replies: a reply routed to the
    adapter counts its NLL change under the adapter, the others none (the base model answers them)."""
    tokens = sum(n for _, n in base)
    return sum(a - b for (b, _), (a, _), on in zip(base, adapter, routed) if on) / tokens if tokens else 0.0


def _contains(answers: Sequence[str], golds: Sequence[str]) -> list[float]:
    return [grade_offline(a, g)["contains"] for a, g in zip(answers, golds)]


def relevance_curve(rows: Sequence[dict], quantiles: Sequence[float]) -> dict[float, dict[str, float]]:
    """What served figures other relevance thresholds give, from the rows' gains and grades
    (greedy decoding: a request gets the adapter's answer or the base model's): per quantile,
    mean contains@read and probe forgetting over the rows, and the shares routed to the adapter."""
    out: dict[float, dict[str, float]] = {}
    for q in quantiles:
        acc, forg, own, probes = [], [], [], []
        for r in rows:
            if "gains" not in r:
                continue
            g, gr = r["gains"], r["grades"]
            # The serving rule itself (threshold and margin), at this quantile's threshold.
            rule = Relevance(threshold=quantile(g["gate"], q), quantile=q, texts=len(g["gate"]))
            acc.append(statistics.fmean(w if serves(rule, x) else b
                                        for x, w, b in zip(g["own"], gr["weight_own"], gr["base_own"])))
            kept = [w if serves(rule, x) else True
                    for x, w, b in zip(g["probes"], gr["weight_probes"], gr["base_probes"]) if b]
            forg.append(1.0 - statistics.fmean(kept) if kept else 0.0)
            own.append(statistics.fmean(serves(rule, x) for x in g["own"]))
            probes.append(statistics.fmean(serves(rule, x) for x in g["probes"]))
        if acc:
            out[q] = {"contains_read": statistics.fmean(acc), "forgetting": statistics.fmean(forg),
                      "served_own": statistics.fmean(own), "served_probes": statistics.fmean(probes),
                      "passages": len(acc)}
    return out


def paired_difference(rows: Sequence[dict], a: str, b: str, key: str, *, resamples: int = 2000,
                      seed: int = 0) -> dict[str, float]:
    """Mean of ``key`` under recipe ``a`` minus under ``b`` over the passages both measured, with a
    95% bootstrap interval (passages resampled): the same passages remove most of the variance
    between documents that separate means carry."""
    by = {name: {(r["title"], r.get("passage")): r[key] for r in rows if r["recipe"] == name and r.get(key) is not None}
          for name in (a, b)}
    # Sorted: a set's order changes with the hash seed, and the resampling with it.
    diffs = [by[a][p] - by[b][p] for p in sorted(by[a].keys() & by[b].keys(), key=repr)]
    if not diffs:
        return {"mean": float("nan"), "low": float("nan"), "high": float("nan"), "passages": 0}
    rng = random.Random(seed)
    means = sorted(statistics.fmean(rng.choices(diffs, k=len(diffs))) for _ in range(resamples))
    return {"mean": statistics.fmean(diffs), "low": means[int(0.025 * resamples)],
            "high": means[int(0.975 * resamples) - 1], "passages": len(diffs)}


def mean_se(xs: Sequence[float]) -> tuple[float, float]:
    """Mean and standard error (nan where undefined)."""
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return m, se


def summarize(rows: Sequence[dict], recipes: Sequence[str]) -> dict[str, dict]:
    """Per recipe: mean and standard error of every figure over passages, the median seconds,
    and whether the recipe is Pareto-optimal (no other is at least as good on accuracy,
    forgetting and seconds, and better on one)."""
    table: dict[str, dict] = {}
    for name in recipes:
        mine = [r for r in rows if r["recipe"] == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"passages": len(mine)}
        for key in FIGURES:
            vals = [r[key] for r in mine if r.get(key) is not None]
            entry[key], entry[key + "_se"] = mean_se(vals)
        timed = [r["seconds"] for r in mine if r.get("seconds") is not None]
        entry["seconds_median"] = statistics.median(timed) if timed else float("nan")
        entry["rejected"] = sum(1 for r in mine if r.get("rejected"))
        table[name] = entry
    for name, e in table.items():
        mine = (e["contains_read"], -e["forgetting"], -e["seconds_median"])
        e["pareto"] = not any(
            all(a >= b for a, b in zip(theirs, mine)) and theirs != mine
            for other, o in table.items() if other != name
            for theirs in [(o["contains_read"], -o["forgetting"], -o["seconds_median"])]
        )
    return table


def _drift(e: Mapping[str, Any]) -> str:
    if e["drift_nll"] != e["drift_nll"]:  # nan: no row of the recipe measured it
        return "n/a"
    return f"{e['drift_nll']:.3f} +- {e['drift_nll_se']:.3f}"


def markdown_table(table: Mapping[str, dict], short: int, read: int) -> str:
    lines = [f"| recipe | n | contains@{read} | F1@{read} | contains@{short} | forgetting (report probes) "
             "| drift (nats/tok) | s/doc (median) | rejected | Pareto |", "|---|---|---|---|---|---|---|---|---|---|"]
    for name, e in table.items():
        lines.append(
            f"| {name} | {e['passages']} | {100 * e['contains_read']:.1f} +- {100 * e['contains_read_se']:.1f} "
            f"| {100 * e['f1_read']:.1f} +- {100 * e['f1_read_se']:.1f} "
            f"| {100 * e['contains_short']:.1f} +- {100 * e['contains_short_se']:.1f} "
            f"| {100 * e['forgetting']:.1f} +- {100 * e['forgetting_se']:.1f} "
            f"| {_drift(e)} | {e['seconds_median']:.1f} "
            f"| {e.get('rejected', 0)} | {'yes' if e['pareto'] else ''} |")
    if table:
        lines.append(f"\nno adaptation: contains@{read} {100 * next(iter(table.values()))['base_contains_read']:.1f}%")
    for name, e in table.items():
        if e.get("served_own") == e.get("served_own"):  # a routed recipe (not nan)
            lines.append(
                f"{name}, the same adapters serving every request: contains@{read} "
                f"{100 * e['weight_contains_read']:.1f} +- {100 * e['weight_contains_read_se']:.1f}, forgetting "
                f"{100 * e['weight_forgetting']:.1f} +- {100 * e['weight_forgetting_se']:.1f}, drift "
                f"{e['weight_drift_nll']:.3f}; routed to the adapter: {100 * e['served_own']:.1f}% of the passages' "
                f"questions, {100 * e['served_replies']:.1f}% of the report generic prompts")
    return "\n".join(lines)
