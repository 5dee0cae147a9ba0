"""Can an adapter tell which requests are about its documents? (a feasibility study for issue 13)

An adapter trained on a passage forgets some general knowledge (BENCHMARKS: 13% of the report probes
for the default recipe). A request that is not about the adapter's documents could be served by the
base model instead, if the adapter can tell such requests apart from its own. The signal studied
here needs nothing but the two models: the per-token NLL gain of the request's text (base NLL minus
adapter NLL, teacher-forced, no decoding). A question about the passage carries tokens the adapter
has learned (names, terms) whose NLL falls sharply; a general question has none.

Per passage (one default-inner-loop adapter: passage, all-mlp, the settings' LoRA schedule), for
the passage's own questions, other passages' questions, and both halves of the general probes +
generic prompts: the mean and the max per-token gain. A threshold per adapter is calibrated on the
*gate* half only (a quantile of its gains); the report half and the questions are never used to
choose it. Reported: the share of own questions above it (they would get the adapter) and of
report-half texts and other passages' questions above it (they would get the adapter although not
about it). Resumable: one line per passage in OUT/results.jsonl.

    OMP_NUM_THREADS=2 SEAL_DATA_DIR=~/.cache/seal-test .venv/bin/python bench/adapter_routing.py \\
        --passages 10 --out bench/results/adapter_routing
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seal_engine.config import EngineSettings  # noqa: E402
from seal_engine.core.lora import LoraAdapter  # noqa: E402
from seal_engine.core.model import ModelBundle, get_model  # noqa: E402
from seal_engine.knowledge.adapt import adapt  # noqa: E402
from seal_engine.knowledge.benchmark import select_passages  # noqa: E402
from seal_engine.knowledge.documents import load_documents  # noqa: E402
from seal_engine.knowledge.forgetting import generic_prompts, probes  # noqa: E402
from seal_engine.serving.lora_slots import serving  # noqa: E402
from seal_engine.training.sft import IGNORE, build_example, collate_sft  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev.json"
QUANTILES = (0.9, 0.95, 0.99)
FEATURES = ("mean", "max")


@torch.inference_mode()
def token_gains(bundle: ModelBundle, texts: list[str], adapter: LoraAdapter, batch: int = 16) -> list[list[float]]:
    """Per text, per token (EOS left out): base NLL - adapter NLL, both in one forward per batch."""
    examples = [build_example(bundle, "", t, 256) for t in texts]
    rows = [(slot, ex) for ex in examples for slot in (-1, 0)]  # base and adapter rows side by side
    nlls: list[list[float]] = []
    with serving(bundle, [adapter]) as lora:
        for i in range(0, len(rows), batch):
            chunk = rows[i : i + batch]
            b = collate_sft([ex for _, ex in chunk], bundle.tokenizer.pad_token_id)
            lora.route([slot for slot, _ in chunk])
            logits = bundle.model(input_ids=b["input_ids"], attention_mask=b["attention_mask"]).logits[:, :-1]
            labels = b["labels"][:, 1:]
            nll = F.cross_entropy(logits.float().reshape(-1, logits.shape[-1]), labels.reshape(-1),
                                  ignore_index=IGNORE, reduction="none").view(len(chunk), -1)
            nlls += [row[lab != IGNORE][:-1].tolist() for row, lab in zip(nll, labels)]
        lora.route(None)
    return [[b - a for b, a in zip(nlls[2 * k], nlls[2 * k + 1])] for k in range(len(texts))]


def features(gains: list[float]) -> dict[str, float]:
    return {"mean": sum(gains) / len(gains), "max": max(gains)} if gains else {"mean": 0.0, "max": 0.0}


def quantile(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * (len(xs) - 1) + 0.5))]


def summarize(rows: list[dict]) -> dict:
    out: dict = {"passages": len(rows)}
    for f in FEATURES:
        for q in QUANTILES:
            counts = {g: [0, 0] for g in ("own", "other", "report")}
            for r in rows:
                thr = quantile([x[f] for x in r["gate"]], q)
                for g in counts:
                    counts[g][0] += sum(x[f] > thr for x in r[g])
                    counts[g][1] += len(r[g])
            out[f"{f}@q{q}"] = {g: round(a / n, 4) if n else None for g, (a, n) in counts.items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEV)
    ap.add_argument("--passages", type=int, default=10)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args()
    settings = EngineSettings()
    bundle = get_model(settings)
    docs = select_passages(load_documents(args.data), args.passages)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "results.jsonl"
    rows = [json.loads(line) for line in store.read_text().splitlines()] if store.exists() else []
    done = {r["passage"] for r in rows}
    halves = {h: [p.question for p in probes(bundle, settings, h)] + generic_prompts(h) for h in ("gate", "report")}
    print(f"{bundle.model_id} {bundle.dtype} on {platform.processor() or platform.machine()}, torch "
          f"{torch.__version__}, {torch.get_num_threads()} threads; gate texts {len(halves['gate'])}, "
          f"report texts {len(halves['report'])}", flush=True)
    lora = settings.lora.model_copy(update={"target_modules": ["all-mlp"]})
    for i, doc in enumerate(docs):
        if i in done:
            continue
        t = time.perf_counter()
        adapter = adapt(bundle, [doc], settings, lora=lora, questions=[], strategy="passage", k=1).adapter
        groups = {"own": [q.question for q in doc.questions],
                  "other": [q.question for d in docs if d.title != doc.title for q in d.questions][:40], **halves}
        texts = [x for g in groups.values() for x in g]
        gains = token_gains(bundle, texts, adapter)
        row: dict = {"passage": i, "title": doc.title, "model": bundle.model_id, "dtype": str(bundle.dtype)}
        k = 0
        for g, xs in groups.items():
            row[g] = [{"text": x if g in ("own", "other") else None, **features(gains[k + j])}
                      for j, x in enumerate(xs)]
            k += len(xs)
        with store.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
        rows.append(row)
        print(f"passage {i + 1}/{len(docs)} {doc.title} ({time.perf_counter() - t:.0f} s)", flush=True)
    summary = summarize(rows)
    (args.out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
