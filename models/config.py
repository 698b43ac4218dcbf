"""The model configuration: one plain dataclass every architecture is built
from (models/factory.py), so training, tuning and the registry never
special-case a model."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from models.activations import ACTIVATIONS


def reject_unknown_keys(config_class: type, values: Mapping[str, Any]) -> None:
    """Refuse keys a config dataclass does not have, naming them and the
    known ones: a stale checkpoint or a typo in a YAML file fails loudly
    instead of being dropped silently."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys {unknown}; "
                         f"known keys are {sorted(known)}")

ARCHITECTURES = ("mmoeex", "mmoe", "shared-bottom", "single-task")
EXCLUSIVITY_KINDS = ("exclusive", "exclusion")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a multi-task network.

    architecture: "mmoeex" (Aoki et al. 2021), "mmoe" (Ma et al. 2018, i.e.
        MMoEEx with alpha = 0), "shared-bottom" (one trunk of widths
        `expert_hidden`, K towers) or "single-task" (K independent nets, each
        a trunk of widths `expert_hidden` plus a tower).
    expert_hidden: widths of the expert MLP layers; the last is the expert
        output width, so two entries mean two hidden layers.
    tower_hidden: width of each task tower's hidden layer; 0 = linear tower.
    alpha: share of experts made exclusive (MMoEEx only): round(alpha * E),
        capped at E - 1 so at least one expert stays shared.
    exclusivity: "exclusive" (an exclusive expert is open to its task only)
        or "exclusion" (it is closed to its task only).
    seed: seeds the weight initialisation and the exclusive assignment.
    """

    architecture: str = "mmoeex"
    n_features: int = 2048
    n_tasks: int = 128
    n_experts: int = 8
    expert_hidden: tuple[int, ...] = (256,)
    tower_hidden: int = 32
    alpha: float = 0.5
    exclusivity: str = "exclusive"
    dropout: float = 0.1
    activation: str = "relu"
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "expert_hidden", tuple(int(w) for w in self.expert_hidden))
        problems = []
        if self.architecture not in ARCHITECTURES:
            problems.append(f"architecture {self.architecture!r} is not one of {ARCHITECTURES}")
        for name in ("n_features", "n_tasks", "n_experts"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.expert_hidden or min(self.expert_hidden) < 1:
            problems.append(f"expert_hidden must be non-empty positive widths, got {self.expert_hidden}")
        if self.tower_hidden < 0:
            problems.append(f"tower_hidden must be >= 0, got {self.tower_hidden}")
        if not 0.0 <= self.alpha <= 1.0:
            problems.append(f"alpha must be in [0, 1], got {self.alpha}")
        if self.exclusivity not in EXCLUSIVITY_KINDS:
            problems.append(f"exclusivity {self.exclusivity!r} is not one of {EXCLUSIVITY_KINDS}")
        if not 0.0 <= self.dropout < 1.0:
            problems.append(f"dropout must be in [0, 1), got {self.dropout}")
        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def n_exclusive_experts(self) -> int:
        """round(alpha * E) for MMoEEx (half rounds up), at most E - 1; 0 otherwise."""
        if self.architecture != "mmoeex":
            return 0
        return min(int(self.alpha * self.n_experts + 0.5), self.n_experts - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict(to_dict())` gives an equal config."""
        out = asdict(self)
        out["expert_hidden"] = list(self.expert_hidden)
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. MLflow params, a checkpoint); unknown keys are an error."""
        reject_unknown_keys(cls, values)
        return cls(**values)
