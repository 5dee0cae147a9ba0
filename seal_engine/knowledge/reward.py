"""The self-edit reward: learning the document without forgetting what the model knew."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Reward:
    adapted_accuracy: float
    retention: float
    baseline_retention: float
    retention_lambda: float

    @property
    def forgetting(self) -> float:
        return max(0.0, self.baseline_retention - self.retention)

    @property
    def penalty(self) -> float:
        return self.retention_lambda * self.forgetting

    @property
    def value(self) -> float:
        return self.adapted_accuracy - self.penalty

    def to_dict(self) -> dict[str, float]:
        return {**asdict(self), "forgetting": self.forgetting, "penalty": self.penalty, "reward": self.value}


def compute_reward(
    adapted_accuracy: float, retention: float, baseline_retention: float, retention_lambda: float
) -> Reward:
    """reward = adapted accuracy - lambda * max(0, baseline_retention - retention)."""
    return Reward(adapted_accuracy, retention, baseline_retention, retention_lambda)
