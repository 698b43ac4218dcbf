"""Flags and config files -> configs, in one place for every job that trains.

A job declares the option groups it takes (:data:`MODEL`, :data:`STEP`,
:data:`TRAINING`, :data:`RAY_TRAIN`, :data:`MLFLOW`); each group maps long
flags to the fields of a config dataclass (models.config.ModelConfig,
StepConfig, pipelines.training.config.TrainConfig). The defaults, types and
validation are the dataclasses' own: a flag's type comes from its field's
annotation, the default shown in ``--help`` is the field's default, and
nothing here repeats either. Choices come from the registries in
models/config.py.

Precedence: the dataclass defaults, then a ``--config FILE`` (YAML; keys
are the long flags, with - or _), then the flags on the command line. The
parsed values are a flat mapping keyed by flag name (``expert_hidden``); the
builders (:func:`build_train_config`, ...) turn it into configs (chemprop's
hpopt reuses train's argument functions the same way).

Imports stay light (no torch, Ray or MLflow): every job's ``--help`` reads
this module.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import types
import typing
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from models.config import (
    ARCHITECTURES,
    AUTOCAST_DTYPES,
    EXCLUSIVITY_KINDS,
    LOSS_NORMALIZATIONS,
    MAML_VARIANT_NAMES,
    OPTIMIZERS,
    ModelConfig,
    StepConfig,
    parse_pos_weight,
)
from pipelines.errors import UserError
from pipelines.training.config import TrainConfig

ArgumentGroup = argparse.ArgumentParser | argparse._ArgumentGroup
logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Option:
    """One long flag (``--flag``) that sets one field of a config dataclass."""

    flag: str
    field: str
    help: str
    choices: tuple[str, ...] | None = None
    #: Parses the flag's text (and a config file's value) where the field's
    #: annotation has no single type, e.g. a number or "auto".
    parse: typing.Callable[[Any], Any] | None = None

    @property
    def key(self) -> str:
        """The flag as a Python name: argparse's dest and the parsed mapping's key."""
        return self.flag.replace("-", "_")


@dataclass(frozen=True)
class OptionGroup:
    """Options that set fields of one config dataclass, shown under ``title``."""

    title: str
    config: type
    options: tuple[Option, ...]

    def default_of(self, option: Option) -> Any:
        """What ``option`` is when neither a config file nor the command line sets it."""
        return field_default(self.config, option.field)

    def without(self, *flags: str) -> OptionGroup:
        """This group less the named flags (a job that sets them itself)."""
        unknown = set(flags) - {option.flag for option in self.options}
        if unknown:
            raise ValueError(f"{self.title}: no options {sorted(unknown)}")
        return dataclasses.replace(self, options=tuple(option for option in self.options
                                                       if option.flag not in flags))

    def with_help(self, flag: str, help: str) -> OptionGroup:
        """This group with ``flag`` described by ``help`` (a job where the
        option means more, or defaults otherwise: help that says
        "(default: ...)" shows no other)."""
        if flag not in {option.flag for option in self.options}:
            raise ValueError(f"{self.title}: no option {flag!r}")
        return dataclasses.replace(self, options=tuple(
            dataclasses.replace(option, help=help) if option.flag == flag else option
            for option in self.options))

    def add_to(self, parser: argparse.ArgumentParser) -> None:
        group = parser.add_argument_group(self.title)
        hints = typing.get_type_hints(self.config)
        for option in self.options:
            default = self.default_of(option)
            unshown = default is None or default is False or "(default:" in option.help
            shown = "" if unshown else f" (default: {_shown(default)})"
            kind = {"type": option.parse} if option.parse else _argparse_kind(hints[option.field])
            group.add_argument(f"--{option.flag}", dest=option.key, default=None,
                               choices=option.choices, help=option.help + shown, **kind)

    def fields_of(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """The given values of this group's options, by field name."""
        return {option.field: values[option.key] for option in self.options if option.key in values}

    def coerce(self, key: str, value: Any, source: str) -> Any:
        """A config-file value in the type the flag would have parsed."""
        (option,) = [option for option in self.options if option.key == key]
        hint = typing.get_type_hints(self.config)[option.field]
        try:
            value = option.parse(value) if option.parse else _coerce(hint, value)
        except (TypeError, ValueError) as error:
            raise UserError(f"{source}: {option.flag}: {error}") from None
        if option.choices is not None and value not in option.choices:
            raise UserError(f"{source}: {option.flag}: {value!r} is not one of {list(option.choices)}")
        return value


