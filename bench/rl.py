"""ReST-EM for self-edits, end to end on one machine: train the policy, then compare on dev.

1. ``iterations`` RL iterations on the train split (seal_engine.rl.run_iteration), each
   passage's evaluation written to ``<out>/iter<i>/passages.json`` as it finishes and
   each policy to ``<out>/iter<i>/policy`` (rerunning the command resumes);
2. on ``--dev-passages`` dev passages, with the same grader and inner-loop budget:
   no adaptation, passage-only, and the self-edits of the base policy and of every
   iteration's policy (one self-edit per passage, the same seeds for every policy).

    python bench/rl.py --out bench/results/rl --iterations 2 --dev-passages 50
    python bench/rl.py --out /tmp/rl_tiny --tiny       # minutes: 2 passages, N=2, 1 iteration
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from seal_engine.documents import load_documents
from seal_engine.lora import load_adapter
from seal_engine.model import get_model
from seal_engine.rl import (
    PassageResult,
    RLConfig,
    evaluate_passage_samples,
    passages_for_iteration,
    run_iteration,
    sample_iteration,
)
from seal_engine.settings import EngineSettings, LoraSettings, SamplingSettings, SFTSettings

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "squad"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--iterations", type=int, default=2)
    ap.add_argument("--passages", type=int, default=None, help="P (default: the small preset's)")
    ap.add_argument("--samples", type=int, default=None, help="N")
    ap.add_argument("--repeats", type=int, default=None, help="R")
    ap.add_argument("--keep-margin", type=float, default=None)
    ap.add_argument("--dev-passages", type=int, default=50)
    ap.add_argument("--tiny", action="store_true", help="a smoke run: 2 passages, N=2, 1 iteration, 2 dev passages")
    args = ap.parse_args()

    over = {k: v for k, v in {"passages": args.passages, "samples": args.samples, "repeats": args.repeats,
                              "keep_margin": args.keep_margin, "iterations": args.iterations}.items() if v is not None}
    if args.tiny:
        over.update(passages=2, samples=2, iterations=1, max_questions=3, retention_probes=8,
                    lora=LoraSettings(epochs=2), sampling=SamplingSettings(max_new_tokens=48), sft=SFTSettings(epochs=2))
        args.dev_passages = 2
    config = RLConfig.small(**over)
    settings = EngineSettings()
    bundle = get_model(settings)
    pool = load_documents(DATA / "train.json")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "config.json").write_text(config.model_dump_json(indent=1))

    policies = {"base-policy": None}
    policy = None
    curve = []
    for it in range(config.iterations):
        d = args.out / f"iter{it}"
        d.mkdir(exist_ok=True)
        if (d / "metrics.json").exists():
            metrics = json.loads((d / "metrics.json").read_text())
            policy = load_adapter(d / "policy") if (d / "policy").exists() else policy
        else:
            store = d / "passages.json"
            done = {p["passage"]: PassageResult.from_dict(p) for p in json.loads(store.read_text())} if store.exists() else {}

            def save(pr: PassageResult, done=done, store=store) -> None:
                done[pr.passage] = pr
                store.write_text(json.dumps([p.to_dict() for p in done.values()], indent=1))
                print(f"  iter {it} passage {pr.passage}: rewards {[round(s.reward, 3) for s in pr.samples]} ({pr.seconds:.0f}s)")

            result = run_iteration(bundle, pool, config, settings, it, policy, done=done, on_passage=save)
            if result.policy is not None:
                result.policy.save(d / "policy")
                policy = result.policy
            metrics = result.metrics
            (d / "metrics.json").write_text(json.dumps(metrics, indent=1))
        curve.append(metrics)
        policies[f"iteration-{it + 1}"] = policy
        print(f"iteration {it}: mean reward {metrics['mean_reward']:.3f}, best-of-N {metrics['mean_best_of_n_reward']:.3f}")

    # Comparison on dev: one self-edit per passage from each policy, same seeds and budget.
    dev = load_documents(DATA / "dev.json")
    evalcfg = config.model_copy(update={"samples": 1, "repeats": 1, "passages": args.dev_passages, "fresh_passages": False})
    docs = passages_for_iteration(dev, evalcfg, 0)
    table: dict[str, list[float]] = {}
    t0 = time.perf_counter()
    for name, pol in policies.items():
        sampled = sample_iteration(bundle, docs, evalcfg, 0, pol)
        for i, (doc, (prompt, edits)) in enumerate(zip(docs, sampled)):
            pr = evaluate_passage_samples(bundle, doc, i, prompt, edits, evalcfg, settings, 0)
            if name == "base-policy":  # the baselines are the same for every policy
                table.setdefault("no-adaptation", []).append(pr.baseline_accuracy)
                table.setdefault("passage-only", []).append(pr.passage_accuracy)
            table.setdefault(name, []).append(pr.samples[0].adapted_accuracy)
    summary = {k: statistics.fmean(v) for k, v in table.items()}
    out = {"config": json.loads(config.model_dump_json()), "curve": curve, "dev_passages": len(docs),
           "dev_accuracy": summary, "dev_seconds": time.perf_counter() - t0}
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    print("\n| arm | dev accuracy (contains) |\n|---|---|")
    for k, v in summary.items():
        print(f"| {k} | {v:.3f} |")


if __name__ == "__main__":
    main()
