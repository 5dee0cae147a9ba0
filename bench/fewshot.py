"""Few-shot task adaptation: success rates of in-context learning vs test-time training.

Per task (the shared ARC filtered evaluation tasks and/or the text-task suite):

  icl      no adapter, the train examples in the prompt;
  default  test-time training with the fixed default recipe;
  base     test-time training with recipes written by the base model (N per task);
  policy   the same with recipes written by an RL-trained writer (``--policy DIR``).

ARC success = solved (every test output exact within 2 attempts); text success =
held-out exact-match accuracy. For written recipes both the mean over the N recipes
(an invalid or refused recipe counts 0) and the best of N are reported.

    python bench/fewshot.py --domain text --tasks 2 --samples 2 --max-examples 8 --out bench/results/fewshot.json
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from seal_engine.fewshot.datasets import load_task_dataset, shared_task_files  # noqa: E402
from seal_engine.fewshot.prompts import FewShotTask, domain_of  # noqa: E402
from seal_engine.fewshot.recipe_sampling import sample_recipes  # noqa: E402
from seal_engine.rl.fewshot import evaluate_task  # noqa: E402
from seal_engine.config import FewShotSettings  # noqa: E402
from seal_engine.fewshot.text_tasks import SuiteOptions, text_task_suite  # noqa: E402
from seal_engine.core.lora import load_adapter  # noqa: E402
from seal_engine.core.model import get_model  # noqa: E402
from seal_engine.config import EngineSettings  # noqa: E402

SHARED_ARC = Path(__file__).resolve().parents[2] / "shared" / "data" / "arc"


def load(args: argparse.Namespace) -> list[FewShotTask]:
    tasks: list[FewShotTask] = []
    if args.domain in ("arc", "both"):
        arc = load_task_dataset("arc", *map(str, shared_task_files(args.arc_dir, args.arc_split)))
        tasks += arc[: args.tasks] if args.tasks else arc
    if args.domain in ("text", "both"):
        names = [n for n in args.text_names.split(",") if n] if args.text_names else []
        text = text_task_suite(args.seed, SuiteOptions(names=names))
        tasks += text[: args.tasks] if args.tasks else text
    return tasks


def mean(xs: list[float]) -> float | None:
    return statistics.fmean(xs) if xs else None


def summarise(rows: list[dict], writers: list[str]) -> dict:
    out: dict = {}
    for domain in ("arc", "text"):
        mine = [r for r in rows if r["domain"] == domain]
        if not mine:
            continue
        s: dict = {"tasks": len(mine), "icl": mean([r["result"]["baseline_accuracy"] for r in mine]),
                   "default": mean([r["result"]["passage_reward"] for r in mine]),
                   "default_train_s": mean([r["default"]["train_seconds"] for r in mine if r["default"]["error"] is None]),
                   "default_errors": sorted({r["default"]["error"] for r in mine if r["default"]["error"]})}
        for w in writers:
            samples = [[x for x in r["result"]["samples"] if x["writer"] == w] for r in mine]
            flat = [x for xs in samples for x in xs]
            s[w] = {
                "mean": mean([x["reward"] for x in flat]),
                "best_of_n": mean([max(x["reward"] for x in xs) for xs in samples if xs]),
                "valid": mean([1.0 if x["error"] is None else 0.0 for x in flat]),
                "train_s": mean([x["train_seconds"] for x in flat if x["error"] is None]),
                "errors": sorted({x["error"] for x in flat if x["error"]}),
            }
        out[domain] = s
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", choices=["arc", "text", "both"], default="both")
    p.add_argument("--arc-dir", type=Path, default=SHARED_ARC)
    p.add_argument("--arc-split", choices=["evaluation", "training"], default="evaluation")
    p.add_argument("--tasks", type=int, default=0, help="first N tasks per domain (0: all)")
    p.add_argument("--text-names", default="", help="comma-separated text task names")
    p.add_argument("--samples", type=int, default=3, help="recipes per task per writer (0: icl and default only)")
    p.add_argument("--no-base", action="store_true", help="skip base-model recipes")
    p.add_argument("--policy", type=Path, help="PEFT adapter of an RL-trained recipe writer")
    p.add_argument("--max-examples", type=int, help="cap on training episodes per task")
    p.add_argument("--step-budget", type=int)
    p.add_argument("--max-epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--views", help="comma-separated ARC inference transforms")
    p.add_argument("--paraphrases", type=int, help="paraphrases per train input for the text paraphrase group")
    p.add_argument("--resume", action="store_true", help="keep the tasks already in --out (same arguments)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=Path("bench/results/fewshot.json"))
    args = p.parse_args()

    update = {k: v for k, v in {
        "max_examples": args.max_examples, "step_budget": args.step_budget, "max_epochs": args.max_epochs,
        "batch_size": args.batch_size, "seed": args.seed, "paraphrases": args.paraphrases,
        "inference_transforms": args.views.split(",") if args.views else None,
    }.items() if v is not None}
    settings = FewShotSettings(**update)
    bundle = get_model(EngineSettings())
    tasks = load(args)
    writers: list[tuple[str, object]] = []
    if args.samples and not args.no_base:
        writers.append(("base", None))
    if args.samples and args.policy:
        writers.append(("policy", load_adapter(args.policy)))
    print(f"{len(tasks)} tasks, writers {[w for w, _ in writers]}, {torch.get_num_threads()} threads", flush=True)

    t0 = time.perf_counter()
    drawn = {w: sample_recipes(bundle, tasks, args.samples, settings, seed=args.seed, policy=pol)  # type: ignore[arg-type]
             for w, pol in writers}
    sample_s = time.perf_counter() - t0
    rows: list[dict] = []
    run_args = {k: str(v) for k, v in vars(args).items() if k != "resume"}
    if args.resume and args.out.exists():
        before = json.loads(args.out.read_text())
        if before.get("args") != run_args:
            raise SystemExit(f"{args.out} was written with other arguments: {before.get('args')}")
        rows = before["tasks"]
        print(f"resuming after {len(rows)} tasks", flush=True)
    for i, task in enumerate(tasks):
        if i < len(rows):
            continue
        texts, labels = [], []
        for w, _ in writers:
            texts += [d.text for d in drawn[w][i][1]]
            labels += [w] * args.samples
        prompt = drawn[writers[0][0]][i][0] if writers else ""
        ev = evaluate_task(bundle, task, i, prompt, texts, settings, seed=args.seed)
        result = ev.result.to_dict()
        for s, w in zip(result["samples"], labels):
            s["writer"] = w
            s.pop("prompt")  # long and the same for every sample
        default = {k: v for k, v in vars(ev.default).items() if k != "prompt"}
        rows.append({"task": task.name, "domain": domain_of(task), "default": default, "result": result})
        print(f"{task.name}: icl {result['baseline_accuracy']:.2f} default {result['passage_reward']:.2f} "
              f"recipes {[round(s['reward'], 2) for s in result['samples']]} ({result['seconds']:.0f}s)", flush=True)
        report = {
            "machine": {"platform": platform.platform(), "threads": torch.get_num_threads(),
                        "dtype": str(bundle.dtype), "device": str(bundle.device)},
            "model": bundle.model_id, "settings": settings.model_dump(), "args": run_args,
            "recipe_sampling_s": sample_s, "summary": summarise(rows, [w for w, _ in writers]), "tasks": rows,
            "seconds": time.perf_counter() - t0,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(report, indent=1, default=str))
    print(json.dumps(report["summary"], indent=1))


if __name__ == "__main__":
    main()
