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
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor

from models.config import StepConfig
from models.losses import masked_bce_per_task
from models.maml import MAML_VARIANTS, maml_outer_losses
from models.networks.base import MultiTaskModel
from models.networks.sparse_input import Features, SparseRows


@dataclass(frozen=True)
class StepOutput:
    """What a step reports (both detached).

    loss: the scalar whose gradient is in `.grad` (mean over the tasks in
        play: all K, or the m sampled ones).
    task_losses: `[K]`, whose mean over the tasks in play is `loss`. For
        MAML-MTL the outer losses: L_k(theta'_k; O) on the outer rows
        (split), L_k(theta'_k; B) on the whole batch (full), or the mean of
        the two evaluations 1/2 [L_k(theta'_k(A); B) + L_k(theta'_k(B); A)]
        (swap, so a task labelled in one half only reports half its loss
        there). NaN for tasks left out by `tasks_per_step`; 0 for a task
        with no label in the rows it is evaluated on.
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

    def reduce(self, task_losses: Tensor, label_counts: Tensor) -> Tensor:
        """The scalar loss of per-task mean losses `[K']` over `label_counts`
        labels each: their mean ("task": every task weighs the same) or the
        mean over all labels ("label": tasks weigh by how many labels they
        have), as StepConfig.loss_normalization says."""
        if self.config.loss_normalization == "task":
            return task_losses.mean()
        counts = label_counts.to(task_losses.dtype)
        return (task_losses * counts).sum() / counts.sum().clamp(min=1)

    def autocast(self, device: torch.device) -> contextlib.AbstractContextManager:
        """The autocast context for forward passes (a no-op when off)."""
        if self.config.autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=getattr(torch, self.config.autocast))


class PlainStep(TrainStep):
    """Gradient of the masked BCE: per-task means, reduced by :meth:`TrainStep.reduce`."""

    def __call__(self, model: MultiTaskModel, x: Features, labels: Tensor, mask: Tensor) -> StepOutput:
        check_batch(model, x, labels, mask)
        model.zero_grad(set_to_none=True)
        with self.autocast(x.device):
            logits = model(x)
        task_losses = masked_bce_per_task(logits, labels, mask, self.config.positive_weight())
        loss = self.reduce(task_losses, mask.sum(dim=0))
        loss.backward()
        fill_missing_grads(model)
        return StepOutput(loss.detach(), task_losses.detach())


class MamlMtlStep(TrainStep):
    """One MAML-MTL step (Aoki et al. 2021, Sec. 3.2; the math is in models/maml.py).

    The inner rows I take the per-task inner step
    theta'_k = theta - beta * grad L_k(theta; I); the outer loss is the mean
    over tasks of L_k(theta'_k; O) on the outer rows O, with I and O chosen
    by `maml_variant` (swap averages its two evaluations). Sparse rows are
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
                                  variant=self.config.maml_variant,
                                  inner_fraction=self.config.inner_fraction,
                                  second_order=self.config.second_order,
                                  pos_weight=self.config.positive_weight(), tasks=tasks,
                                  autocast=lambda: self.autocast(x.device))
        loss = self.reduce(outer, self._outer_label_counts(x.shape[0], mask, tasks))
        loss.backward()
        fill_missing_grads(model)
        task_losses = outer.detach()
        if tasks is not None:
            task_losses = torch.full((n_tasks,), float("nan"), dtype=outer.dtype,
                                     device=outer.device).index_copy(0, tasks, task_losses)
        return StepOutput(loss.detach(), task_losses)


    def _outer_label_counts(self, batch_size: int, mask: Tensor, tasks: Tensor | None) -> Tensor:
        """Labels of each task in play on the outer rows of the step's
        evaluations (both halves for swap, whose two evaluations a task's
        outer loss averages with equal weight)."""
        roles = MAML_VARIANTS[self.config.maml_variant](batch_size, self.config.inner_fraction)
        counts = sum(mask[outer].sum(dim=0) for _, outer in roles)
        return counts if tasks is None else counts[tasks]


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


#: Optimizer name (models.config.OPTIMIZER_PARAMETERS) -> its step.
STEPS: dict[str, type[TrainStep]] = {"maml-mtl": MamlMtlStep, "plain": PlainStep}


def build_step(config: StepConfig) -> TrainStep:
    """The step object for `config.optimizer`."""
    return STEPS[config.optimizer](config)
