"""The sweep's search space: the optimizer step, alpha, E, the inner learning
rate beta, the outer learning rate, the expert width, the class weighting and
the gates' learning rate, in one place.

The space is plain data (a mapping ``name -> parameter``) so that a YAML or
JSON file can override any part of it; it is rendered for the search
algorithm that asks: Tune domains for random search (:func:`tune_param_space`)
or a define-by-run function for Optuna (:func:`optuna_define_by_run`).

Why alpha is zero-inflated: the share of exclusive experts is
``round(alpha * E) / E`` (Aoki et al. 2021, Sec. 3.1), so plain MMoE
(alpha = 0) is a single point of the interval and a uniform draw almost
never lands on it, which would leave the question "does exclusivity help?"
unanswered by the sweep. ``zero_probability`` puts that much mass on
exactly 0 and spreads the rest uniformly.

Why the step is searched and the inner learning rate is conditional: the
design sweeps alpha, E and beta of MAML-MTL, while the plain step (which has
no beta) is the training default. The default space draws the step, and a
parameter only some steps read (beta: MAML-MTL's, models.config's
OPTIMIZER_PARAMETERS) is drawn only for the trials of those steps; the
others' configs hold None for it, and their runs neither log nor use it.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray.tune.search.sample import Domain, Sampler

from models.config import OPTIMIZER_PARAMETERS, OPTIMIZERS, ModelConfig, StepConfig

#: Parameter -> the config and field it sets in a trial: a ModelConfig or
#: StepConfig field, or the TrainConfig's learning rate. ``expert_width`` is
#: the width of every expert layer.
TARGETS: dict[str, tuple[str, str]] = {
    "optimizer": ("step", "optimizer"),
    "alpha": ("model", "alpha"),
    "n_experts": ("model", "n_experts"),
    "inner_lr": ("step", "inner_lr"),
    "lr": ("train", "lr"),
    "expert_width": ("model", "expert_hidden"),
    "pos_weight": ("step", "pos_weight"),
    "gate_lr_scale": ("model", "gate_lr_scale"),
}
#: Parameter names a sampled trial config may carry.
PARAMETERS = tuple(TARGETS)
#: The parameter that picks a trial's optimizer step.
STEP_PARAMETER = "optimizer"

#: The default space (YAML/JSON overrides use the same layout).
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    # MAML-MTL (with StepConfig's default variant) beside the plain step;
    # --optimizer on the tune job fixes it.
    "optimizer": {"choice": list(OPTIMIZERS)},
    "alpha": {"uniform": [0.0, 1.0], "zero_probability": 0.25},
    "n_experts": {"choice": [4, 8, 12, 16, 32]},
    "inner_lr": {"loguniform": [0.005, 0.5]},
    "lr": {"loguniform": [3e-4, 1e-2]},
    "expert_width": {"choice": [256, 512, 1024, 1500]},
    "pos_weight": {"choice": ["auto:30", "auto:100"]},
    # The paper's gates learn at the run's rate (1.0); on the real subset they
    # fit the training molecules within two epochs, a tenth keeps them
    # improving (docs/results.md).
    "gate_lr_scale": {"loguniform": [0.03, 1.0]},
}


@dataclass(frozen=True)
class Uniform:
    """Uniform on [low, high]; with ``zero_probability`` p > 0, exactly 0.0
    with probability p (``low`` must then be 0)."""

    low: float
    high: float
    zero_probability: float = 0.0

    def sample(self, rng: Any) -> float:
        if self.zero_probability and rng.random() < self.zero_probability:
            return 0.0
        return float(rng.uniform(self.low, self.high))

    def suggest(self, name: str, trial: Any) -> float:
        if self.zero_probability and trial.suggest_categorical(f"{name}_is_zero", [True, False]):
            return 0.0
        return trial.suggest_float(name, self.low, self.high)


@dataclass(frozen=True)
class LogUniform:
    """Log-uniform on [low, high] (learning rates)."""

    low: float
    high: float

    def sample(self, rng: Any) -> float:
        return float(math.exp(rng.uniform(math.log(self.low), math.log(self.high))))

    def suggest(self, name: str, trial: Any) -> float:
        return trial.suggest_float(name, self.low, self.high, log=True)


@dataclass(frozen=True)
class Choice:
    """One of a list of values, equally likely."""

    values: tuple[Any, ...]

    def sample(self, rng: Any) -> Any:
        return self.values[int(rng.integers(len(self.values)))]

    def suggest(self, name: str, trial: Any) -> Any:
        return trial.suggest_categorical(name, list(self.values))


@dataclass(frozen=True)
class Fixed:
    """A constant (a parameter taken out of the search)."""

    value: Any

    def sample(self, rng: Any) -> Any:
        return self.value

    def suggest(self, name: str, trial: Any) -> Any:
        return self.value


Parameter = Uniform | LogUniform | Choice | Fixed


def parse_parameter(name: str, spec: Any) -> Parameter:
    """One parameter from its file form: ``{"uniform": [lo, hi],
    "zero_probability": p}``, ``{"loguniform": [lo, hi]}``,
    ``{"choice": [...]}``, or a bare value (fixed)."""
    if not isinstance(spec, Mapping):
        return Fixed(spec)
    kinds = [kind for kind in ("uniform", "loguniform", "choice", "fixed") if kind in spec]
    extra = set(spec) - {*kinds, "zero_probability"}
    if len(kinds) != 1 or extra:
        raise ValueError(f"search space parameter {name!r}: give exactly one of uniform, "
                         f"loguniform, choice or fixed, got {dict(spec)}")
    kind = kinds[0]
    if "zero_probability" in spec and kind != "uniform":
        raise ValueError(f"search space parameter {name!r}: zero_probability needs uniform")
    if kind == "choice":
        values = tuple(spec[kind])
        if not values:
            raise ValueError(f"search space parameter {name!r}: choice is empty")
        return Choice(values)
    if kind == "fixed":
        return Fixed(spec[kind])
    bounds = spec[kind]
    if not (isinstance(bounds, (list, tuple)) and len(bounds) == 2):
        raise ValueError(f"search space parameter {name!r}: {kind} takes [low, high], got {bounds!r}")
    low, high = float(bounds[0]), float(bounds[1])
    if not low < high or (kind == "loguniform" and low <= 0):
        raise ValueError(f"search space parameter {name!r}: bad {kind} bounds [{low}, {high}]")
    if kind == "loguniform":
        return LogUniform(low, high)
    zero_probability = float(spec.get("zero_probability", 0.0))
    if not 0.0 <= zero_probability < 1.0 or (zero_probability and low != 0.0):
        raise ValueError(f"search space parameter {name!r}: zero_probability must be in [0, 1) "
                         f"and needs low = 0, got {zero_probability} with low {low}")
    return Uniform(low, high, zero_probability)


@dataclass(frozen=True)
class SearchSpace:
    """The sweep's parameters, by name (see :data:`PARAMETERS`)."""

    parameters: dict[str, Parameter]

    def __post_init__(self) -> None:
        step = self.parameters.get(STEP_PARAMETER)
        if step is None:
            return
        values = (step.value,) if isinstance(step, Fixed) else getattr(step, "values", None)
        if values is None or not values or not set(values) <= set(OPTIMIZERS):
            raise ValueError(f"search space parameter {STEP_PARAMETER!r}: a choice of (or one of) "
                             f"{list(OPTIMIZERS)}, got {step}")

    @classmethod
    def from_mapping(cls, overrides: Mapping[str, Any] | None = None) -> SearchSpace:
        """The default space with ``overrides`` (same layout) replacing
        whole parameters."""
        overrides = dict(overrides or {})
        unknown = sorted(set(overrides) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown search space parameters {unknown}; known: {list(PARAMETERS)}")
        merged = {**DEFAULT_SPACE, **overrides}
        return cls({name: parse_parameter(name, merged[name]) for name in PARAMETERS})

    @classmethod
    def from_saved(cls, mapping: Mapping[str, Any]) -> SearchSpace:
        """Exactly the parameters of a saved space (:meth:`to_mapping`), no
        defaults added: a resumed sweep must search the space it started
        with (Tune refuses another), which may hold fewer parameters than the
        default space (:meth:`applicable_to`)."""
        unknown = sorted(set(mapping) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"unknown search space parameters {unknown}; known: {list(PARAMETERS)}")
        return cls({name: parse_parameter(name, spec) for name, spec in mapping.items()})

    @classmethod
    def from_file(cls, path: str | Path | None) -> SearchSpace:
        """The default space, overridden by a YAML (.yaml/.yml) or JSON file."""
        if path is None:
            return cls.from_mapping()
        path = Path(path)
        text = path.read_text()
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            loaded = yaml.safe_load(text)
        else:
            loaded = json.loads(text)
        if loaded is not None and not isinstance(loaded, Mapping):
            raise ValueError(f"{path}: a search space file holds a mapping of parameters, "
                             f"got {type(loaded).__name__}")
        try:
            return cls.from_mapping(loaded)
        except ValueError as error:
            raise ValueError(f"{path}: {error}") from error

    def with_step(self, optimizer: str) -> SearchSpace:
        """This space with the optimizer step fixed (``tune --optimizer``)."""
        return SearchSpace({**self.parameters, STEP_PARAMETER: Fixed(optimizer)})

    def steps(self, step: StepConfig) -> tuple[str, ...]:
        """The optimizer steps the trials may take: the space's, else the base step's."""
        parameter = self.parameters.get(STEP_PARAMETER)
        if parameter is None:
            return (step.optimizer,)
        return (parameter.value,) if isinstance(parameter, Fixed) else tuple(parameter.values)

    def applicable_to(self, model: ModelConfig, step: StepConfig) -> SearchSpace:
        """The parameters the trials' architecture and steps have: a shared
        bottom samples no alpha and no E, MMoE no alpha, a sweep of plain
        steps only no inner learning rate (models.config's registries)."""
        active = {"model": set(model.params()),
                  "step": {STEP_PARAMETER}.union(*(OPTIMIZER_PARAMETERS[name] for name in self.steps(step)))}
        return SearchSpace({name: parameter for name, parameter in self.parameters.items()
                            if TARGETS[name][0] == "train" or TARGETS[name][1] in active[TARGETS[name][0]]})

    def steps_reading(self, name: str) -> tuple[str, ...] | None:
        """The optimizer steps that read parameter ``name``, where the space
        draws the step and some of its steps do not (then ``name`` is drawn
        for those steps' trials only); None where every trial reads it."""
        config, field = TARGETS[name]
        parameter = self.parameters.get(STEP_PARAMETER)
        if config != "step" or name == STEP_PARAMETER or not isinstance(parameter, Choice):
            return None
        readers = tuple(step for step in parameter.values if field in OPTIMIZER_PARAMETERS[step])
        return None if len(readers) == len(parameter.values) else readers

    @property
    def searched_params(self) -> set[str]:
        """The MLflow param names (``model.alpha``, ``lr``...) the sweep varies."""
        return {field if config == "train" else f"{config}.{field}"
                for config, field in (TARGETS[name] for name in self.parameters)}

    def to_mapping(self) -> dict[str, Any]:
        """The file form (logged to MLflow with the sweep)."""
        out: dict[str, Any] = {}
        for name, parameter in self.parameters.items():
            if isinstance(parameter, Uniform):
                out[name] = {"uniform": [parameter.low, parameter.high],
                             **({"zero_probability": parameter.zero_probability}
                                if parameter.zero_probability else {})}
            elif isinstance(parameter, LogUniform):
                out[name] = {"loguniform": [parameter.low, parameter.high]}
            elif isinstance(parameter, Choice):
                out[name] = {"choice": list(parameter.values)}
            else:
                out[name] = {"fixed": parameter.value}
        return out


class _ParameterSampler(Sampler):
    """Draws from a :data:`Parameter` with the random state Tune passes; a
    parameter of some steps only is None in the other steps' trials."""

    def sample(self, domain: Any, config: Any = None, size: int = 1,
               random_state: Any = None) -> Any:
        if domain.only_for_steps is not None and _trial_step(config) not in domain.only_for_steps:
            values = [None] * size
        else:
            values = [_plain(domain.parameter.sample(random_state)) for _ in range(size)]
        return values if size > 1 else values[0]


def _trial_step(spec: Any) -> str:
    """The optimizer step of the trial being drawn. Tune hands a domain the
    trial's spec behind a guard whose attribute access raises Tune's
    RecursiveDependencyError while the step is not drawn yet, and then draws
    this parameter again after the step (as for Tune's own ``sample_from``)."""
    return getattr(spec.config, STEP_PARAMETER)


class _ParameterDomain(Domain):
    """A Tune domain over one of our parameters (module level: Tune pickles
    the space into its experiment state, which ``--resume`` reads back)."""

    default_sampler_cls = _ParameterSampler

    def __init__(self, parameter: Parameter, only_for_steps: tuple[str, ...] | None = None) -> None:
        self.parameter = parameter
        self.only_for_steps = only_for_steps

    def is_valid(self, value: Any) -> bool:
        return True

    @property
    def domain_str(self) -> str:
        return repr(self.parameter)


def tune_param_space(space: SearchSpace) -> dict[str, Any]:
    """Tune domains for random search (BasicVariantGenerator); each draw
    uses the random state Tune hands to domains, so a seeded sweep is
    reproducible."""
    return {name: parameter.value if isinstance(parameter, Fixed)
            else _ParameterDomain(parameter, space.steps_reading(name))
            for name, parameter in space.parameters.items()}


def _plain(value: Any) -> Any:
    """numpy scalars -> Python (trial configs are logged and pickled)."""
    return value.item() if hasattr(value, "item") else value


def optuna_define_by_run(space: SearchSpace):  # -> Callable[[optuna.Trial], dict]
    """A define-by-run space for OptunaSearch; it returns the trial config
    (zero-inflated alpha is an ``alpha_is_zero`` switch plus a conditional
    ``alpha``, which TPE models as such). The step is suggested first; a
    parameter of some steps only is suggested in their trials only."""
    order = sorted(space.parameters, key=lambda name: name != STEP_PARAMETER)

    def define(trial: Any) -> dict[str, Any]:
        config: dict[str, Any] = {}
        for name in order:
            steps = space.steps_reading(name)
            config[name] = (None if steps is not None and config[STEP_PARAMETER] not in steps
                            else space.parameters[name].suggest(name, trial))
        return config

    return define


@dataclass(frozen=True)
class TrialParams:
    """The searched values of one trial (those of :data:`PARAMETERS` its
    space holds), applied to the base model, step and learning rate."""

    values: dict[str, Any]

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> TrialParams:
        """The values a trial config holds; None is a parameter its step does not read."""
        return cls({name: _plain(config[name]) for name in PARAMETERS if config.get(name) is not None})

    def apply(self, model: ModelConfig, step: StepConfig, lr: float
              ) -> tuple[ModelConfig, StepConfig, float]:
        """The base configs with this trial's values: every expert layer gets
        ``expert_width`` units (the layer count stays the base's)."""
        changes: dict[str, dict[str, Any]] = {"model": {}, "step": {}, "train": {}}
        for name, value in self.values.items():
            config, field = TARGETS[name]
            if name == "expert_width":
                value = (int(value),) * len(model.expert_hidden)
            changes[config][field] = value
        if "pos_weight" in changes["step"]:
            # A new weighting is resolved again from the training labels.
            changes["step"]["task_pos_weight"] = None
        return (dataclasses.replace(model, **changes["model"]),
                dataclasses.replace(step, **changes["step"]), float(changes["train"].get("lr", lr)))

    def to_dict(self) -> dict[str, Any]:
        return dict(self.values)
