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

On a GPU machine, where no weights can travel: sample the self-edits here with the real
model and save them, then time (b) and (c) there on randomly initialised weights of a real
architecture (throughput only: the accuracies of random weights mean nothing, and their
answers run to the token limit, so grading costs its upper bound in both ways):

    python bench/inner_loop.py --passages 2 -k 16 --save-self-edits bench/data/self_edits_k16.json --skip reference,sequential,batched
    python bench/inner_loop.py --self-edits bench/data/self_edits_k16.json --random-init llama-1b \
        --model-dir DIR_WITH_TOKENIZER --skip reference
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
from random_model import RANDOM_CONFIGS, random_bundle  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from seal_engine.training.batched import default_token_budget, train_adapters_batched  # noqa: E402
from seal_engine.knowledge.documents import Document, Question, load_documents  # noqa: E402
from seal_engine.knowledge.evaluation import score_adapters  # noqa: E402
from seal_engine.knowledge.benchmark import select_passages  # noqa: E402
from seal_engine.core.lora import peft_model, applied_adapter, lora_config  # noqa: E402
from seal_engine.training.peft import train_lora  # noqa: E402
from seal_engine.core.model import get_model  # noqa: E402
from seal_engine.core.generation import generate  # noqa: E402
from seal_engine.knowledge.prompts import answer_prompt, get_strategy  # noqa: E402
from seal_engine.knowledge.qa import grade_answers  # noqa: E402
from seal_engine.knowledge.self_edits import sample_self_edits_many, training_sequences  # noqa: E402
from seal_engine.config import EngineSettings  # noqa: E402

hf_logging.set_verbosity_error()
hf_logging.disable_progress_bar()


class _Rows(torch.utils.data.Dataset):
    def __init__(self, rows: list[dict]) -> None:
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


def save_self_edits(path: str, docs: list[Document], sampled: list[tuple[str, list[str]]]) -> None:
    rows = [{"title": d.title, "text": d.text, "questions": [q.__dict__ for q in d.questions], "self_edits": edits}
            for d, (_, edits) in zip(docs, sampled)]
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(rows, indent=1))


def load_self_edits(path: str, k: int) -> tuple[list[Document], list[list[str]]]:
    rows = json.loads(Path(path).read_text())
    docs = [Document(text=r["text"], title=r["title"], questions=tuple(Question(**q) for q in r["questions"]))
            for r in rows]
    return docs, [r["self_edits"][:k] for r in rows]


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
        model = peft_model(bundle, lora_config(cfg, bundle.model_id, bundle))
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
    if bundle.device.type == "cuda":
        torch.cuda.synchronize()
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
    ap.add_argument("--save-self-edits", default=None, help="write the sampled passages and self-edits here")
    ap.add_argument("--self-edits", default=None, help="use the passages and self-edits saved in this file")
    ap.add_argument("--random-init", choices=sorted(RANDOM_CONFIGS), default=None,
                    help="random weights of this architecture (needs --self-edits and --model-dir)")
    ap.add_argument("--model-dir", default=None, help="tokenizer (and smollm2-135m config) for --random-init")
    ap.add_argument("--token-budget", type=int, default=None, help="batched training tokens per forward")
    ap.add_argument("--warmup", action="store_true", help="one untimed evaluation per way first (GPU kernels)")
    args = ap.parse_args()

    settings = EngineSettings()
    if args.epochs:
        settings.lora.epochs = args.epochs
    if args.token_budget:
        settings.lora.token_budget = args.token_budget
    strategy = get_strategy("implications")
    if args.random_init:
        if not (args.self_edits and args.model_dir):
            ap.error("--random-init needs --self-edits and --model-dir")
        bundle = random_bundle(args.random_init, args.model_dir, settings)
    else:
        bundle = get_model(settings)
    if args.self_edits:
        docs, edit_lists = load_self_edits(args.self_edits, args.k)
        docs, edit_lists = docs[: args.passages], edit_lists[: args.passages]
    else:
        docs = select_passages(load_documents(args.data), args.passages)
        sampled = sample_self_edits_many(bundle, [(d, strategy) for d in docs], args.k, settings.sampling, seed=0)
        if args.save_self_edits:
            save_self_edits(args.save_self_edits, docs, sampled)
        edit_lists = [edits for _, edits in sampled]
    work = [(d, [training_sequences(d, strategy, [e]) for e in edits]) for d, edits in zip(docs, edit_lists)]
    if args.warmup:
        d, sets = work[0]
        if "batched" not in args.skip:
            batched_evals(bundle, sets[:2], d.questions, settings, 0)
        if "sequential" not in args.skip:
            sequential_eval(bundle, sets[0], d.questions, settings, 0)
    skip = set(args.skip.split(","))
    results: dict = {
        "machine": (torch.cuda.get_device_name() if bundle.device.type == "cuda"
                    else f"{platform.machine()} {torch.get_num_threads()} threads") + f", torch {torch.__version__}",
        "model": bundle.model_id, "parameters": sum(p.numel() for p in bundle.model.parameters()),
        "token_budget": settings.lora.token_budget or default_token_budget(bundle.device), "dtype": str(bundle.dtype), "passages": len(docs), "k": args.k,
        "lora": settings.lora.model_dump(), "ways": {},
    }

    def record(name: str, n: int, seconds: float, accs: list[float]) -> None:
        results["ways"][name] = {"evaluations": n, "seconds": seconds, "evals_per_hour": 3600 * n / seconds,
                                 "mean_contains_accuracy": sum(accs) / max(len(accs), 1)}
        print(f"{name:10s} {n:3d} evals in {seconds:8.1f} s -> {3600 * n / seconds:8.1f} evals/hour", flush=True)
        if args.json_out:  # after every way, so a run cut short keeps what it measured
            Path(args.json_out).write_text(json.dumps(results, indent=1))

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
