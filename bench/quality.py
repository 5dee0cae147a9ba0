"""Adaptation quality on the user's path: what an adapter learned, what it forgot, and how long it took.

For each recipe and each dev passage (the adapter is trained on that one passage):

  (a) learned: the passage's questions asked as a chat user asks them through
      ``/v1/chat/completions`` (one plain user turn, the model's own template, greedy, the
      serving decoder), graded ``contains`` and F1 on the first ``--short-tokens`` tokens
      of the reply (the old grading length) and on ``--read-tokens`` (what a user reads);
      the base model's accuracy on the same questions beside it;
  (b) forgot: probe forgetting on the *report* half of the general-fact probes (never
      seen by any training data, reward or gate), and answer drift (nats/token) of the
      base model's own replies to the report half of the generic prompts;
  (c) seconds for the adaptation alone (self-edits + training).

(seal_engine.knowledge.quality does the work; this script adds the recipes, resuming and the table.)
Rows go to ``OUT/results.jsonl`` as they finish (a rerun with the same arguments resumes);
the table (mean +- standard error over passages, and which recipes are Pareto-optimal)
to ``OUT/summary.json`` and stdout.

    OMP_NUM_THREADS=2 python bench/quality.py --passages 50 --recipes passage,default --out bench/results/quality
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from seal_engine.config import EngineSettings  # noqa: E402
from seal_engine.core.model import get_model  # noqa: E402
from seal_engine.knowledge.benchmark import select_passages  # noqa: E402
from seal_engine.knowledge.documents import load_documents  # noqa: E402
from seal_engine.knowledge.forgetting import forgetting_check  # noqa: E402
from seal_engine.knowledge.quality import (  # noqa: E402
    evaluate_passage, markdown_table, paired_difference, relevance_curve, summarize)

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "squad" / "dev.json"

def default_recipe() -> dict[str, Any]:
    """What ``POST /v1/adaptations`` does with no options: the settings' recipe and retention gate."""
    recipe = EngineSettings().recipe
    return {"strategy": recipe.strategy, "k": recipe.num_self_edits, "max_forgetting": recipe.max_forgetting,
            **recipe.adapt_kwargs()}


def _linear(recipe: dict[str, Any], targets: str = "all-linear") -> dict[str, Any]:
    """``recipe`` with its LoRA targets stated (the rows of the first runs used all linear layers,
    the inner loop's default then)."""
    return {**recipe, "lora": {"target_modules": [targets], **recipe.get("lora", {})}}


