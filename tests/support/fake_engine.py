"""A stand-in for the engine's adapt/save/model functions, so that job state machines run in ms."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

from workers.adaptation.run import run_adaptation

DOCS = [{"title": "Zorblax", "text": "The Zorblax Institute was founded by Marguerite Okonkwo."},
        {"title": "Quill", "text": "Quill Lake is 40 metres deep."}]


class FakeResult:
    def __init__(self, strategy: str, k: int, n_docs: int) -> None:
        self.strategy = strategy
        self.prompts = [f"prompt {d}" for d in range(n_docs)]
        self.self_edits = [f"edit {d}.{i}" for d in range(n_docs) for i in range(k)]
        self.sequences = list(self.self_edits)
        self.adapter = SimpleNamespace(config=None)

    def metrics(self) -> dict:
        return {"train_loss_last": 0.1, "adapted_accuracy": {"contains": 1.0},
                "reward": {"adapted_accuracy": 1.0, "retention": 0.9, "baseline_retention": 1.0, "reward": 0.9}}


class FakeEngine:
    """adapt/save/bundle stand-ins; ``during`` runs inside adapt, between progress reports."""

    def __init__(self, settings, during=None, fail: BaseException | None = None, forgetting: float = 0.0) -> None:
        self.settings = settings
        self.during = during
        self.fail = fail
        self.forgetting = forgetting  # what the "trained adapter" forgets, checked against max_forgetting
        self.calls = 0
        self.extra: dict = {}  # the recipe keywords of the last call

    def bundle(self, _settings):
        return SimpleNamespace(model_id=self.settings.model_id)

    def adapt(self, bundle, docs, settings, *, strategy, template, k, lora, questions, seed, progress,
              training_format="text", replay=0, anchors=0, anchor_weight=1.0, scale=1.0, fallback_scales=(),
              measure_forgetting=False, max_forgetting=None, relevance_quantile=None):
        # The recipe keywords of the real adapt (no ``policy``: this engine cannot apply one).
        self.calls += 1
        self.extra = {"training_format": training_format, "replay": replay, "anchors": anchors,
                      "anchor_weight": anchor_weight, "scale": scale, "fallback_scales": list(fallback_scales),
                      "measure_forgetting": measure_forgetting,
                      "max_forgetting": max_forgetting, "relevance_quantile": relevance_quantile}
        extra = self.extra
        progress("self_edits", 0, len(docs))
        progress("self_edits", len(docs), len(docs))
        if self.during:
            self.during()
        for step in range(1, 4):
            progress("training", step, 3)
        if self.fail:
            raise self.fail
        if extra.get("measure_forgetting"):
            from seal_engine.knowledge.forgetting import Forgetting, enforce

            progress("forgetting", 1, 1)
            enforce(Forgetting(1.0 - self.forgetting, 48, 0.1), extra.get("max_forgetting"))
        return FakeResult(strategy, k, len(docs))

    @staticmethod
    def save(result, directory: Path) -> Path:
        directory.mkdir(parents=True)
        (directory / "adapter_config.json").write_text(json.dumps({"r": 4, "peft_type": "LORA"}))
        (directory / "adapter_model.safetensors").write_bytes(b"\0" * 16)
        (directory / "seal_record.json").write_text(json.dumps({
            "strategy": result.strategy, "prompts": result.prompts, "self_edits": result.self_edits,
            "metrics": result.metrics(), "lora": {"rank": 4}}))
        return directory

    def run(self, job_id: str, **kw) -> str:
        return run_adaptation(self.settings, job_id, adapt_fn=self.adapt, bundle_fn=self.bundle,
                              save_fn=self.save, **kw)
