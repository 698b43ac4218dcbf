"""Comparison records as plain data (dicts, lists, numbers, strings,
tensors), so checkpoints and saved outcomes load with
``torch.load(weights_only=True)`` and survive a module being renamed.

A pickled dataclass names its module: moving ``RunOutcome`` to another file
broke every checkpoint written before. Here a dataclass becomes a dict of
its fields plus ``__type__`` (the class's bare name, looked up in
:data:`RECORD_TYPES`), and a numpy array a tensor, which is what
``weights_only`` loading admits. Only the classes listed are rebuilt.
"""
from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch

from models.config import ModelConfig, StepConfig
from models.metrics import CalibrationMetrics, TaskMetrics
from pipelines.experiments.comparison.configurations import Budget, Configuration
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.serving.calibration import (
    Calibration,
    IdentityMap,
    IsotonicMap,
    PlattMap,
    TaskCalibration,
)
from pipelines.training.config import TrainConfig
from pipelines.training.engine import EpochResult
from pipelines.training.evaluation import CalibrationReport, FinalEvaluation

#: The record classes, by the name stored with them.
RECORD_TYPES: dict[str, type] = {cls.__name__: cls for cls in (
    RunOutcome, EpochResult, FinalEvaluation, TaskMetrics, CalibrationReport, CalibrationMetrics,
    Calibration, TaskCalibration, PlattMap, IsotonicMap, IdentityMap, TrainConfig, ModelConfig,
    StepConfig, Configuration, Budget)}
TYPE_KEY = "__type__"
TUPLE_KEY = "__tuple__"


def to_plain(value: Any) -> Any:
    """``value`` with every record a dict, array a tensor, tuple a tagged list."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        name = type(value).__name__
        if RECORD_TYPES.get(name) is not type(value):
            raise TypeError(f"{name} is not a comparison record type (plain_data.RECORD_TYPES)")
        return {TYPE_KEY: name, **{field.name: to_plain(getattr(value, field.name))
                                   for field in dataclasses.fields(value) if field.init}}
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, dict):
        return {key: to_plain(item) for key, item in value.items()}
    if isinstance(value, tuple):
        return {TUPLE_KEY: [to_plain(item) for item in value]}
    if isinstance(value, list):
        return [to_plain(item) for item in value]
    return value


def from_plain(value: Any) -> Any:
    """The records :func:`to_plain` wrote (its tensors come back as numpy
    arrays: records hold no weights)."""
    if isinstance(value, torch.Tensor):
        return value.numpy()
    if isinstance(value, list):
        return [from_plain(item) for item in value]
    if isinstance(value, dict):
        if TUPLE_KEY in value:
            return tuple(from_plain(item) for item in value[TUPLE_KEY])
        if TYPE_KEY in value:
            fields = {key: from_plain(item) for key, item in value.items() if key != TYPE_KEY}
            return RECORD_TYPES[value[TYPE_KEY]](**fields)
        return {key: from_plain(item) for key, item in value.items()}
    return value
