"""The configurations of what is learned and how: :class:`ModelConfig` (the
network, built by models/factory.py) and :class:`StepConfig` (the optimizer
step, models/steps.py), with the registries of their names.

The registries are plain data and this module imports no torch, so the CLI's
choices, Tune's search space, the comparison and the MLflow params all read
one list. Each name carries the config fields it reads: a field an
architecture or step does not have is neither logged nor tuned for it
(LibMTL's prepare_args hands each architecture only its own arguments).
Adding an architecture is a network file, its entry here and in
models/factory.py.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any


def reject_unknown_keys(config_class: type, values: Mapping[str, Any]) -> None:
    """Refuse keys a config dataclass does not have, naming them and the
    known ones: a stale checkpoint or a typo in a YAML file fails loudly
    instead of being dropped silently."""
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown {config_class.__name__} keys {unknown}; "
                         f"known keys are {sorted(known)}")

#: Architecture -> the ModelConfig fields it reads besides n_features,
#: n_tasks and seed. MMoE (Ma et al. 2018) is MMoEEx without exclusive experts:
#: it has no alpha, so it gets none (:attr:`ModelConfig.n_exclusive_experts`).
ARCHITECTURE_PARAMETERS: dict[str, tuple[str, ...]] = {
    "mmoeex": ("n_experts", "expert_hidden", "tower_hidden", "alpha", "exclusivity", "dropout",
               "activation", "gate_lr_scale", "gate_weight_decay", "gate_dropout"),
    "mmoe": ("n_experts", "expert_hidden", "tower_hidden", "dropout", "activation", "gate_lr_scale",
             "gate_weight_decay", "gate_dropout"),
    "shared-bottom": ("expert_hidden", "tower_hidden", "dropout", "activation"),
    "single-task": ("expert_hidden", "tower_hidden", "dropout", "activation"),
}
ARCHITECTURES = tuple(ARCHITECTURE_PARAMETERS)
EXCLUSIVITY_KINDS = ("exclusive", "exclusion")
#: Fields every architecture has (the data decides the first two).
COMMON_MODEL_FIELDS = ("architecture", "n_features", "n_tasks", "seed")


@dataclass(frozen=True)
class ModelConfig:
    """Hyper-parameters of a multi-task network.

    The defaults are the configuration that measured best on the real
    PCBA subset (the README's Results table; docs/results.md): MMoEEx with
    exclusion (each of round(alpha * E) experts closed to one task) and
    alpha 0.5, 4 experts of 1500, linear towers, dropout 0.25, and gates
    learning at a twentieth of the run's rate with weight decay 1e-3 (at
    the paper's rate the gates fit the training molecules within a few
    epochs). At 128 tasks an exclusive expert (open to one task only) is
    lost to the 127 others, so alpha 0.5 leaves most tasks 2 experts;
    exclusion closes 2 of the 512 gate entries and keeps every expert for
    the rest.

    architecture: "mmoeex" (Aoki et al. 2021), "mmoe" (Ma et al. 2018, i.e.
        MMoEEx with alpha = 0), "shared-bottom" (one trunk of widths
        `expert_hidden`, K towers) or "single-task" (K independent nets, each
        a trunk of widths `expert_hidden` plus a tower).
    expert_hidden: widths of the expert MLP layers; the last is the expert
        output width, so two entries mean two hidden layers.
    tower_hidden: width of each task tower's hidden layer; 0 = linear tower.
    alpha: share of experts assigned to one task each (MMoEEx only):
        round(alpha * E), capped at E - 1 so at least one expert stays shared.
    exclusivity: what an assigned expert is to its task: "exclusive" (open
        to its task only) or "exclusion" (closed to its task only; Aoki et
        al. 2021 describe both).
    gate_lr_scale / gate_weight_decay: the gates' own Adam learning rate (a
        multiple of the run's) and weight decay (None = the run's), for the
        architectures with gates. Gates reading the raw fingerprint (E x d
        weights per task) fit the training molecules long before the
        experts do; a slower or more decayed gate path keeps them from it
        while g^k(x) stays the paper's softmax(W^k x).
    gate_dropout: dropout on the fingerprint the gates read (in training
        only; the experts read it whole): each gate sees a random subset of
        the on-bits, so no one rare bit can decide a molecule's routing.
    seed: seeds the weight initialisation and the exclusive assignment.
    """

    architecture: str = "mmoeex"
    n_features: int = 2048
    n_tasks: int = 128
    n_experts: int = 4
    expert_hidden: tuple[int, ...] = (1500,)
    tower_hidden: int = 0
    alpha: float = 0.5
    exclusivity: str = "exclusion"
    dropout: float = 0.25
    activation: str = "relu"
    gate_lr_scale: float = 0.052
    gate_weight_decay: float | None = 1e-3
    gate_dropout: float = 0.0
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
        if not self.gate_lr_scale > 0:
            problems.append(f"gate_lr_scale must be > 0, got {self.gate_lr_scale}")
        if self.gate_weight_decay is not None and self.gate_weight_decay < 0:
            problems.append(f"gate_weight_decay must be >= 0 or None, got {self.gate_weight_decay}")
        for name in ("dropout", "gate_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                problems.append(f"{name} must be in [0, 1), got {getattr(self, name)}")
        from models.activations import ACTIVATIONS  # torch: not needed to read the registries

        if self.activation not in ACTIVATIONS:
            problems.append(f"activation {self.activation!r} is not one of {sorted(ACTIVATIONS)}")
        if problems:
            raise ValueError("invalid ModelConfig: " + "; ".join(problems))

    @property
    def n_exclusive_experts(self) -> int:
        """round(alpha * E) (half rounds up), at most E - 1, for an
        architecture with alpha; 0 otherwise."""
        if "alpha" not in ARCHITECTURE_PARAMETERS[self.architecture]:
            return 0
        return min(int(self.alpha * self.n_experts + 0.5), self.n_experts - 1)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able dict; `from_dict(to_dict())` gives an equal config."""
        out = asdict(self)
        out["expert_hidden"] = list(self.expert_hidden)
        return out

    def params(self) -> dict[str, Any]:
        """The fields this architecture reads (what a run logs and a sweep may
        vary); ``to_dict`` keeps every field for round trips."""
        active = (*COMMON_MODEL_FIELDS, *ARCHITECTURE_PARAMETERS[self.architecture])
        return {key: value for key, value in self.to_dict().items() if key in active}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        """Build from a dict (e.g. MLflow params, a checkpoint); unknown keys are an error."""
        reject_unknown_keys(cls, values)
        return cls(**values)


