"""CPU micro-benchmarks behind three engine defaults (each comparison in one run).

  decode   greedy decoding, bf16 vs fp32, batch 32 and 128 (why dtype "auto" = bf16 with AMX);
  shapes   forward+backward at batch widths on and off the multiple-of-32 grid, bf16
           (why training batches are padded to multiples of 32: odd shapes JIT new kernels);
  budget   batched training of 4 adapters with micro-batch token budgets 4096/1024/512
           (why the default budget is 1024).

    python bench/cpu_kernels.py decode shapes budget
"""

from __future__ import annotations

from pathlib import Path
import time
import warnings

warnings.filterwarnings("ignore")

import torch  # noqa: E402

from seal_engine.training.batched import train_adapters_batched  # noqa: E402
from seal_engine.knowledge.documents import load_documents  # noqa: E402
from seal_engine.core.model import load_model  # noqa: E402
from seal_engine.knowledge.prompts import answer_prompt  # noqa: E402
from seal_engine.knowledge.retention import probe_set  # noqa: E402
from seal_engine.config import EngineSettings, LoraSettings  # noqa: E402


def decode() -> None:
    for dtype in ("bfloat16", "float32"):
        settings = EngineSettings(dtype=dtype)
        b = load_model(settings)
        prompts = [answer_prompt(b, p.question) for p in probe_set(b, settings)]
        for bs in (32, 128):
            enc = b.tokenizer(prompts[:bs], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                b.model.generate(**enc, max_new_tokens=4, do_sample=False, pad_token_id=b.tokenizer.pad_token_id)
                t = time.perf_counter()
                b.model.generate(**enc, max_new_tokens=32, min_new_tokens=32, do_sample=False,
                                 pad_token_id=b.tokenizer.pad_token_id)
                secs = time.perf_counter() - t
            print(f"decode {dtype:8s} batch {bs:3d}: {bs * 32 / secs:6.0f} tok/s", flush=True)


def shapes() -> None:
    b = load_model(EngineSettings(dtype="bfloat16"))
    emb = b.model.get_input_embeddings()
    # The last 100 repeats the first: the cost of an off-grid width is paid once per width.
    for width in (100, 101, 102, 96, 128, 160, 100):
        x = torch.randint(0, 1000, (8, width))
        t = time.perf_counter()
        e = emb(x).detach().requires_grad_(True)
        b.model(inputs_embeds=e).logits.float().mean().backward()
        print(f"shapes bf16 8x{width}: fwd+bwd {time.perf_counter() - t:6.2f} s", flush=True)


def budget() -> None:
    settings = EngineSettings()
    b = load_model(settings)
    doc = load_documents(Path(__file__).resolve().parents[2] / "shared/data/squad/dev.json")[0]
    sets = [[f"{doc.title}\n{doc.text}"], [f"{doc.title}\n{s}." for s in doc.text.split(". ")],
            [f"{doc.title}\n{doc.text[: len(doc.text) // 2]}", f"{doc.title}\n{doc.text[len(doc.text) // 2 :]}"],
            [f"{doc.title}\n{doc.text}", f"{doc.title}\n{doc.text.upper()}"]]
    cfg = LoraSettings(epochs=2)
    train_adapters_batched(b, sets, LoraSettings(epochs=1), seeds=[0] * 4, token_budget=1024)  # warm-up
    for tb in (4096, 1024, 512):
        t = time.perf_counter()
        train_adapters_batched(b, sets, cfg, seeds=[0] * 4, token_budget=tb)
        print(f"budget {tb:5d} tokens: 4 adapters x 2 epochs in {time.perf_counter() - t:6.1f} s", flush=True)


if __name__ == "__main__":
    import argparse

    BENCHES = {"decode": decode, "shapes": shapes, "budget": budget}
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n", 1)[1])
    ap.add_argument("bench", nargs="*", metavar="{decode,shapes,budget}", help="which to run (default: all)")
    names = ap.parse_args().bench or list(BENCHES)
    if unknown := [n for n in names if n not in BENCHES]:
        ap.error(f"unknown benchmark(s) {unknown}; choose from {list(BENCHES)}")
    for name in names:
        BENCHES[name]()
