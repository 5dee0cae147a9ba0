"""ReST-EM for self-edits, end to end on one machine: train the policy, then compare on dev.

1. ``--iterations`` RL iterations on the train split (seal_engine.rl.local.run_rl): each
   passage's evaluation is written to ``<out>/iter<i>/passages.json`` as it finishes and
   each policy to ``<out>/iter<i>/policy``;
2. on ``--dev-passages`` dev passages, with the same grader and inner-loop budget:
   no adaptation, passage-only, and one self-edit per passage from the base policy and
   from every iteration's policy (same sampling seed), written per passage to
   ``<out>/compare.json``.

Rerunning the same command resumes both parts.

    python bench/rl.py --out bench/results/rl --iterations 2 --dev-passages 50
    python bench/rl.py --out /tmp/rl_tiny --tiny       # minutes: 2 passages, N=2, 1 iteration
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from seal_engine.knowledge.documents import load_documents
from seal_engine.core.model import get_model
from seal_engine.rl.config import RLConfig
from seal_engine.rl.local import compare_policies, dev_passages, run_rl
from seal_engine.config import EngineSettings, LoraSettings, SamplingSettings, SFTSettings

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
    curve, policies = run_rl(bundle, load_documents(DATA / "train.json"), config, settings, args.out, log=print)
    docs = dev_passages(load_documents(DATA / "dev.json"), config, args.dev_passages)
    dev = compare_policies(bundle, docs, policies, config, settings, json_out=args.out / "compare.json", log=print)
    out = {"config": json.loads(config.model_dump_json()), "curve": curve, "dev": {k: v for k, v in dev.items() if k != "rows"}}
    (args.out / "results.json").write_text(json.dumps(out, indent=1))
    print(f"\n{dev['passages']} dev passages, grader {dev['grader']}, {dev['seconds_per_passage']:.0f} s/passage")
    print("| arm | exact match | F1 | contains | reward | retention |\n|---|---|---|---|---|---|")
    for arm, s in dev["summary"].items():
        reward = f"{s['reward']:.3f}" if "reward" in s else "-"
        print(f"| {arm} | {s['exact_match']:.1%} | {s['f1']:.1%} | {s['contains']:.1%} | {reward} | {s['retention']:.1%} |")


if __name__ == "__main__":
    main()
