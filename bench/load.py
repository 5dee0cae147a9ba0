"""Load on a real server: many concurrent chat and text completions, streamed and not, over the base
model and several adapters; every answer checked.

Starts ``seal serve`` (embedded: SQLite and the local backend; ``--postgres-redis``: a throwaway
Postgres database and Redis as the broker), registers ``--adapters`` random adapters of the
default LoRA shape (``POST /v1/load_lora_adapter``: decoding costs what it costs for trained
ones), then sends ``--requests`` requests at once, round-robin over (chat, text) x (streamed, not)
x (base, adapters). Reports the status codes (the goal: no 5xx), malformed answers (the goal:
none), latency p50/p99 and generated tokens per second; ``--overload`` then repeats the burst
with a small admission queue, where the answers must be 200 or 503 with ``Retry-After``.

    OMP_NUM_THREADS=2 python bench/load.py --requests 64 --adapters 8 --tokens 16 --json bench/results/load.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import sys
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.load import burst, served, summary  # noqa: E402
from tests.support.service import REDIS_URL, fresh_postgres_database, postgres_admin_url  # noqa: E402

# The bench sends far more than one tenant may by default: the tenant limits are not what it measures.
NO_TENANT_LIMITS = {"SEAL_TENANT_REQUESTS_PER_MIN": "0", "SEAL_TENANT_TOKENS_PER_MIN": "0"}
SMALL_QUEUE = {"SEAL_MAX_ACTIVE_GENERATIONS": "8", "SEAL_GENERATION_QUEUE_SIZE": "8",
               "SEAL_GENERATION_QUEUE_WAIT_S": "2"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0], epilog=__doc__.split("\n", 1)[1],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--adapters", type=int, default=8)
    ap.add_argument("--tokens", type=int, default=16)
    ap.add_argument("--postgres-redis", action="store_true", help="also run with Postgres and Redis")
    ap.add_argument("--overload", action="store_true", help="also run with a small admission queue")
    ap.add_argument("--data-dir", default=str(Path.home() / ".cache" / "seal-test"))
    ap.add_argument("--json", dest="json_out", type=Path, default=None)
    args = ap.parse_args()

    results: dict[str, Any] = {"machine": f"{platform.processor() or platform.machine()}, {platform.node()}",
                               "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "requests": args.requests, "adapters": args.adapters, "tokens": args.tokens}
    modes: list[tuple[str, dict[str, str], bool]] = [("embedded", {}, False)]
    with ExitStack() as stack:
        if args.postgres_redis:
            admin = postgres_admin_url()
            if admin is None:
                sys.exit("--postgres-redis: PostgreSQL is not reachable on 127.0.0.1:5432")
            url = stack.enter_context(fresh_postgres_database(admin))
            modes.append(("postgres_redis", {"SEAL_DATABASE_URL": url, "SEAL_BROKER_URL": REDIS_URL}, False))
        if args.overload:
            modes.append(("embedded_overload", {}, True))
        for name, env, overload in modes:
            with served(args.data_dir, args.adapters, {**env, **NO_TENANT_LIMITS, **(SMALL_QUEUE if overload else {})}) \
                    as (base, key, models):
                seconds, rows = asyncio.run(burst(base, key, models, args.requests, args.tokens))
            results[name] = out = summary(seconds, rows)
            print(f"{name}: {out['statuses']} in {out['seconds']:.1f} s; 5xx {out['server_errors']}, malformed "
                  f"{out['malformed']}; p50 {out['latency_p50_s']:.1f} s, p99 {out['latency_p99_s']:.1f} s; "
                  f"{out['tokens_per_s']:.1f} tok/s", flush=True)
    if args.json_out:
        args.json_out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
