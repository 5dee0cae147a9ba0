"""What the retention gate costs per adapter at a few sizes (seconds on this machine).

One passage-only adapter (the default recipe, without its gate) on a dev passage, then for each
(probes, prompts, probe tokens): the base model's side (computed once per worker) and the check
of the adapter, with the forgetting it reads.

    OMP_NUM_THREADS=2 SEAL_DATA_DIR=~/.cache/seal-test python bench/gate_cost.py
"""

from __future__ import annotations

import time
from pathlib import Path

from seal_engine.config import EngineSettings
from seal_engine.core.model import get_model
from seal_engine.knowledge.adapt import adapt
from seal_engine.knowledge.benchmark import select_passages
from seal_engine.knowledge.documents import load_documents
from seal_engine.knowledge.forgetting import gate_check, gate_forgetting

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "squad" / "dev.json"
SIZES = [(32, 8, 24), (48, 8, 24), (32, 8, 32), (96, 28, 48)]


def main() -> None:
    settings = EngineSettings()
    bundle = get_model(settings)
    doc = select_passages(load_documents(DEV), 3)[2]
    result = adapt(bundle, [doc], settings, questions=[], max_forgetting=None)
    print(f"{bundle.model_id} ({bundle.dtype}); adapter: {result.timings}")
    print("| probes / prompts / tokens | probes the base answers | base side (once) s | per adapter s | forgetting |")
    for probes, prompts, tokens in SIZES:
        s = settings.model_copy(update={"forgetting_probes": probes, "forgetting_prompts": prompts,
                                        "forgetting_probe_tokens": tokens})
        t = time.perf_counter()
        check = gate_check(bundle, s)
        base_s = time.perf_counter() - t
        t = time.perf_counter()
        f = gate_forgetting(bundle, s, result.adapter)
        print(f"| {probes} / {prompts} / {tokens} | {sum(check.base_correct)} | {base_s:.1f} | "
              f"{time.perf_counter() - t:.1f} | {f.forgetting:.3f} |", flush=True)


if __name__ == "__main__":
    main()
