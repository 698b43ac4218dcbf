"""The rows of a comparison: ``ARCH/OPTIMIZER[:option=value,...]`` -> the
model and step a row trains, and the budget every row shares."""
from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from models.config import ARCHITECTURES, OPTIMIZERS, ModelConfig, StepConfig
from pipelines.errors import UserError
from pipelines.options import MODEL, STEP, Option, OptionGroup
from pipelines.training.config import TrainConfig

if TYPE_CHECKING:
    from featurize.dataset import DatasetInfo

#: The paper's Delta reference: independent single-task nets, plain step.
REFERENCE = "single-task/plain"
#: Every architecture with every step (models.config's registries).
DEFAULT_CONFIGURATIONS = tuple(f"{arch}/{opt}" for arch in ARCHITECTURES for opt in OPTIMIZERS)


@dataclass(frozen=True)
class Configuration:
    """One row of the comparison: a name and the model and step it trains.

    The name is ``ARCH/OPTIMIZER`` with the overrides appended, e.g.
    ``mmoeex/maml-mtl:experts=8,inner-lr=0.1``.
    """

    name: str
    model: ModelConfig
    step: StepConfig


def parse_configuration(text: str, base_model: ModelConfig, base_step: StepConfig) -> Configuration:
    """``ARCH/OPTIMIZER[:option=value,...]`` -> a :class:`Configuration`.

    ``base_model``/``base_step`` hold the settings every row shares (expert
    widths, E, alpha, inner lr, positive weight...); an override names a
    model or step option by its long flag or its config field
    (``experts=8`` or ``n_experts=8``; ``expert-hidden=128x128`` for widths,
    ``true``/``false`` for flags, ``none`` for None), typed and checked as a
    ``--config`` file's value is.
    """
    head, _, overrides = text.strip().partition(":")
    architecture, _, optimizer = head.partition("/")
    if architecture not in ARCHITECTURES or optimizer not in OPTIMIZERS:
        raise ValueError(f"configuration {text!r} must be ARCH/OPTIMIZER[:option=value,...] with ARCH "
                         f"one of {ARCHITECTURES} and OPTIMIZER one of {OPTIMIZERS}")
    changes: dict[str, dict[str, Any]] = {"model": {"architecture": architecture},
                                          "step": {"optimizer": optimizer}}
    for item in filter(None, (part.strip() for part in overrides.split(","))):
        key, equals, value = item.partition("=")
        found = _override_option(key.strip())
        if not equals or found is None:
            raise ValueError(f"configuration {text!r}: override {item!r} must be option=value for a "
                             f"model or step option other than model and optimizer: "
                             f"{', '.join(OVERRIDABLE)}")
        target, group, option = found
        try:
            changes[target][option.field] = group.coerce(option.key, _text_value(value.strip()),
                                                         f"configuration {text!r}")
        except UserError as error:
            raise ValueError(str(error)) from None
    return Configuration(name=text.strip(), model=dataclasses.replace(base_model, **changes["model"]),
                         step=dataclasses.replace(base_step, **changes["step"]))


#: The options a row may override (the row's head names model and optimizer).
_OVERRIDES = {target: group.without("model" if target == "model" else "optimizer")
              for target, group in (("model", MODEL), ("step", STEP))}
OVERRIDABLE = tuple(option.flag for group in _OVERRIDES.values() for option in group.options)


def _override_option(key: str) -> tuple[str, OptionGroup, Option] | None:
    """The option a row's override names, by flag or field name."""
    for target, group in _OVERRIDES.items():
        for option in group.options:
            if key.replace("_", "-") == option.flag or key == option.field:
                return target, group, option
    return None


def _text_value(text: str) -> Any:
    """An override's text as YAML reads it (``16x8`` is a list of widths)."""
    import yaml

    if text.lower() == "none":
        return None
    if re.fullmatch(r"\d+(x\d+)+", text):
        return [int(width) for width in text.split("x")]
    return yaml.safe_load(text)


def ordered_with_reference_first(configurations: Sequence[Configuration]) -> list[Configuration]:
    """The reference trains first, so every later row can log its Delta as
    soon as it finishes; otherwise the given order is kept."""
    names = [configuration.name for configuration in configurations]
    if len(set(names)) != len(names):
        raise ValueError(f"configurations must be distinct, got {names}")
    return sorted(configurations, key=lambda configuration: configuration.name != REFERENCE)


@dataclass(frozen=True)
class Budget:
    """What every row shares: optimizer settings, batch size, at most
    ``epochs`` (fewer with early stopping after ``patience`` epochs without a
    better validation mean AP, 0 = never), and optionally ``seconds`` of
    training per run (checked after each epoch; the same cap for every row)."""

    epochs: int
    patience: int
    batch_size: int
    lr: float
    weight_decay: float
    seconds: float | None = None

    @classmethod
    def of(cls, config: TrainConfig, seconds: float | None = None) -> Budget:
        """The budget of a training config (the compare job's training options)."""
        return cls(epochs=config.epochs, patience=config.patience, batch_size=config.batch_size,
                   lr=config.lr, weight_decay=config.weight_decay, seconds=seconds)

    def train_config(self, info: DatasetInfo, configuration: Configuration, seed: int,
                     use_gpu: bool) -> TrainConfig:
        """The run's full record (also what its MLflow run logs as params)."""
        model = dataclasses.replace(configuration.model, seed=seed)
        return TrainConfig(data_dir=str(info.path), model=model, step=configuration.step, lr=self.lr,
                           weight_decay=self.weight_decay, batch_size=self.batch_size,
                           epochs=self.epochs, patience=self.patience, seed=seed,
                           use_gpu=use_gpu).for_dataset(info)
