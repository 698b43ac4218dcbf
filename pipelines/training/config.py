"""Everything one training run needs, in one frozen record.

A parameter travels in a straight line: CLI flag (pipelines/jobs/train.py)
or Tune trial config -> :class:`TrainConfig` -> the Ray Train workers (as a
plain dict) -> the module that uses it. The same record is logged to MLflow
as the run's params.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from models.config import ModelConfig, StepConfig, reject_unknown_keys
from pipelines.names import TRAINING_EXPERIMENT

if TYPE_CHECKING:
    from featurize.dataset import DatasetInfo


@dataclass(frozen=True)
class TrainConfig:
    """One training run.

    data_dir: a featurized dataset with a train/valid(/test) split.
    model / step: the network and the optimizer step (models/); the model's
        n_features and n_tasks are taken from the dataset (:meth:`for_dataset`).
    lr / weight_decay: Adam on the outer (MAML-MTL) or plain gradient. The
        default rate is the sweep's champion's on the real PCBA subset; it
        also suits the shared bottom there (docs/results.md).
    batch_size: rows per step on each worker (the global batch is
        batch_size * num_workers).
    epochs / patience: at most `epochs`; stop after `patience` epochs without
        a better validation mean AP (0 = never stop early). The defaults let
        a wide model stop itself: on the real PCBA subset MMoEEx's best epoch
        was 26-27 and the shared bottom's 28-33 (docs/results.md), past the
        earlier cap of 20.
    seed: seeds data order, dropout and the MAML-MTL task sampling; with the
        model seed, a run is reproducible for a given worker count on CPU.
    ensemble: networks trained (one after another, each early-stopped on
        validation) and served as one model, member i from seed + i: their
        mean probability is the score, their spread the uncertainty
        (models/ensemble.py). 1 = one network. An ensemble costs N x the
        training; docs/results.md has what it buys on the real subset.
    num_workers / use_gpu / resources_per_worker: Ray Train ScalingConfig;
        resources None = a share of the cluster's CPUs that leaves room for
        the Ray Data readers (and one GPU per worker with use_gpu).
    max_failures: worker failures survived by restarting from the last
        checkpoint (Ray Train FailureConfig).
    run_name / storage_path: Ray Train RunConfig name and storage; a re-run
        with the same name and storage resumes from its latest checkpoint
        (and continues the same MLflow run).
    tracking_uri / experiment_name / mlflow_parent_run_id: where the MLflow
        run goes; a Tune sweep nests one run per trial under its parent.
    fail_at_epoch: TESTING KNOB. Raise in the rank-0 worker at the start of
        this (0-based) epoch, once per run name (a marker file in the run's
        storage folder records it), to exercise recovery. Never set it in
        production.
    """

    data_dir: str
    model: ModelConfig = field(default_factory=ModelConfig)
    step: StepConfig = field(default_factory=StepConfig)
    lr: float = 2.2e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    epochs: int = 60
    patience: int = 4
    seed: int = 0
    ensemble: int = 1
    num_workers: int = 1
    use_gpu: bool = False
    resources_per_worker: dict[str, float] | None = None
    max_failures: int = 2
    run_name: str | None = None
    storage_path: str = "runs/ray"
    tracking_uri: str | None = None
    experiment_name: str = TRAINING_EXPERIMENT
    mlflow_parent_run_id: str | None = None
    fail_at_epoch: int | None = None

    def __post_init__(self) -> None:
        problems = []
        if not (self.lr > 0 and math.isfinite(self.lr)):
            problems.append(f"lr must be > 0, got {self.lr}")
        if self.weight_decay < 0:
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay}")

        for name in ("batch_size", "epochs", "num_workers", "ensemble"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.step.optimizer == "maml-mtl" and self.batch_size < 2:
            problems.append("maml-mtl needs batch_size >= 2 (inner and outer rows)")
        if self.patience < 0:
            problems.append(f"patience must be >= 0 (0 = no early stopping), got {self.patience}")
        if self.max_failures < -1:
            problems.append(f"max_failures must be >= -1 (-1 = unlimited), got {self.max_failures}")
        if self.fail_at_epoch is not None and not 0 <= self.fail_at_epoch < self.epochs:
            problems.append(f"fail_at_epoch must be in [0, epochs), got {self.fail_at_epoch}")
        if problems:
            raise ValueError("invalid TrainConfig: " + "; ".join(problems))

    def for_dataset(self, info: DatasetInfo) -> TrainConfig:
        """This config with the model's input width and task count from the data."""
        model = dataclasses.replace(self.model, n_features=info.spec.n_bits, n_tasks=info.n_tasks)
        return dataclasses.replace(self, data_dir=str(Path(info.path).resolve()), model=model)

    def with_positive_weights(self, train_labels: Any) -> TrainConfig:
        """This config with pos_weight "auto:CAP" resolved from the training
        labels `[N, K]` into per-task weights (models.losses.positive_weights);
        unchanged for a numeric weight or none."""
        cap = self.step.pos_weight_cap
        if cap is None:
            return self
        from models.losses import positive_weights

        step = dataclasses.replace(self.step, task_pos_weight=positive_weights(train_labels, cap))
        return dataclasses.replace(self, step=step)

    def member(self, index: int, parent_run_id: str) -> TrainConfig:
        """Ensemble member ``index``'s run: one network seeded ``seed + index``
        (initialization, exclusive experts, data order), its own Ray run
        name and an MLflow run nested under ``parent_run_id``."""
        from models.ensemble import member_config

        return dataclasses.replace(self, model=member_config(self.model, index), seed=self.seed + index,
                                   ensemble=1, run_name=f"{self.run_name}-member-{index}",
                                   mlflow_parent_run_id=parent_run_id)

    def to_dict(self) -> dict[str, Any]:
        """JSON-able; ``from_dict(to_dict())`` gives an equal config."""
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["model"] = self.model.to_dict()
        out["step"] = self.step.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        reject_unknown_keys(cls, values)
        values = dict(values)
        values["model"] = ModelConfig.from_dict(values.get("model", {}))
        values["step"] = StepConfig.from_dict(values.get("step", {}))
        return cls(**values)

    def params(self) -> dict[str, Any]:
        """Flat MLflow params (``model.n_experts``, ``step.inner_lr``, ...) of
        the fields the architecture and step have (a shared bottom logs no
        alpha); where the run goes (run name, storage, tracking) is left to tags."""
        return self._flat(self.model.params(), self.step.params())

    @classmethod
    def default_params(cls) -> dict[str, Any]:
        """Every flat param's default, for every architecture and step: what
        a run logged before a setting existed had, as long as a new setting's
        default keeps the old behaviour (checkpoints resume across such an
        addition)."""
        defaults = cls(data_dir="")
        return defaults._flat(defaults.model.to_dict(), defaults.step.to_dict())

    def _flat(self, model: dict[str, Any], step: dict[str, Any]) -> dict[str, Any]:
        skip = {"model", "step", "run_name", "storage_path", "tracking_uri",
                "experiment_name", "mlflow_parent_run_id", "fail_at_epoch"}
        out = {name: value for name, value in self.to_dict().items() if name not in skip}
        out.update({f"model.{key}": value for key, value in model.items()})
        out.update({f"step.{key}": value for key, value in step.items()})
        return out


def optimizer_for(model: Any, config: TrainConfig) -> Any:  # torch.optim.Adam
    """Adam over the model's parameters; the gates' (``gates.*``) in a group
    of their own when the model config gives them another learning rate or
    weight decay (ModelConfig.gate_lr_scale / gate_weight_decay)."""
    import torch

    scale, gate_decay = config.model.gate_lr_scale, config.model.gate_weight_decay
    gate_decay = config.weight_decay if gate_decay is None else gate_decay
    named = list(model.named_parameters())
    gates = [param for name, param in named if name.startswith("gates.")]
    if not gates or (scale == 1.0 and gate_decay == config.weight_decay):
        return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    rest = [param for name, param in named if not name.startswith("gates.")]
    return torch.optim.Adam([
        {"params": rest},
        {"params": gates, "lr": config.lr * scale, "weight_decay": gate_decay},
    ], lr=config.lr, weight_decay=config.weight_decay)
