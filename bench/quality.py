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

Every recipe's adapters for a passage are evaluated together in shared decode batches.
Rows go to ``OUT/results.jsonl`` as they finish (a rerun with the same arguments resumes);
the table (mean +- standard error over passages, and which recipes are Pareto-optimal)
to ``OUT/summary.json`` and stdout.

    OMP_NUM_THREADS=2 python bench/quality.py --passages 50 --recipes passage,default --out bench/results/quality
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import warnings
from pathlib import Path
from typing import Any

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from seal_engine.config import EngineSettings  # noqa: E402
from seal_engine.core.grading import grade_offline  # noqa: E402
from seal_engine.core.model import get_model  # noqa: E402
from seal_engine.knowledge.adapt import adapt  # noqa: E402
from seal_engine.knowledge.benchmark import select_passages  # noqa: E402
from seal_engine.knowledge.documents import load_documents  # noqa: E402
from seal_engine.knowledge.forgetting import forgetting_check, measure_forgetting  # noqa: E402
from seal_engine.knowledge.qa import chat_answers  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DEV = ROOT.parent / "shared" / "data" / "squad" / "dev.json"

# name -> keyword arguments of seal_engine.knowledge.adapt.adapt (lora: overrides of SEAL_LORA__*).
RECIPES: dict[str, dict[str, Any]] = {
    # What the service and the benchmarks did before this benchmark existed.
    "passage": {"strategy": "passage", "k": 1},
    "implications-k5": {"strategy": "implications", "k": 5},
    # The same data presented as chat turns (loss on the replies), and with self-distillation replay.
    "passage-chat": {"strategy": "passage", "k": 1, "training_format": "chat"},
    "passage-chat-replay": {"strategy": "passage", "k": 1, "training_format": "chat", "replay": 32},
    "selfqa-chat": {"strategy": "self-qa", "k": 1, "training_format": "chat"},
    "selfqa-chat-replay": {"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32},
    # Knobs on the chat form of the passage (no sampling: seconds per document stay small).
    "passage-chat-e3": {"strategy": "passage", "k": 1, "training_format": "chat", "lora": {"epochs": 3}},
    "passage-chat-lr3e-4": {"strategy": "passage", "k": 1, "training_format": "chat", "lora": {"learning_rate": 3e-4}},
    "passage-chat-r4": {"strategy": "passage", "k": 1, "training_format": "chat", "lora": {"rank": 4, "alpha": 8}},
    "passage-chat-replay8": {"strategy": "passage", "k": 1, "training_format": "chat", "replay": 8},
    "selfqa-chat-replay-lr3e-4": {"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32,
                                  "lora": {"learning_rate": 3e-4}},
    "selfqa-chat-replay-e5": {"strategy": "self-qa", "k": 1, "training_format": "chat", "replay": 32,
                              "lora": {"epochs": 5}},
}


def _mean_se(xs: list[float]) -> tuple[float, float]:
    if not xs:
        return float("nan"), float("nan")
    m = statistics.fmean(xs)
    se = statistics.stdev(xs) / len(xs) ** 0.5 if len(xs) > 1 else float("nan")
    return m, se


def _first_tokens(bundle: Any, text: str, n: int) -> str:
    ids = bundle.tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    return bundle.tokenizer.decode(ids, skip_special_tokens=True)


def _grade(bundle: Any, answers: list[str], golds: list[str], short: int) -> dict[str, float]:
    out: dict[str, float] = {}
    for tag, texts in (("read", answers), ("short", [_first_tokens(bundle, a, short) for a in answers])):
        grades = [grade_offline(a, g) for a, g in zip(texts, golds)]
        for grader in ("contains", "f1"):
            out[f"{grader}_{tag}"] = statistics.fmean(g[grader] for g in grades) if grades else 0.0
    return out


def run_passage(bundle: Any, settings: EngineSettings, doc: Any, recipes: list[str], args: argparse.Namespace,
                check: Any) -> list[dict]:
    adapters, rows = [], []
    for name in recipes:
        spec = dict(RECIPES[name])
        lora = settings.lora.model_copy(update=spec.pop("lora", {}))
        t = time.perf_counter()
        result = adapt(bundle, [doc], settings, lora=lora, questions=[], seed=args.seed, **spec)
        seconds = time.perf_counter() - t
        adapters.append(result.adapter)
        rows.append({"recipe": name, "title": doc.title, "seconds": seconds, "timings": result.timings,
                     "train_steps": len(result.adapter.losses), "examples": result.adapter.num_sequences})
    questions = [q.question for q in doc.questions]
    golds = [q.answer for q in doc.questions]
    subjects = [None, *adapters]
    answers = chat_answers(bundle, questions * len(subjects), [a for a in subjects for _ in questions],
                           max_tokens=args.read_tokens)
    per = [answers[i * len(questions) : (i + 1) * len(questions)] for i in range(len(subjects))]
    base = _grade(bundle, per[0], golds, args.short_tokens)
    forgot = measure_forgetting(bundle, check, adapters)
    for row, mine, f in zip(rows, per[1:], forgot):
        row.update(_grade(bundle, mine, golds, args.short_tokens))
        row.update({f"base_{k}": v for k, v in base.items()})
        row.update(f.to_dict())
        row["answers"] = mine
    return rows


def summarize(rows: list[dict], recipes: list[str]) -> dict[str, dict]:
    table: dict[str, dict] = {}
    for name in recipes:
        mine = [r for r in rows if r["recipe"] == name]
        if not mine:
            continue
        entry: dict[str, Any] = {"passages": len(mine)}
        for key in ("contains_read", "f1_read", "contains_short", "f1_short", "base_contains_read", "forgetting",
                    "drift_nll", "seconds"):
            vals = [r[key] for r in mine if r.get(key) is not None]
            entry[key], entry[key + "_se"] = _mean_se(vals)
        entry["seconds_median"] = statistics.median(r["seconds"] for r in mine)
        table[name] = entry
    # Pareto: no other recipe is at least as good on accuracy, forgetting and seconds, and better on one.
    for name, e in table.items():
        dominated = any(
            o["contains_read"] >= e["contains_read"] and o["forgetting"] <= e["forgetting"]
            and o["seconds_median"] <= e["seconds_median"]
            and (o["contains_read"], -o["forgetting"], -o["seconds_median"])
            != (e["contains_read"], -e["forgetting"], -e["seconds_median"])
            for other, o in table.items() if other != name
        )
        e["pareto"] = not dominated
    return table


def print_table(table: dict[str, dict], short: int, read: int) -> None:
    print(f"\n| recipe | n | contains@{read} | F1@{read} | contains@{short} | forgetting (report probes) "
          "| drift (nats/tok) | s/doc (median) | Pareto |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, e in table.items():
        print(f"| {name} | {e['passages']} | {100 * e['contains_read']:.1f} +- {100 * e['contains_read_se']:.1f} "
              f"| {100 * e['f1_read']:.1f} +- {100 * e['f1_read_se']:.1f} "
              f"| {100 * e['contains_short']:.1f} +- {100 * e['contains_short_se']:.1f} "
              f"| {100 * e['forgetting']:.1f} +- {100 * e['forgetting_se']:.1f} "
              f"| {e['drift_nll']:.3f} +- {e['drift_nll_se']:.3f} | {e['seconds_median']:.1f} "
              f"| {'yes' if e['pareto'] else ''} |")
    any_row = next(iter(table.values()), None)
    if any_row:
        print(f"\nno adaptation: contains@{read} {100 * any_row['base_contains_read']:.1f}%")


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
        print_table(summarize(rows, recipes), args.short_tokens, args.read_tokens)
        return
    settings = EngineSettings()
    bundle = get_model(settings)
    docs = select_passages(load_documents(args.data), args.passages)
    args.out.mkdir(parents=True, exist_ok=True)
    identity = {k: getattr(args, k) for k in ("read_tokens", "short_tokens", "probe_tokens", "probes", "seed")}
    identity.update(model=bundle.model_id, dtype=str(bundle.dtype),
                    lora=settings.lora.model_dump(exclude=set(settings.lora.EXECUTION_ONLY)))
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    rows = [r for r in rows if r.get("identity") == identity]
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
        new = run_passage(bundle, settings, doc, todo, args, check)
        with store.open("a") as fh:
            for row in new:
                row.update(passage=i, identity=identity)
                fh.write(json.dumps(row) + "\n")
        rows.extend(new)
        print(f"passage {i + 1}/{len(docs)} ({time.perf_counter() - t:.0f} s): " + "  ".join(
            f"{r['recipe']} {100 * r['contains_read']:.0f}%/{100 * r['forgetting']:.0f}%/{r['seconds']:.0f}s"
            for r in new), flush=True)
    table = summarize(rows, recipes)
    (args.out / "summary.json").write_text(json.dumps({"identity": identity, "table": table}, indent=1))
    print_table(table, args.short_tokens, args.read_tokens)


if __name__ == "__main__":
    sys.exit(main())
