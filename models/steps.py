"""Training steps: one object per optimizer kind, chosen by StepConfig
(the MAML-MTL math lives in models/maml.py).

A step computes the gradient of one batch and leaves it in each parameter's
`.grad`; it never calls an optimizer and never relies on DDP hooks, so the
caller can all-reduce the gradients by hand across workers and then call
`optimizer.step()`. This keeps the network and the optimizer step
independent plug-ins (any model trains with any step).
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import Any, ClassVar

import torch
from torch import Tensor

from models.config import reject_unknown_keys
from models.losses import masked_bce_per_task
from models.maml import maml_outer_losses
from models.networks.base import MultiTaskModel
from models.networks.sparse_input import Features, SparseRows

OPTIMIZERS = ("maml-mtl", "plain")
AUTOCAST_DTYPES = ("bfloat16", "float16")


@dataclass(frozen=True)
class StepConfig:
    """How one batch becomes a gradient.

    optimizer: "maml-mtl" (Aoki et al. 2021, Sec. 3.2; models/maml.py) or
        "plain" (gradient of the mean task loss).
    inner_lr: beta, the inner (temporary) learning rate of MAML-MTL.
    inner_fraction: share of the batch rows used for the inner step (the
        first rows); the rest evaluate the temporary weights.
    second_order: differentiate through the inner step (exact MAML) instead
        of treating the temporary weights as constants (first order).
    tasks_per_step: if set (m < K), each MAML-MTL step uses m tasks drawn at
        random (torch's global RNG); the outer loss is their mean, an unbiased
        estimate of the all-task mean. Off by default: it trades variance for
        speed and is not needed for speed by the exact path.
    pos_weight: weight of positive labels in the BCE (the reference uses 100).
    autocast: "bfloat16" / "float16" to run forward passes under
        torch.autocast on the batch's device (gradients are taken outside it).
    """

    optimizer: str = "maml-mtl"
    inner_lr: float = 0.05
    inner_fraction: float = 0.8
    second_order: bool = False
    tasks_per_step: int | None = None
    pos_weight: float | None = None
    autocast: str | None = None

    def __post_init__(self) -> None:
        problems = []
        if self.optimizer not in OPTIMIZERS:
            problems.append(f"optimizer {self.optimizer!r} is not one of {OPTIMIZERS}")
        if self.inner_lr < 0:
            problems.append(f"inner_lr must be >= 0, got {self.inner_lr}")
        if not 0.0 < self.inner_fraction < 1.0:
            problems.append(f"inner_fraction must be in (0, 1), got {self.inner_fraction}")
        if self.tasks_per_step is not None and self.tasks_per_step < 1:
            problems.append(f"tasks_per_step must be >= 1 or None, got {self.tasks_per_step}")
        if self.tasks_per_step is not None and self.optimizer != "maml-mtl":
            problems.append("tasks_per_step applies to the maml-mtl optimizer only")
        if self.pos_weight is not None and self.pos_weight <= 0:
            problems.append(f"pos_weight must be > 0 or None, got {self.pos_weight}")
        if self.autocast is not None and self.autocast not in AUTOCAST_DTYPES:
            problems.append(f"autocast {self.autocast!r} is not one of {AUTOCAST_DTYPES} or None")
        if problems:
            raise ValueError("invalid StepConfig: " + "; ".join(problems))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> StepConfig:
        reject_unknown_keys(cls, values)
        return cls(**values)


@dataclass(frozen=True)
class StepOutput:
    """What a step reports (both detached).

    loss: the scalar whose gradient is in `.grad` (mean over the tasks in
        play: all K, or the m sampled ones).
    task_losses: `[K]`; for MAML-MTL the outer losses L_k^out(theta'_k);
        NaN for tasks left out by `tasks_per_step`; 0 for a task with no
        label in the (outer) batch.
    """

    loss: Tensor
    task_losses: Tensor


class TrainStep(ABC):
    """`step(model, x, labels, mask) -> StepOutput`, gradient left in `.grad`.

    x `float[B, d]` or the same rows as `SparseRows` (cheaper first layers
    for fingerprints, whose bits are mostly off); labels `[B, K]` (0/1,
    anything where mask is False);
    mask `bool[B, K]`. The step zeroes the gradients itself, and after it
    every parameter has a `.grad` tensor (zeros where nothing reached it), so
    a hand-written all-reduce sees the same tensors on every worker.

    `gains_from_sparse_rows` tells a training loop whether converting its
    batches to SparseRows pays (the plain step) or is undone inside the step
    (MAML-MTL).
    """

    gains_from_sparse_rows: ClassVar[bool] = True

    def __init__(self, config: StepConfig) -> None:
        self.config = config

    @abstractmethod
    def __call__(self, model: MultiTaskModel, x: Features, labels: Tensor, mask: Tensor) -> StepOutput:
        ...

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op when off)."""
        if self.config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=getattr(torch, self.config.autocast))


class PlainStep(TrainStep):
    """Gradient of the mean over tasks of the masked per-task BCE."""

    def __call__(self, model: MultiTaskModel, x: Features, labels: Tensor, mask: Tensor) -> StepOutput:
        check_batch(model, x, labels, mask)
        model.zero_grad(set_to_none=True)
        with self.autocast(x.device):
            logits = model(x)
        task_losses = masked_bce_per_task(logits, labels, mask, self.config.pos_weight)
        loss = task_losses.mean()
        loss.backward()
        fill_missing_grads(model)
        return StepOutput(loss.detach(), task_losses.detach())


class MamlMtlStep(TrainStep):
    """One MAML-MTL step (Aoki et al. 2021, Sec. 3.2; the math is in models/maml.py).

    The first `inner_fraction` of the rows take the per-task inner step
    theta'_k = theta - beta * grad L_k^in(theta); the outer loss is the mean
    over tasks of L_k^out(theta'_k) on the remaining rows. Sparse rows are
    made dense first: the step slices the batch into inner and outer rows
    and its Gram products read dense rows.
    """

    gains_from_sparse_rows = False

    def __call__(self, model: MultiTaskModel, x: Features, labels: Tensor, mask: Tensor) -> StepOutput:
        check_batch(model, x, labels, mask)
        if isinstance(x, SparseRows):
            x = x.to_dense(next(model.parameters()).dtype)
        n_tasks = model.config.n_tasks
        tasks = None
        if self.config.tasks_per_step is not None and self.config.tasks_per_step < n_tasks:
            tasks = torch.randperm(n_tasks, device=x.device)[: self.config.tasks_per_step].sort().values
        model.zero_grad(set_to_none=True)
        outer = maml_outer_losses(model, x, labels, mask, inner_lr=self.config.inner_lr,
                                  inner_fraction=self.config.inner_fraction,
                                  second_order=self.config.second_order,
                                  pos_weight=self.config.pos_weight, tasks=tasks,
                                  autocast=lambda: self.autocast(x.device))
        loss = outer.mean()
        loss.backward()
        fill_missing_grads(model)
        task_losses = outer.detach()
        if tasks is not None:
            task_losses = torch.full((n_tasks,), float("nan"), dtype=outer.dtype,
                                     device=outer.device).index_copy(0, tasks, task_losses)
        return StepOutput(loss.detach(), task_losses)


def check_batch(model: MultiTaskModel, x: Features, labels: Tensor, mask: Tensor) -> None:
    """Clear errors for batches that do not fit the model."""
    n_features, n_tasks = model.config.n_features, model.config.n_tasks
    if len(x.shape) != 2 or x.shape[1] != n_features:
        raise ValueError(f"x must be [B, {n_features}] for this model, got {tuple(x.shape)}")
    expected = (x.shape[0], n_tasks)
    if tuple(labels.shape) != expected or tuple(mask.shape) != expected:
        raise ValueError(f"labels {tuple(labels.shape)} and mask {tuple(mask.shape)} must be {expected}")


def fill_missing_grads(model: torch.nn.Module) -> None:
    """Give every parameter a `.grad` (zeros if nothing reached it)."""
    for param in model.parameters():
        if param.grad is None:
            param.grad = torch.zeros_like(param)


def build_step(config: StepConfig) -> TrainStep:
    """The step object for `config.optimizer`."""
    if config.optimizer == "plain":
        return PlainStep(config)
    return MamlMtlStep(config)
