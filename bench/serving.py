"""Serving throughput: base model vs many adapters in one batch vs adapter swapping.

32 concurrent requests of 64 new tokens (greedy), three ways, in one process:
  (i)   base model alone, one batch;
  (ii)  32 distinct adapters, one mixed batch (our multi-LoRA path; ``--adapters K``: the
        requests spread round-robin over K adapters);
  (iii) plain PEFT, adapter swapping: load request i's adapter from disk, generate, unload.
Then the memory cost of 100 registered adapters held in the adapter LRU.
(i) and (ii) go through ``seal_engine.serving.completions.complete``, as the service does.

    python bench/serving.py --requests 32 --tokens 64 --registered 100
    python bench/serving.py --requests 16 --adapters 4 --skip-swapping --registered 0
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import json
import os
import tempfile
import time
import warnings
from pathlib import Path

warnings.filterwarnings("ignore")

import psutil  # noqa: E402
import torch  # noqa: E402
from peft import PeftModel  # noqa: E402
from random_model import RANDOM_CONFIGS, random_bundle  # noqa: E402
from transformers.utils import logging as hf_logging  # noqa: E402

from seal_engine.training.batched import peft_initial_state  # noqa: E402
from seal_engine.core.lora import LoraAdapter, lora_config  # noqa: E402
from seal_engine.core.model import get_model  # noqa: E402
from seal_engine.serving.completions import AdapterCache, CompletionRequest, chat_prompt, complete  # noqa: E402
from seal_engine.config import EngineSettings  # noqa: E402

hf_logging.set_verbosity_error()
QUESTIONS = [
    "Tell me about the history of the printing press.", "Why is the sky blue?", "Describe a rainforest.",
    "What do bees do in winter?", "Explain how a bicycle works.", "Write about the ocean at night.",
    "What is a good breakfast?", "How do volcanoes form?",
]


def make_adapters(bundle, settings, n: int, directory: Path) -> list[Path]:
    """n distinct rank-r adapters (PEFT init with a random B so each one changes the model)."""
    cfg = settings.lora
    config = lora_config(cfg, bundle.model_id, bundle)
    base_state = peft_initial_state(bundle, cfg, 0)
    paths = []
    for i in range(n):
        g = torch.Generator().manual_seed(i)
        state = {k: (torch.randn(v.shape, generator=g) * (0.02 if "lora_B" in k else 0.05)) for k, v in base_state.items()}
        paths.append(LoraAdapter(config, state).save(directory / f"adapter{i}"))
    return paths


def rss_mb() -> float:
    return psutil.Process(os.getpid()).memory_info().rss / 2**20


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=32)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=None, help="distinct adapters in (ii) (default: one per request)")
    ap.add_argument("--skip-swapping", action="store_true", help="skip (iii)")
    ap.add_argument("--registered", type=int, default=100)
    ap.add_argument("--json", dest="json_out", default=None)
    ap.add_argument("--random-init", choices=sorted(RANDOM_CONFIGS), default=None,
                    help="random weights of this architecture (GPU machines; needs --model-dir)")
    ap.add_argument("--model-dir", default=None, help="tokenizer (and smollm2-135m config) for --random-init")
    args = ap.parse_args()

    settings = EngineSettings()
    if args.random_init and not args.model_dir:
        ap.error("--random-init needs --model-dir")
    bundle = random_bundle(args.random_init, args.model_dir, settings) if args.random_init else get_model(settings)
    prompts = [chat_prompt(bundle, [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]) for i in range(args.requests)]
    tmp = Path(tempfile.mkdtemp(prefix="seal-bench-"))
    paths = make_adapters(bundle, settings, max(args.requests, args.registered), tmp)
    k = args.adapters or args.requests
    cache = AdapterCache(max_items=max(args.registered, k))  # one object per adapter: rows share it
    adapters = [cache.get(paths[i % k]) for i in range(args.requests)]
    results: dict = {"model": bundle.model_id, "dtype": str(bundle.dtype), "threads": torch.get_num_threads(),
                     "device": torch.cuda.get_device_name() if bundle.device.type == "cuda" else "cpu",
                     "requests": args.requests, "adapters": k, "max_tokens": args.tokens, "rank": settings.lora.rank}

    def run(name: str, reqs: list[CompletionRequest]) -> None:
        # Warm-up at the timed batch's shapes (kernel selection, allocator), a few tokens each.
        complete(bundle, [dataclasses.replace(r, max_tokens=4) for r in reqs])
        t = time.perf_counter()
        outs = complete(bundle, reqs)
        secs = time.perf_counter() - t
        toks = sum(c.completion_tokens for o in outs for c in o)
        results[name] = {"seconds": secs, "tokens": toks, "tokens_per_s": toks / secs}
        print(f"{name:22s} {toks:5d} tokens {secs:7.1f} s {toks / secs:8.1f} tok/s", flush=True)

    greedy = dict(max_tokens=args.tokens, temperature=0.0)
    run("base", [CompletionRequest(p, **greedy) for p in prompts])
    run("multi_adapter_batched", [CompletionRequest(p, adapter=a, **greedy) for p, a in zip(prompts, adapters)])

    results["batched_vs_base"] = results["multi_adapter_batched"]["tokens_per_s"] / results["base"]["tokens_per_s"]
    print(f"multi-adapter / base: {results['batched_vs_base']:.2f}x")
    if not args.skip_swapping:
        swapping(args, bundle, prompts, paths, results)
    if args.registered:
        registered(args, paths, results)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps(results, indent=1))


def swapping(args: argparse.Namespace, bundle, prompts: list[str], paths: list[Path], results: dict) -> None:
    """(iii) adapter swapping with plain PEFT, one request at a time."""
    tok = bundle.tokenizer
    t = time.perf_counter()
    toks = 0
    with bundle.lock, torch.inference_mode():
        for p, path in zip(prompts, paths):
            model = PeftModel.from_pretrained(bundle.model, str(path))
            enc = tok([p], return_tensors="pt", add_special_tokens=False).to(bundle.device)
            out = model.generate(**enc, max_new_tokens=args.tokens, do_sample=False, pad_token_id=tok.pad_token_id)
            toks += out.shape[1] - enc["input_ids"].shape[1]
            model.unload()
    secs = time.perf_counter() - t
    results["peft_swapping"] = {"seconds": secs, "tokens": toks, "tokens_per_s": toks / secs}
    print(f"{'peft_swapping':22s} {toks:5d} tokens {secs:7.1f} s {toks / secs:8.1f} tok/s", flush=True)

    results["batched_vs_swapping"] = results["multi_adapter_batched"]["tokens_per_s"] / results["peft_swapping"]["tokens_per_s"]
    print(f"multi-adapter / swapping: {results['batched_vs_swapping']:.1f}x")


def registered(args: argparse.Namespace, paths: list[Path], results: dict) -> None:
    """Memory: ``--registered`` adapters resident in the LRU."""
    gc.collect()
    before = rss_mb()
    big = AdapterCache(max_items=args.registered)
    for p in paths[: args.registered]:
        big.get(p)
    after = rss_mb()
    results["registered_adapters"] = {"count": len(big), "adapter_mb_each": big.num_bytes / len(big) / 2**20,
                                      "adapters_mb_total": big.num_bytes / 2**20, "rss_before_mb": before,
                                      "rss_after_mb": after, "peak_rss_mb": psutil.Process().memory_info().rss / 2**20}
    print(f"{len(big)} adapters resident: {big.num_bytes / 2**20:.0f} MiB of tensors, RSS {before:.0f} -> {after:.0f} MiB")


if __name__ == "__main__":
    main()