def field_default(config: type, name: str) -> Any:
    """The default of dataclass field ``name`` (what a job gets when neither
    the command line nor a config file sets it)."""
    (field,) = [field for field in dataclasses.fields(config) if field.name == name]
    if field.default is not dataclasses.MISSING:
        return field.default
    if field.default_factory is not dataclasses.MISSING:
        return field.default_factory()
    raise ValueError(f"{config.__name__}.{name} has no default")


def _shown(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _base_type(hint: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); ``X`` -> (X, False)."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        members = [member for member in typing.get_args(hint) if member is not type(None)]
        if len(members) != 1:
            raise TypeError(f"no flag type for {hint}")
        return members[0], True
    return hint, False


def _argparse_kind(hint: Any) -> dict[str, Any]:
    """argparse's type/nargs/action for a field annotation."""
    base, _ = _base_type(hint)
    if base is bool:
        return {"action": argparse.BooleanOptionalAction}
    if typing.get_origin(base) is tuple:
        return {"type": typing.get_args(base)[0], "nargs": "+"}
    return {"type": base}


def _coerce(hint: Any, value: Any) -> Any:
    """A YAML value checked against a field annotation: a number is not
    silently truncated, a bool is not a number, a list is a tuple."""
    base, optional = _base_type(hint)
    if value is None:
        if optional:
            return None
        raise ValueError("needs a value")
    if typing.get_origin(base) is tuple:
        items = value if isinstance(value, list) else [value]
        return tuple(_coerce(typing.get_args(base)[0], item) for item in items)
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {value!r}")
        return value
    if isinstance(value, bool):
        raise ValueError(f"expected a {base.__name__}, got {value!r}")
    if base is float and isinstance(value, (int, float)):
        return float(value)
    if base is int and isinstance(value, int):
        return value
    if isinstance(value, str):
        return base(value)  # str, a path, or a number written as text
    raise ValueError(f"expected a {base.__name__}, got {value!r}")


MODEL = OptionGroup("model", ModelConfig, (
    Option("model", "architecture", "network: MMoEEx, MMoE (no exclusive experts), one shared "
                                    "bottom, or one network per task", ARCHITECTURES),
    Option("experts", "n_experts", "number of experts E (MMoE, MMoEEx)"),
    Option("expert-hidden", "expert_hidden", "expert layer widths, the last is the expert output "
                                             "(the trunk of shared-bottom and single-task)"),
    Option("tower-hidden", "tower_hidden", "task tower hidden width (0 = linear towers)"),
    Option("alpha", "alpha", "share of exclusive experts (MMoEEx)"),
    Option("exclusivity", "exclusivity", "MMoEEx: an exclusive expert is open to one task only, "
                                         "or closed to one task only", EXCLUSIVITY_KINDS),
    Option("dropout", "dropout", "dropout in experts and towers"),
    Option("gate-lr-scale", "gate_lr_scale", "MMoE/MMoEEx: the gates' learning rate as a multiple of --lr"),
    Option("gate-weight-decay", "gate_weight_decay", "MMoE/MMoEEx: the gates' weight decay "
                                                     "(none: --weight-decay's)"),
    Option("gate-dropout", "gate_dropout", "MMoE/MMoEEx: dropout on the fingerprint bits the gates read "
                                           "(training only)"),
    Option("activation", "activation", "activation of hidden layers (models/activations.py)"),
))

STEP = OptionGroup("optimizer step", StepConfig, (
    Option("optimizer", "optimizer", "maml-mtl: the two-step (meta-learning) update that balances "
                                     "tasks; plain: one step on the mean task loss", OPTIMIZERS),
    Option("inner-lr", "inner_lr", "MAML-MTL inner learning rate beta"),
    Option("maml-variant", "maml_variant", "MAML-MTL: which rows take the inner step and which the "
                                           "outer loss: split (the reference's), full (the whole batch "
                                           "for both) or swap (two halves, each in both roles)",
           MAML_VARIANT_NAMES),
    Option("inner-fraction", "inner_fraction", "MAML-MTL split: share of a batch's rows for the inner "
                                               "step"),
    Option("second-order", "second_order", "MAML-MTL: differentiate through the inner step"),
    Option("tasks-per-step", "tasks_per_step", "MAML-MTL: tasks drawn per step (default: all)"),
    Option("pos-weight", "pos_weight", "weight of positive labels in the BCE: none, a number, or auto[:CAP] "
                                       "for each task's neg/pos in the training labels capped at CAP "
                                       "(default cap 100)", parse=parse_pos_weight),
    Option("loss-normalization", "loss_normalization", "task: mean of the per-task mean losses; "
                                                       "label: mean over all present labels",
           LOSS_NORMALIZATIONS),
    Option("autocast", "autocast", "forward passes in this dtype (torch.autocast)", AUTOCAST_DTYPES),
))

TRAINING = OptionGroup("training", TrainConfig, (
    Option("lr", "lr", "Adam learning rate"),
    Option("weight-decay", "weight_decay", "Adam weight decay"),

    Option("batch-size", "batch_size", "rows per step and worker"),
    Option("epochs", "epochs", "passes over the training split"),
    Option("patience", "patience", "stop after this many epochs without a better valid mean AP "
                                   "(0 = never)"),
    Option("seed", "seed", "seeds initialization, data order, dropout and task sampling"),
    Option("ensemble", "ensemble", "train N networks (seeds seed .. seed+N-1) served as one model: "
                                   "their mean probability scores, their spread is the uncertainty"),
))

RAY_TRAIN = OptionGroup("Ray Train", TrainConfig, (
    Option("num-workers", "num_workers", "data-parallel Ray Train workers"),
    Option("use-gpu", "use_gpu", "one GPU per worker (NCCL)"),
    Option("max-failures", "max_failures", "worker failures survived by restarting from the last "
                                           "checkpoint"),
    Option("run-name", "run_name", "Ray run name; re-running with the same name resumes it"),
    Option("storage", "storage_path", "Ray Train storage (checkpoints); shared storage on a cluster"),
))

MLFLOW = OptionGroup("MLflow", TrainConfig, (
    Option("tracking-uri", "tracking_uri", "MLflow tracking/registry URI (default: "
                                           "MLFLOW_TRACKING_URI, else sqlite:///runs/mlflow.db)"),
    Option("experiment", "experiment_name", "MLflow experiment"),
))

#: The groups whose values a training config is built from.
TRAIN_CONFIG_GROUPS = (MODEL, STEP, TRAINING, RAY_TRAIN, MLFLOW)


def add_option_groups(parser: argparse.ArgumentParser, groups: Sequence[OptionGroup]) -> None:
    """The groups' flags, plus ``--config FILE`` that can set any of them."""
    flags = [option.flag for group in groups for option in group.options]
    duplicated = sorted({flag for flag in flags if flags.count(flag) > 1})
    if duplicated:
        raise ValueError(f"options declared twice: {duplicated}")
    parser.add_argument("--config", type=Path, default=None, metavar="FILE",
                        help="YAML file of settings (keys: the long flags of the groups below); "
                             "flags on the command line override it")
    for group in groups:
        group.add_to(parser)


def resolve_options(args: argparse.Namespace, groups: Sequence[OptionGroup],
                    not_used: Sequence[OptionGroup] = ()) -> dict[str, Any]:
    """The values the user set, by key: the ``--config`` file's, then the
    command line's over them. Other unset options are absent (their
    configs' defaults apply when the configs are built). A config file's
    keys of the ``not_used`` groups (another job's: compare takes train's
    files, whose model and seed its rows set) are left out with a warning
    that names them."""
    config_file = getattr(args, "config", None)
    values = {} if config_file is None else read_config_file(config_file, groups, not_used)
    for group in groups:
        for option in group.options:
            given = getattr(args, option.key, None)
            if given is not None:
                values[option.key] = tuple(given) if isinstance(given, list) else given
    return values


def read_config_file(path: Path, groups: Sequence[OptionGroup],
                     not_used: Sequence[OptionGroup] = ()) -> dict[str, Any]:
    """A YAML mapping of long flags -> values, checked: unknown keys and
    values of the wrong type are errors naming the file and the key; keys of
    the ``not_used`` groups that ``groups`` lack are skipped and named."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"--config {path}: no such file")
    try:
        loaded = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise UserError(f"--config {path}: not YAML ({error})") from None
    loaded = {} if loaded is None else loaded
    if not isinstance(loaded, dict):
        raise UserError(f"--config {path}: expected a mapping of flags to values, "
                        f"got {type(loaded).__name__}")
    owners = {option.key: group for group in groups for option in group.options}
    skippable = {option.key for group in not_used for option in group.options} - set(owners)
    values: dict[str, Any] = {}
    skipped = []
    for raw_key, value in loaded.items():
        key = str(raw_key).removeprefix("--").replace("-", "_")
        if key in skippable:
            skipped.append(str(raw_key))
            continue
        if key not in owners:
            known = sorted(option.flag for group in groups for option in group.options)
            raise UserError(f"--config {path}: unknown setting {raw_key!r}; known: {', '.join(known)}")
        values[key] = owners[key].coerce(key, value, f"--config {path}")
    if skipped:
        logger.warning("--config %s: %s left out: this job sets them itself", path, ", ".join(skipped))
    return values


def build_model_config(values: Mapping[str, Any], seed: int) -> ModelConfig:
    return _checked(lambda: ModelConfig(**MODEL.fields_of(values), seed=seed))


def build_step_config(values: Mapping[str, Any]) -> StepConfig:
    return _checked(lambda: StepConfig(**STEP.fields_of(values)))


def build_train_config(values: Mapping[str, Any], **fixed: Any) -> TrainConfig:
    """The training run of ``values`` (flat, by key); ``fixed`` sets
    TrainConfig fields the job decides itself (data_dir, run_name...). The
    model is seeded with the run's seed."""
    training = {**TRAINING.fields_of(values), **RAY_TRAIN.fields_of(values),
                **MLFLOW.fields_of(values), **fixed}
    seed = training.get("seed", field_default(TrainConfig, "seed"))
    return _checked(lambda: TrainConfig(model=build_model_config(values, seed),
                                        step=build_step_config(values), **training))


def _checked(build: typing.Callable[[], Any]) -> Any:
    """A config's own validation error as a one-line user error."""
    try:
        return build()
    except ValueError as error:
        raise UserError(str(error)) from None


def add_ray_arguments(group: ArgumentGroup) -> None:
    """``--address`` / ``--num-cpus``: a cluster to join, or the size of the
    local Ray a job starts when there is none (pipelines/platform/ray_setup.py)."""
    group.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the local Ray started when there is no --address (default: all)")


def add_tracking_uri_argument(group: ArgumentGroup) -> None:
    """``--tracking-uri`` of the jobs that read MLflow without training."""
    (option,) = [option for option in MLFLOW.options if option.flag == "tracking-uri"]
    group.add_argument("--tracking-uri", default=None, help=option.help)


def add_register_arguments(group: ArgumentGroup, *, register_help: str, alias_help: str) -> None:
    """``--register NAME`` / ``--alias`` of the jobs that train models."""
    group.add_argument("--register", default=None, metavar="NAME", help=register_help)
    group.add_argument("--alias", default=None, help=alias_help)


def check_register_alias(args: argparse.Namespace) -> None:
    """An alias names a registered version: without --register there is none."""
    if args.alias and not args.register:
        raise UserError("--alias needs --register NAME")
