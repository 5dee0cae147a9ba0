"""Service benchmarks on the embedded default (`seal serve`: API + local worker, SQLite).

1. Latency from POST /v1/adaptations to adapter ready: median of N jobs, default model, one
   SQuAD dev passage each; ``--recipe default`` posts the documents alone (what a user gets with
   no options: the server's recipe and retention gate), ``--recipe implications`` the earlier
   figure's request (5 implications self-edits and 5 evaluation questions).
2. Chat completion throughput: 16 concurrent requests (greedy, 64 new tokens) on the base
   model vs the same 16 spread over 4 adapters, through the HTTP API.

    python bench/service.py --jobs 5 --recipe default --concurrent 16 --adapters 4
    python bench/service.py --chat-only --concurrent 16 --adapters 4   # part 2 alone, in a minute

``--chat-only`` skips the jobs (which take minutes each): the API runs without a worker and
serves random adapters of the default LoRA shape (rank 16, every linear layer), loaded
through ``POST /v1/load_lora_adapter``; decoding costs the same as for trained ones.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.load import load_adapters, write_random_adapters  # noqa: E402
from tests.support.service import Proc, bearer, free_port, seal_cli, service_env, wait_http  # noqa: E402

DEV = Path(__file__).resolve().parents[2] / "shared/data/squad/dev.json"
QUESTIONS = ["Tell me about Victoria.", "What is a glacier?", "Who founded the institute?", "Describe the river."]


def wait_job(base: str, headers: dict, job_id: str, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = httpx.get(f"{base}/v1/adaptations/{job_id}", headers=headers, timeout=30).json()
        if job["status"] in ("succeeded", "failed", "cancelled"):
            return job
        time.sleep(0.5)
    raise TimeoutError(job_id)


async def chat_burst(base: str, key: str, models: list[str], n: int, tokens: int,
                     stagger: float = 0.0) -> tuple[float, int, list[float]]:
    """n chats, request i sent i*stagger seconds after the first: (seconds, completion tokens, latencies)."""
    async with httpx.AsyncClient(base_url=base, headers=bearer(key), timeout=600) as client:
        async def one(i: int, delay: float) -> tuple[int, float]:
            await asyncio.sleep(delay)
            t0 = time.perf_counter()
            r = await client.post("/v1/chat/completions", json={
                "model": models[i % len(models)], "temperature": 0, "max_tokens": tokens,
                "messages": [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
            })
            r.raise_for_status()
            return r.json()["usage"]["completion_tokens"], time.perf_counter() - t0

        await asyncio.gather(one(0, 0.0))  # warm-up
        t = time.perf_counter()
        done = await asyncio.gather(*(one(i, i * stagger) for i in range(n)))
        return time.perf_counter() - t, sum(c for c, _ in done), [lat for _, lat in done]


def run_jobs(args: argparse.Namespace, base: str, key: str, serve: Proc, results: dict) -> list[str]:
    """Part 1: adaptation jobs; returns the adapter ids."""
    passages = json.loads(DEV.read_text())
    latencies, adapters = [], []
    for i in range(args.jobs if args.no_chat else max(args.jobs, args.adapters)):
        p = passages[i]
        t = time.perf_counter()
        body: dict = {"documents": [{"title": p["title"], "text": p["context"]}]}
        if args.recipe == "implications":
            body.update(strategy="implications", num_self_edits=args.self_edits, eval_questions=p["questions"][:5])
        r = httpx.post(f"{base}/v1/adaptations", headers=bearer(key), timeout=30, json=body)
        r.raise_for_status()
        job = wait_job(base, bearer(key), r.json()["id"], 1800)
        rejected = job["status"] == "failed" and (job.get("error") or {}).get("code") == "forgetting_exceeded"
        if job["status"] != "succeeded" and not rejected:
            raise RuntimeError(f"job failed: {job.get('error')}\n{serve.log()}")
        elapsed = time.perf_counter() - t
        if not rejected:
            adapters.append(job["adapter_id"])
        results.setdefault("job_metrics", []).append({"rejected": rejected, **{
            k: (job["metrics"] or {}).get(k) for k in ("forgetting", "timings", "forgetting_fallbacks")}})
        if i < args.jobs:
            latencies.append(elapsed)
        print(f"job {i}: {'rejected by the retention gate' if rejected else 'ready'} in {elapsed:.1f} s", flush=True)
    results["post_to_ready_s"] = latencies
    results["post_to_ready_median_s"] = statistics.median(latencies)
    print(f"POST -> adapter ready: median {statistics.median(latencies):.1f} s over {len(latencies)} jobs")
    return adapters


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=5)
    ap.add_argument("--recipe", choices=("default", "implications"), default="default")
    ap.add_argument("--self-edits", type=int, default=5, help="with --recipe implications")
    ap.add_argument("--concurrent", type=int, default=16)
    ap.add_argument("--adapters", type=int, default=4)
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--stagger", type=float, default=0.0, help="seconds between request arrivals (0: all at once)")
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache" / "seal-test"))
    ap.add_argument("--chat-only", action="store_true", help="skip the jobs; chat with random adapters")
    ap.add_argument("--no-chat", action="store_true", help="the jobs only (part 1)")
    ap.add_argument("--json", dest="json_out", default=None)
    args = ap.parse_args()

    state = Path(tempfile.mkdtemp(prefix="seal-bench-service-"))
    env = service_env(data_dir=args.data_dir, state_dir=state)
    create = ["keys", "create", "--tenant", "bench"] + (["--admin"] if args.chat_only else [])
    key = subprocess.run(seal_cli(*create), env=env, capture_output=True, text=True, check=True).stdout.strip()
    lora_paths = write_random_adapters(args.data_dir, state / "adapters" / "bench", args.adapters) if args.chat_only \
        else []
    port = free_port()
    serve = Proc(seal_cli("serve", "--port", str(port), *(["--no-worker"] if args.chat_only else [])), env,
                 state / "serve.log")
    base = f"http://127.0.0.1:{port}"
    results: dict = {"jobs": 0 if args.chat_only else args.jobs, "self_edits": args.self_edits,
                     "concurrent": args.concurrent, "tokens": args.tokens, "stagger_s": args.stagger}
    try:
        if args.chat_only:
            wait_http(base + "/healthz", 300, serve)
            adapters = load_adapters(base, key, lora_paths, "bench")
        else:
            wait_http(base + "/readyz", 300, serve)
            adapters = run_jobs(args, base, key, serve, results)
        if args.no_chat:
            return

        base_model = httpx.get(f"{base}/v1/models", headers=bearer(key)).json()["data"][0]["id"]
        for name, models in (("base", [base_model]), (f"{args.adapters}_adapters", adapters[: args.adapters])):
            secs, toks, lat = asyncio.run(chat_burst(base, key, models, args.concurrent, args.tokens, args.stagger))
            results[name] = {"seconds": secs, "completion_tokens": toks, "tokens_per_s": toks / secs,
                             "latency_median_s": statistics.median(lat), "latency_max_s": max(lat)}
            print(f"{args.concurrent} chats on {name} (stagger {args.stagger:g} s): {toks} tokens in {secs:.1f} s = "
                  f"{toks / secs:.1f} tok/s; latency median {statistics.median(lat):.1f} s, max {max(lat):.1f} s")
        results["adapters_vs_base"] = results[f"{args.adapters}_adapters"]["tokens_per_s"] / results["base"]["tokens_per_s"]
        print(f"{args.adapters} adapters / base: {results['adapters_vs_base']:.2f}x")
    finally:
        serve.stop(timeout=60)
        if args.json_out:
            Path(args.json_out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
