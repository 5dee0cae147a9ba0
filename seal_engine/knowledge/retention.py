"""Retention: how much general knowledge an adapter keeps.

A curated list of common facts (``data/probes_raw.json``) is filtered, once per base
model, to the questions that model answers correctly; retention is an adapter's
accuracy on those. The filtered set for the default model ships with the project;
for any other model it is built on first use and cached under ``data_dir``.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from seal_engine.config import DEFAULT_MODEL_ID, EngineSettings
from seal_engine.core.grading import grade_offline
from seal_engine.core.lora import LoraAdapter
from seal_engine.core.model import ModelBundle
from seal_engine.knowledge.documents import Question
from seal_engine.knowledge.qa import answer_questions

PROBE_GRADER = "contains"


def raw_probes() -> list[Question]:
    data = json.loads(resources.files("seal_engine.data").joinpath("probes_raw.json").read_text())
    return [Question(d["question"], d["answer"]) for d in data]


def _shipped_path(model_id: str) -> Path:
    return Path(str(resources.files("seal_engine.data"))) / f"probes_{model_id}.json"


def build_probe_set(bundle: ModelBundle, settings: EngineSettings) -> list[Question]:
    """The raw probes that ``bundle``'s base model answers correctly."""
    probes = raw_probes()
    preds = answer_questions(bundle, [p.question for p in probes], settings)
    return [p for p, a in zip(probes, preds) if grade_offline(a, p.answer)[PROBE_GRADER] == 1.0]


def save_probe_set(probes: list[Question], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([{"question": p.question, "answer": p.answer} for p in probes], indent=1))


def probe_set(bundle: ModelBundle, settings: EngineSettings) -> list[Question]:
    """The filtered probe set for this model, built and cached on first use."""
    shipped = _shipped_path(bundle.model_id)
    cached = settings.data_dir / "probes" / f"probes_{bundle.model_id}.json"
    for path in (shipped, cached) if bundle.model_id == DEFAULT_MODEL_ID else (cached,):
        if path.exists():
            return [Question(d["question"], d["answer"]) for d in json.loads(path.read_text())]
    probes = build_probe_set(bundle, settings)
    save_probe_set(probes, cached)
    return probes


def retention_subset(bundle: ModelBundle, settings: EngineSettings) -> list[Question]:
    probes = probe_set(bundle, settings)
    n = settings.retention_probes
    return probes[:n] if n else probes


def retention(bundle: ModelBundle, settings: EngineSettings, adapter: LoraAdapter | None) -> float:
    """Accuracy on the probe subset (``contains`` grader), with ``adapter`` applied."""
    probes = retention_subset(bundle, settings)
    if not probes:
        return 1.0
    preds = answer_questions(bundle, [p.question for p in probes], settings, adapter)
    return probe_accuracy(preds, probes)


def probe_accuracy(predictions: list[str], probes: list[Question]) -> float:
    if not probes:
        return 1.0
    return sum(grade_offline(a, p.answer)[PROBE_GRADER] for a, p in zip(predictions, probes)) / len(probes)


_baselines: dict[tuple, float] = {}


def baseline_retention(bundle: ModelBundle, settings: EngineSettings) -> float:
    """Retention of the base model itself on the same subset (computed once per process)."""
    key = (bundle.model_id, id(bundle), settings.retention_probes, settings.answer_max_new_tokens)
    if key not in _baselines:
        _baselines[key] = retention(bundle, settings, None)
    return _baselines[key]
