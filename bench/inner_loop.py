"""Self-edit evaluations per hour: the SEAL reference procedure vs a sequential loop vs ours.

One *evaluation* = train a fresh LoRA on one self-edit's training sequences, then
answer (greedy, closed-book) and grade the passage's questions. Self-edits are
sampled once up front and shared by all three ways, so only the inner loop is timed.

  (a) reference: the SEAL TTT server's procedure re-created: HF ``Trainer`` with its
      defaults (AdamW, linear decay), batch size 1, every sequence padded to 2048
      tokens, one adapter at a time, then that adapter answers its questions;
  (b) sequential: PEFT, one adapter at a time, dynamic padding, batch 8, then its
      questions in one batch;
  (c) ours: the K self-edits of a passage trained together (batched multi-LoRA) and
      every adapter's questions answered in one mixed-adapter batch.

Same model, dtype, LoRA rank/alpha, learning rate, epochs and grader in all three.

    python bench/inner_loop.py --passages 2 -k 5 --epochs 10 --reference-evals 2
"""

from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import torch  # noqa: E402
from transformers import Trainer, TrainingArguments  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from seal_engine.batched_training import train_adapters_batched  # noqa: E402
from seal_engine.documents import load_documents  # noqa: E402
from seal_engine.evaluation import score_adapters  # noqa: E402
from seal_engine.knowledge_eval import select_passages  # noqa: E402
from seal_engine.lora import _wrap, applied_adapter, lora_config, train_lora  # noqa: E402
from seal_engine.model import get_model  # noqa: E402
from seal_engine.generation import generate  # noqa: E402
from seal_engine.prompts import answer_prompt, get_strategy  # noqa: E402
from seal_engine.qa import grade_answers  # noqa: E402
from seal_engine.self_edits import sample_self_edits_many, training_sequences  # noqa: E402
from seal_engine.settings import EngineSettings  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def reference_eval(bundle, seqs, questions, settings, seed: int) -> float:
    """(a): the reference inner loop for one self-edit; returns contains-accuracy."""
    tok = bundle.tokenizer
    rows = []
    for s in seqs:
        enc = tok(s, truncation=True, max_length=2048, padding="max_length")
        # As in the reference: labels are a copy of input_ids (padding not masked).
        rows.append({"input_ids": torch.tensor(enc["input_ids"]), "attention_mask": torch.tensor(enc["attention_mask"]),
                     "labels": torch.tensor(enc["input_ids"])})
    cfg = settings.lora
    with bundle.lock:
        torch.manual_seed(seed)
        model = _wrap(bundle, lora_config(cfg, bundle.model_id))
        try:
            args = TrainingArguments(
                output_dir="/tmp/seal-bench-ref", per_device_train_batch_size=1, num_train_epochs=cfg.epochs,
                learning_rate=cfg.learning_rate, logging_steps=1, save_strategy="no", report_to="none",
                remove_unused_columns=False, seed=seed, disable_tqdm=True, use_cpu=not torch.cuda.is_available(),
            )
            Trainer(model=model, args=args, train_dataset=_Rows(rows)).train()
            model.eval()
            return _grade_with(bundle, model, questions, settings)
        finally:
            model.unload()


def _grade_with(bundle, model, questions, settings) -> float:
    """One adapter (a PEFT-wrapped model) answers its passage's questions in one batch."""
    prompts = [answer_prompt(bundle, q.question) for q in questions]
    answers = generate(bundle, prompts, max_new_tokens=settings.answer_max_new_tokens, model=model,
                       batch_size=len(prompts))
    return grade_answers(questions, answers).accuracy["contains"]


def sequential_eval(bundle, seqs, questions, settings, seed: int) -> float:
    """(b): PEFT, dynamic padding, one adapter, then its questions in one batch."""
    adapter = train_lora(bundle, seqs, settings.lora, seed=seed)
    with applied_adapter(bundle, adapter) as model:
        return _grade_with(bundle, model, questions, settings)


def batched_evals(bundle, sets, questions, settings, seed: int) -> list[float]:
    """(c): all K candidates trained together, graded in one mixed-adapter batch."""
    adapters = train_adapters_batched(bundle, sets, settings.lora, seeds=[seed] * len(sets))
    scores = score_adapters(bundle, questions, adapters, settings, with_retention=False)
    return [s.qa.accuracy["contains"] for s in scores]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(Path(__file__).resolve().parents[2] / "shared/data/squad/dev.json"))
    ap.add_argument("--passages", type=int, default=2)
    ap.add_argument("-k", type=int, default=5, help="self-edits per passage")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--reference-evals", type=int, default=2, help="self-edits timed with the (slow) reference")
    ap.add_argument("--skip", default="", help="comma list of ways to skip: reference,sequential,batched")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    settings = EngineSettings()
    if args.epochs:
        settings.lora.epochs = args.epochs
    bundle = get_model(settings)
    docs = select_passages(load_documents(args.data), args.passages)
    strategy = get_strategy("implications")
    sampled = sample_self_edits_many(bundle, [(d, strategy) for d in docs], args.k, settings.sampling, seed=0)
    work = [(d, [training_sequences(d, strategy, [e]) for e in edits]) for d, (_, edits) in zip(docs, sampled)]
    skip = set(args.skip.split(","))
    results: dict = {
        "machine": f"{platform.machine()} {torch.get_num_threads()} threads, torch {torch.__version__}",
        "model": bundle.model_id, "dtype": str(bundle.dtype), "passages": len(docs), "k": args.k,
        "lora": settings.lora.model_dump(), "ways": {},
    }

    def record(name: str, n: int, seconds: float, accs: list[float]) -> None:
        results["ways"][name] = {"evaluations": n, "seconds": seconds, "evals_per_hour": 3600 * n / seconds,
                                 "mean_contains_accuracy": sum(accs) / max(len(accs), 1)}
        print(f"{name:10s} {n:3d} evals in {seconds:8.1f} s -> {3600 * n / seconds:8.1f} evals/hour", flush=True)

    if "batched" not in skip:
        t = time.perf_counter()
        accs = [a for d, sets in work for a in batched_evals(bundle, sets, d.questions, settings, 0)]
        record("batched", len(accs), time.perf_counter() - t, accs)
    if "sequential" not in skip:
        t = time.perf_counter()
        accs = [sequential_eval(bundle, s, d.questions, settings, 0) for d, sets in work for s in sets]
        record("sequential", len(accs), time.perf_counter() - t, accs)
    if "reference" not in skip:
        todo = [(d, s) for d, sets in work for s in sets][: args.reference_evals]
        t = time.perf_counter()
        accs = [reference_eval(bundle, s, d.questions, settings, 0) for d, s in todo]
        record("reference", len(accs), time.perf_counter() - t, accs)
    ways = results["ways"]
    if "batched" in ways:
        for other in ("sequential", "reference"):
            if other in ways:
                ratio = ways["batched"]["evals_per_hour"] / ways[other]["evals_per_hour"]
                results[f"batched_vs_{other}"] = ratio
                print(f"batched / {other}: {ratio:.2f}x")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
