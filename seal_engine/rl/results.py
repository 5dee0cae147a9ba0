"""What an RL iteration produces, for any task kind: samples with rewards, per unit and per iteration."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields

from seal_engine.core.lora import TrainedAdapter


@dataclass
class SampleResult:
    passage: int
    sample: int
    prompt: str
    text: str
    seeds: list[int]
    rewards: list[dict[str, float]]  # reward terms per repeat
    reward: float  # mean over repeats
    adapted_accuracy: float
    retention: float | None
    # The gold answers' log-likelihood gain over the base model (nats/token; knowledge runs), recorded
    # whichever reward the run uses.
    likelihood_gain: float | None = None


@dataclass
class RecipeSampleResult(SampleResult):
    """A SampleResult with what only recipes have."""

    error: str | None = None  # why the recipe was not executed (invalid, over budget)
    recipe: dict | None = None
    steps: int = 0
    examples: int = 0
    train_seconds: float = 0.0


@dataclass
class PassageResult:
    """One unit of an iteration: a passage (knowledge runs) or a task (few-shot runs).

    The field names are a stored format (RL run directories, the ``rl_evaluations`` rows):
    ``passage`` is the unit's index in its iteration, whatever the unit is.
    """

    passage: int
    title: str
    baseline_accuracy: float  # no adaptation
    baseline_retention: float | None
    passage_accuracy: float  # LoRA on the passage alone
    passage_reward: float
    samples: list[SampleResult] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> PassageResult:
        """Reads knowledge and task results alike (task samples carry extra fields)."""
        d = dict(d)
        samples = d.get("samples", [])
        if any("recipe" in s or "error" in s for s in samples):
            known = {f.name for f in fields(RecipeSampleResult)}
            d["samples"] = [RecipeSampleResult(**{k: v for k, v in s.items() if k in known}) for s in samples]
        else:
            d["samples"] = [SampleResult(**s) for s in samples]
        return cls(**d)


@dataclass
class IterationResult:
    iteration: int
    passages: list[PassageResult]
    kept: list[tuple[str, str]]
    policy: TrainedAdapter | None
    metrics: dict
