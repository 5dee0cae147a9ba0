"""Stand-ins for the engine's RL steps (sample an iteration, evaluate a passage, fine-tune the policy),
so that the RL tasks of workers/rl/jobs.py run in milliseconds without a model.

Every call is appended to a log file (``kind iteration passage pid``), so executions can be counted
across processes: ``python -m tests.support.fake_rl`` is a worker process that runs deliveries with
these stand-ins and can be made to hang inside one evaluation, to be SIGKILLed there.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pytest import MonkeyPatch

BLOCK_ENV = "SEAL_TEST_RL_BLOCK"  # "iteration:passage": the evaluation to hang in (the child only)


def reward_of(iteration: int, passage: int, sample: int) -> float:
    """A distinct, known reward per sample."""
    return round(0.1 * (passage + 1) + 0.01 * sample + 0.001 * iteration, 6)


class FakeRL:
    def __init__(self, log: Path, *, block: tuple[int, int] | None = None,
                 during: dict[tuple[int, int], Callable[[], None]] | None = None) -> None:
        self.log = log
        self.block = block
        self.during = during or {}

    def _note(self, kind: str, iteration: int, passage: int) -> None:
        with open(self.log, "a") as f:
            f.write(f"{kind} {iteration} {passage} {os.getpid()}\n")

    def calls(self, kind: str) -> list[tuple[int, int]]:
        """(iteration, passage) of every call of ``kind`` (sample, evaluate, evaluated, train), in order."""
        if not self.log.exists():
            return []
        rows = [line.split() for line in self.log.read_text().splitlines()]
        return [(int(r[1]), int(r[2])) for r in rows if r[0] == kind]

    # --- the engine functions ------------------------------------------------------------------
    def sample_iteration(self, _bundle: Any, docs: list, config: Any, iteration: int, _policy: Any):  # noqa: ANN201
        self._note("sample", iteration, -1)
        return [(f"prompt {p}", [f"edit {iteration}.{p}.{n}" for n in range(config.samples)])
                for p in range(len(docs))]

    def evaluate_passage_samples(self, _bundle: Any, doc: Any, passage: int, prompt: str, edits: list[str],
                                 _config: Any, _settings: Any, iteration: int, **_kw: Any):  # noqa: ANN201
        from seal_engine.rl.results import PassageResult, SampleResult

        self._note("evaluate", iteration, passage)
        if self.block == (iteration, passage):
            time.sleep(3600)  # killed here
        if hook := self.during.get((iteration, passage)):
            hook()
        samples = [SampleResult(passage=passage, sample=n, prompt=prompt, text=t, seeds=[n],
                                rewards=[{"reward": reward_of(iteration, passage, n)}],
                                reward=reward_of(iteration, passage, n), adapted_accuracy=reward_of(iteration, passage, n),
                                retention=1.0) for n, t in enumerate(edits)]
        self._note("evaluated", iteration, passage)
        return PassageResult(passage=passage, title=doc.title, baseline_accuracy=0.0, baseline_retention=1.0,
                             passage_accuracy=0.05, passage_reward=0.05, samples=samples)

    def train_policy(self, _bundle: Any, kept: list, _config: Any, _policy: Any, iteration: int):  # noqa: ANN201
        import torch
        from peft import LoraConfig

        from seal_engine.core.lora import TrainedAdapter

        self._note("train", iteration, -1)
        cfg = LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], task_type="CAUSAL_LM")
        return TrainedAdapter(cfg, {"base_model.model.m.q_proj.lora_A.weight": torch.full((2, 4), iteration + 1.0)},
                              losses=[1.0, 0.5], num_sequences=len(kept))

    def install(self, monkeypatch: MonkeyPatch) -> FakeRL:
        import seal_engine.rl.loop as loop

        for name in ("sample_iteration", "evaluate_passage_samples", "train_policy"):
            monkeypatch.setattr(loop, name, getattr(self, name))
        return self


def no_model(_settings: Any) -> object:
    return object()  # the stand-ins never look at the model


def main() -> None:
    """A worker process: ``python -m tests.support.fake_rl LOG DELIVERIES_JSON`` (settings from SEAL_*)."""
    from seal_service.settings import Settings
    from workers.rl import jobs as rl_jobs

    log, deliveries = Path(sys.argv[1]), json.loads(sys.argv[2])
    block = tuple(int(x) for x in os.environ[BLOCK_ENV].split(":")) if os.environ.get(BLOCK_ENV) else None
    FakeRL(log, block=block).install(MonkeyPatch())  # type: ignore[arg-type]
    settings = Settings()
    for kind, args in deliveries:
        fn = rl_jobs.step if kind == "step" else rl_jobs.evaluate
        got = fn(settings, *args, lambda k, a: print("sent", k, a, flush=True), bundle_fn=no_model)
        print("delivered", kind, args, got, flush=True)


if __name__ == "__main__":
    main()