DEFAULT_POS_WEIGHT_CAP = 100.0


def parse_pos_weight(value: float | str | None) -> float | str | None:
    """A positive-label weight as StepConfig holds it: None (also "none": no
    weighting), a number > 0, or "auto:CAP" ("auto" alone gets the default
    cap of 100, the reference's scalar). Numbers written as text become numbers."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        if value is not None and not value > 0:
            raise ValueError(f"pos_weight must be > 0, 'auto[:CAP]' or None, got {value}")
        return None if value is None else float(value)
    text = str(value).strip().lower()
    if text == "none":
        return None
    if text == "auto" or text.startswith("auto:"):
        cap = text.partition(":")[2] or str(DEFAULT_POS_WEIGHT_CAP)
        try:
            if float(cap) >= 1:
                return f"auto:{float(cap):g}"
        except ValueError:
            pass
        raise ValueError(f"pos_weight {value!r}: the cap of auto:CAP must be a number >= 1")
    try:
        return parse_pos_weight(float(text))
    except ValueError:
        raise ValueError(f"pos_weight must be > 0, 'auto[:CAP]' or None, got {value!r}") from None


#: Optimizer step -> the StepConfig fields it reads (models/steps.py).
OPTIMIZER_PARAMETERS: dict[str, tuple[str, ...]] = {
    "maml-mtl": ("inner_lr", "maml_variant", "inner_fraction", "second_order", "tasks_per_step", "pos_weight",
                 "task_pos_weight", "loss_normalization", "autocast"),
    "plain": ("pos_weight", "task_pos_weight", "loss_normalization", "autocast"),
}
OPTIMIZERS = tuple(OPTIMIZER_PARAMETERS)
AUTOCAST_DTYPES = ("bfloat16", "float16")
LOSS_NORMALIZATIONS = ("task", "label")
#: MAML-MTL's ways of choosing inner and outer rows (models.maml.MAML_VARIANTS).
MAML_VARIANT_NAMES = ("split", "full", "swap")


@dataclass(frozen=True)
class StepConfig:
    """How one batch becomes a gradient.

    The defaults follow the real PCBA subset (docs/results.md): the plain
    step with per-task class weighting and the loss averaged over all
    present labels; MAML-MTL is the same network with the two-step update,
    slower per epoch and per second on CPUs.

    optimizer: "maml-mtl" (Aoki et al. 2021, Sec. 3.2; models/maml.py) or
        "plain" (gradient of the mean task loss).
    inner_lr: beta, the inner (temporary) learning rate of MAML-MTL. 0.01,
        a fifth of the reference's 0.05: on the real PCBA subset it ranked
        better and kept improving for longer (docs/results.md, "MAML-MTL's
        inner learning rate").
    maml_variant: which rows take the inner step and which evaluate it
        (:data:`MAML_VARIANT_NAMES`, implemented in models/maml.py): "split"
        (the reference code's: the outer gradient sees the last
        1 - inner_fraction of the rows only), "full" (inner and outer on the
        whole batch) or "swap" (the two halves each take both roles). Swap
        is the default: on the real PCBA subset it learned the most per
        epoch and per second of the three (docs/results.md).
    inner_fraction: share of the batch rows used for the inner step (the
        first rows) by the split variant; the rest evaluate the temporary
        weights. The other variants fix their rows, so they refuse any value
        but the default.
    second_order: differentiate through the inner step (exact MAML) instead
        of treating the temporary weights as constants (first order).
    tasks_per_step: if set (m < K), each MAML-MTL step uses m tasks drawn at
        random (torch's global RNG); the outer loss is their mean, an unbiased
        estimate of the all-task mean. Off by default: it trades variance for
        speed and is not needed for speed by the exact path.
    pos_weight: weight of positive labels in the BCE: a number for every
        task (the reference uses 100), or "auto[:CAP]", each task's neg/pos
        ratio in the training labels capped at CAP (default 100), which the
        training run resolves into ``task_pos_weight`` before it starts.
    task_pos_weight: the resolved per-task weights of "auto" (one per task,
        logged with the run); None otherwise.
    loss_normalization: "task" (the loss is the mean of the per-task mean
        losses: every assay weighs the same) or "label" (the mean over all
        present labels: assays weigh by their labels in the batch).
    autocast: "bfloat16" / "float16" to run forward passes under
        torch.autocast on the batch's device (gradients are taken outside it).
    """

    optimizer: str = "plain"
    inner_lr: float = 0.01
    maml_variant: str = "swap"
    inner_fraction: float = 0.8
    second_order: bool = False
    tasks_per_step: int | None = None
    pos_weight: float | str | None = "auto:100"
    task_pos_weight: tuple[float, ...] | None = None
    loss_normalization: str = "label"
    autocast: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.loss_normalization not in LOSS_NORMALIZATIONS:
            problems.append(f"loss_normalization {self.loss_normalization!r} is not one of "
                            f"{LOSS_NORMALIZATIONS}")
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.inner_lr < 0:
            problems.append(f"inner_lr must be >= 0, got {self.inner_lr}")
        if self.maml_variant not in MAML_VARIANT_NAMES:
            problems.append(f"maml_variant {self.maml_variant!r} is not one of {MAML_VARIANT_NAMES}")
        if not 0.0 < self.inner_fraction < 1.0:
            problems.append(f"inner_fraction must be in (0, 1), got {self.inner_fraction}")
        if self.maml_variant != "split" and self.inner_fraction != StepConfig.inner_fraction:
            problems.append(f"inner_fraction applies to the split MAML-MTL variant only, got "
                            f"{self.inner_fraction} with {self.maml_variant!r}")
        if self.tasks_per_step is not None and self.tasks_per_step < 1:
            problems.append(f"tasks_per_step must be >= 1 or None, got {self.tasks_per_step}")
        if self.tasks_per_step is not None and self.optimizer != "maml-mtl":
            problems.append("tasks_per_step applies to the maml-mtl optimizer only")
        try:
            object.__setattr__(self, "pos_weight", parse_pos_weight(self.pos_weight))
        except ValueError as error:
            problems.append(str(error))
        if self.task_pos_weight is not None:
            object.__setattr__(self, "task_pos_weight", tuple(float(w) for w in self.task_pos_weight))
            if not isinstance(self.pos_weight, str):
                problems.append("task_pos_weight is the resolved form of pos_weight 'auto[:CAP]'")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            problems.append(f"autocast {self.autocast!r} is not one of {AUTOCAST_DTYPES} or None")
        if problems:
            raise ValueError("invalid StepConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def pos_weight_cap(self) -> float | None:
        """CAP of pos_weight "auto:CAP"; None for a number or no weighting."""
        return float(self.pos_weight.partition(":")[2]) if isinstance(self.pos_weight, str) else None

    def positive_weight(self) -> float | tuple[float, ...] | None:
        """What the loss multiplies positive labels by: one number, one per task, or None."""
        if isinstance(self.pos_weight, str):
            if self.task_pos_weight is None:
                raise ValueError(f"pos_weight {self.pos_weight!r} is resolved from the training "
                                 "labels first (models.losses.positive_weights)")
            return self.task_pos_weight
        return self.pos_weight

    def params(self) -> dict[str, Any]:
        """The fields this optimizer step reads (logged, tunable)."""
        active = ("optimizer", *OPTIMIZER_PARAMETERS[self.optimizer])
        return {key: value for key, value in self.to_dict().items() if key in active}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StepConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)
