"""A trained model on disk: everything scoring needs, nothing training needs.

Layout of a bundle directory (what the MLflow pyfunc carries, and what the
training job logs for the best epoch)::

    model.safetensors       the weights (safetensors: no pickle, mmap-able)
    model_config.json       models.config.ModelConfig.to_dict() (an ensemble's
                            first member's)
    ensemble.json           optional: {"members": N} for a deep ensemble
                            (models/ensemble.py), whose weights carry a
                            leading member axis; absent = one network
    fingerprint_spec.json   featurize.spec.FingerprintSpec.to_json()
    tasks.json              task (assay) names, in output column order
    domain/                 optional: the training fingerprints, searchable
                            (pipelines.serving.applicability_domain.TrainingDomain)
    calibration.json        optional: per-assay probability calibration
                            (pipelines/serving/calibration.py); bundles
                            saved without it score raw probabilities

The spec and task names travel with the weights so that screening can refuse
a library featurized another way, and so output columns are named by assay.
The domain lets every score say how near the training set its molecule is;
bundles saved without one score as before, without those columns.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_model, save_model

from featurize.spec import FingerprintSpec
from models.config import ModelConfig
from models.ensemble import Ensemble
from models.factory import build_model
from pipelines.serving.applicability_domain import TrainingDomain
from pipelines.serving.calibration import Calibration

WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "model_config.json"
SPEC_FILE = "fingerprint_spec.json"
TASKS_FILE = "tasks.json"
DOMAIN_DIR = "domain"
ENSEMBLE_FILE = "ensemble.json"
#: What joins an assay name and "spread" in the uncertainty columns
#: (``PCBA-1030::spread``); no task name may hold it.
SPREAD_SEPARATOR = "::"


def spread_column(task: str) -> str:
    """The column of the members' spread of ``task``'s probability."""
    return f"{task}{SPREAD_SEPARATOR}spread"


@dataclass(frozen=True)
class ModelBundle:
    """A model with the fingerprint spec and task names it was trained on,
    and optionally its training set's :class:`TrainingDomain` and the
    calibration of its probabilities (None: none was fitted). The model is
    one network or an :class:`~models.ensemble.Ensemble` of them."""

    model: torch.nn.Module
    spec: FingerprintSpec
    tasks: list[str]
    domain: TrainingDomain | None = None
    calibration: Calibration | None = None

    def __post_init__(self) -> None:
        config: ModelConfig = self.model.config
        if config.n_tasks != len(self.tasks):
            raise ValueError(f"model has {config.n_tasks} outputs but {len(self.tasks)} task names")
        if config.n_features != self.spec.n_bits:
            raise ValueError(f"model takes {config.n_features} features but the fingerprint "
                             f"spec has {self.spec.n_bits} bits ({self.spec.describe()})")
        if self.domain is not None and self.domain.n_bits != self.spec.n_bits:
            raise ValueError(f"training domain has {self.domain.n_bits}-bit fingerprints but the "
                             f"spec has {self.spec.n_bits} bits ({self.spec.describe()})")
        if self.calibration is not None and self.calibration.tasks != list(self.tasks):
            raise ValueError("the calibration's tasks are not the model's tasks (names or order)")
        clashing = [task for task in self.tasks if SPREAD_SEPARATOR in task]
        if clashing:
            raise ValueError(f"task names may not contain {SPREAD_SEPARATOR!r} (it names the "
                             f"ensemble's spread columns): {clashing[:5]}")

    @property
    def n_members(self) -> int:
        """Networks in the model: N for an ensemble, else 1."""
        return self.model.n_members if isinstance(self.model, Ensemble) else 1

    def save(self, directory: str | os.PathLike[str]) -> Path:
        """Write the bundle into ``directory`` (created) and return it."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_model(self.model, str(directory / WEIGHTS_FILE))
        (directory / CONFIG_FILE).write_text(json.dumps(self.model.config.to_dict(), indent=2))
        (directory / SPEC_FILE).write_text(self.spec.to_json())
        (directory / TASKS_FILE).write_text(json.dumps(list(self.tasks)))
        if isinstance(self.model, Ensemble):
            (directory / ENSEMBLE_FILE).write_text(json.dumps({"members": self.n_members}))
        if self.domain is not None:
            self.domain.save(directory / DOMAIN_DIR)
        if self.calibration is not None:
            self.calibration.save(directory)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str],
             device: torch.device | str = "cpu") -> ModelBundle:
        """Rebuild the model from its config and load the weights (eval mode)."""
        directory = Path(directory)
        missing = [name for name in (WEIGHTS_FILE, CONFIG_FILE, SPEC_FILE, TASKS_FILE)
                   if not (directory / name).is_file()]
        if missing:
            raise FileNotFoundError(f"{directory}: not a model bundle, missing {', '.join(missing)}")
        config = ModelConfig.from_dict(json.loads((directory / CONFIG_FILE).read_text()))
        ensemble = directory / ENSEMBLE_FILE
        model = (Ensemble.initialised(config, json.loads(ensemble.read_text())["members"])
                 if ensemble.is_file() else build_model(config))
        load_model(model, str(directory / WEIGHTS_FILE), device=str(device))
        model.to(device).eval()
        domain = TrainingDomain.load(directory / DOMAIN_DIR) \
            if TrainingDomain.saved_in(directory / DOMAIN_DIR) else None
        return cls(model=model, spec=FingerprintSpec.from_json((directory / SPEC_FILE).read_text()),
                   tasks=list(json.loads((directory / TASKS_FILE).read_text())),
                   calibration=Calibration.load(directory), domain=domain)


def bundle_from_state(config: ModelConfig, state_dict: dict[str, torch.Tensor],
                      spec: FingerprintSpec, tasks: Sequence[str]) -> ModelBundle:
    """A bundle from a training checkpoint's state dict (on CPU, eval mode)."""
    model = build_model(config)
    model.load_state_dict(state_dict)
    return ModelBundle(model=model.eval(), spec=spec, tasks=list(tasks))