# name -> keyword arguments of seal_engine.knowledge.adapt.adapt (lora: overrides of SEAL_LORA__*).
RECIPES: dict[str, dict[str, Any]] = {
    # The service's default (SEAL_RECIPE__* and SEAL_LORA__*; each row records what it was).
    "default": default_recipe(),
    # The default inner loop, served with per-request relevance (seal_engine.serving.relevance): the
    # adapter answers the requests whose gain passes the 0.95 quantile of its gains on the gate half.
    "default-routed": {**default_recipe(), "relevance_quantile": 0.95},
    # With the relevance check guarding general requests, an adapter that learns more and forgets more:
    # every linear layer, no retention gate.
    "linear-routed": _linear({"strategy": "passage", "k": 1, "relevance_quantile": 0.95}),
    # ... trained longer: one passage is one sequence, so 10 epochs are only 10 optimizer steps.
    "linear-routed-e20": _linear({"strategy": "passage", "k": 1, "relevance_quantile": 0.95,
                                  "lora": {"epochs": 20}}),
    "linear-routed-e40": _linear({"strategy": "passage", "k": 1, "relevance_quantile": 0.95,
                                  "lora": {"epochs": 40}}),
    # SEAL's self-edits (the passage plus 3 sampled lists of implications, each line a sequence), routed.
    "implications-k3-routed": _linear({"strategy": "implications", "k": 3, "relevance_quantile": 0.95}),
    # What the service and the benchmarks did before this benchmark existed.
    "passage": _linear({"strategy": "passage", "k": 1}),
    "implications-k5": _linear({"strategy": "implications", "k": 5}),
    # The same data presented as chat turns (loss on the replies), and with self-distillation replay.
    "passage-chat": _linear({"strategy": "passage", "k": 1, "training_format": "chat"}),
    "passage-chat-replay": _linear({"strategy": "passage", "k": 1, "training_format": "chat", "replay": 32}),
    "selfqa-chat": _linear({"strategy": "self-qa", "k": 1, "training_format": "chat"}),
    "selfqa-chat-replay": _linear({"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32}),
    # Knobs on the chat form of the passage (no sampling: seconds per document stay small).
    "passage-chat-e3": _linear({"strategy": "passage", "k": 1, "training_format": "chat", "lora": {"epochs": 3}}),
    "passage-chat-lr3e-4": _linear({"strategy": "passage", "k": 1, "training_format": "chat",
                                    "lora": {"learning_rate": 3e-4}}),
    "passage-chat-r4": _linear({"strategy": "passage", "k": 1, "training_format": "chat",
                                "lora": {"rank": 4, "alpha": 8}}),
    "passage-chat-replay8": _linear({"strategy": "passage", "k": 1, "training_format": "chat", "replay": 8}),
    "selfqa-chat-replay-lr3e-4": _linear({"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32,
                                          "lora": {"learning_rate": 3e-4}}),
    "selfqa-chat-replay-e5": _linear({"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32,
                                      "lora": {"epochs": 5}}),
    # A KL penalty to the base model's distributions on N of its own replies to the gate prompts
    # (2 per step, 48 tokens each), the update scaled down after training (a point between base and
    # adapter), and LoRA on the feed-forward layers only (all-mlp) or on attention only.
    "passage-anchor16": _linear({"strategy": "passage", "k": 1, "anchors": 16}),
    "passage-anchor16-w4": _linear({"strategy": "passage", "k": 1, "anchors": 16, "anchor_weight": 4.0}),
    "passage-s0.5": _linear({"strategy": "passage", "k": 1, "scale": 0.5}),
    "passage-s0.7": _linear({"strategy": "passage", "k": 1, "scale": 0.7}),
    "passage-attn": _linear({"strategy": "passage", "k": 1,
                             "lora": {"target_modules": ["q_proj", "k_proj", "v_proj", "o_proj"]}}),
    "passage-mlp": _linear({"strategy": "passage", "k": 1}, "all-mlp"),
    "passage-mlp-anchor16": _linear({"strategy": "passage", "k": 1, "anchors": 16}, "all-mlp"),
}


def _comparable(row: dict, identity: dict) -> bool:
    """Whether a stored row was measured as this run measures (and, for the default, with today's default)."""
    stored = dict(row.get("identity") or {})
    stored["lora"] = {k: v for k, v in stored.get("lora", {}).items() if k != "target_modules"}
    if stored != identity:
        return False
    if row["recipe"] == "default":
        spec = dict(row.get("spec", {}))
        spec.setdefault("relevance_quantile", None)  # rows from before the relevance check: none
        return spec.pop("lora", None) == EngineSettings().lora.model_dump() and spec == RECIPES["default"]
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--passages", type=int, default=50)
    ap.add_argument("--recipes", default="passage,implications-k5", help=f"comma list of: {', '.join(RECIPES)}")
    ap.add_argument("--out", type=Path, required=True, help="directory for results.jsonl and summary.json")
    ap.add_argument("--read-tokens", type=int, default=128, help="reply length graded as a user reads it")
    ap.add_argument("--short-tokens", type=int, default=32, help="the shorter grading length, reported beside it")
    ap.add_argument("--probe-tokens", type=int, default=48, help="reply length of the forgetting probes")
    ap.add_argument("--probes", type=int, default=0, help="report probes asked per adapter (0: the whole half)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--report-only", action="store_true", help="print the table of what OUT holds; train nothing")
    args = ap.parse_args()
    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    if unknown := [r for r in recipes if r not in RECIPES]:
        ap.error(f"unknown recipe(s) {unknown}; choose from {', '.join(RECIPES)}")

    store = args.out / "results.jsonl"
    if args.report_only:
        rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
        print(markdown_table(summarize(rows, recipes), args.short_tokens, args.read_tokens))
        print_curves({name: c for name in recipes
                      if (c := relevance_curve([r for r in rows if r["recipe"] == name], CURVE_QUANTILES))},
                     args.read_tokens)
        print_paired(rows, recipes, args)
        return
    settings = EngineSettings()
    bundle = get_model(settings)
    docs = select_passages(load_documents(args.data), args.passages)
    args.out.mkdir(parents=True, exist_ok=True)
    # What makes rows comparable; every recipe names its LoRA targets, so the default targets are not part of it.
    identity = {k: getattr(args, k) for k in ("read_tokens", "short_tokens", "probe_tokens", "probes", "seed")}
    identity.update(model=bundle.model_id, dtype=str(bundle.dtype),
                    lora=settings.lora.model_dump(exclude={*settings.lora.EXECUTION_ONLY, "target_modules"}))
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    rows = [r for r in rows if _comparable(r, identity)]
    done = {(r["recipe"], r["title"], r["passage"]) for r in rows}
    check = forgetting_check(bundle, settings, "report", max_tokens=args.probe_tokens, max_probes=args.probes)
    print(f"{bundle.model_id} on {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; report probes {len(check.probes)} "
          f"(base right on {sum(check.base_correct)}), report prompts {len(check.replies)}", flush=True)
    for i, doc in enumerate(docs):
        todo = [r for r in recipes if (r, doc.title, i) not in done]
        if not todo:
            continue
        t = time.perf_counter()
        new = evaluate_passage(bundle, settings, doc, {name: RECIPES[name] for name in todo}, check,
                               read_tokens=args.read_tokens, short_tokens=args.short_tokens, seed=args.seed)
        with store.open("a") as fh:
            for row in new:
                row.update(passage=i, identity=identity, spec=RECIPES[row["recipe"]])
                if row["recipe"] == "default":
                    row["spec"] = {**row["spec"], "lora": settings.lora.model_dump()}
                fh.write(json.dumps(row) + "\n")
        rows.extend(new)
        print(f"passage {i + 1}/{len(docs)} ({time.perf_counter() - t:.0f} s): " + "  ".join(
            f"{r['recipe']} {100 * r['contains_read']:.0f}%/{100 * r['forgetting']:.0f}%/{r['seconds']:.0f}s"
            for r in new), flush=True)
    table = summarize(rows, recipes)
    curves = {name: relevance_curve([r for r in rows if r["recipe"] == name], CURVE_QUANTILES) for name in recipes}
    curves = {name: c for name, c in curves.items() if c}
    (args.out / "summary.json").write_text(json.dumps({"identity": identity, "table": table,
                                                       "relevance_curves": curves}, indent=1))
    print(markdown_table(table, args.short_tokens, args.read_tokens))
    print_curves(curves, args.read_tokens)
    print_paired(rows, recipes, args)


def print_paired(rows: list[dict], recipes: list[str], args: argparse.Namespace) -> None:
    """Each further recipe against the first, on the passages both measured (95% bootstrap intervals)."""
    figures = {"contains_read": f"contains@{args.read_tokens}", "contains_short": f"contains@{args.short_tokens}",
               "forgetting": "forgetting", "seconds": "seconds"}
    for other in recipes[1:]:
        parts = []
        for key, label in figures.items():
            d = paired_difference(rows, other, recipes[0], key)
            scale = 1 if key == "seconds" else 100
            parts.append(f"{label} {scale * d['mean']:+.1f} [{scale * d['low']:+.1f}, {scale * d['high']:+.1f}] "
                         f"({d['passages']} passages)")
        print(f"\n{other} - {recipes[0]}, paired: " + ", ".join(parts))


# Relevance thresholds whose served figures routed recipes report (from the rows' gains and grades).
CURVE_QUANTILES = (0.8, 0.9, 0.95, 0.98, 0.99, 1.0)


def print_curves(curves: dict[str, dict[float, dict[str, float]]], read: int) -> None:
    for name, curve in curves.items():
        print(f"\n{name}, served at other relevance quantiles (from the stored gains and grades):\n"
              f"| quantile | contains@{read} | forgetting (report probes) | own questions routed | report probes routed |"
              "\n|---|---|---|---|---|")
        for q, c in curve.items():
            print(f"| {q} | {100 * c['contains_read']:.1f} | {100 * c['forgetting']:.1f} | "
                  f"{100 * c['served_own']:.1f}% | {100 * c['served_probes']:.1f}% |")


if __name__ == "__main__":
    sys.exit(main())
