"""The self-edit reward: learning the document without forgetting what the model knew."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Reward:
    adapted_accuracy: float
    retention: float
    baseline_retention: float
    retention_lambda: float
    # The learning term when the reward is the gold answers' log-likelihood gain (nats per token,
    # seal_engine.knowledge.likelihood) instead of the graded accuracy; None: graded.
    gain: float | None = None

    @property
    def forgetting(self) -> float:
        return max(0.0, self.baseline_retention - self.retention)

    @property
    def penalty(self) -> float:
        return self.retention_lambda * self.forgetting

    @property
    def value(self) -> float:
        return (self.adapted_accuracy if self.gain is None else self.gain) - self.penalty

    def to_dict(self) -> dict[str, float]:
        terms = {k: v for k, v in asdict(self).items() if v is not None}
        return {**terms, "forgetting": self.forgetting, "penalty": self.penalty, "reward": self.value}


def compute_reward(
    adapted_accuracy: float, retention: float, baseline_retention: float, retention_lambda: float,
    gain: float | None = None,
) -> Reward:
    """reward = adapted accuracy (or, given, the answers' likelihood gain)
    - lambda * max(0, baseline_retention - retention)."""
    return Reward(adapted_accuracy, retention, baseline_retention, retention_lambda, gain)
