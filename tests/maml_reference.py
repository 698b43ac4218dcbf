"""The plain MAML-MTL reference: a loop over tasks with a copy of the parameters.

Deliberately naive (2K + 1 passes per evaluation, K parameter copies) so it
is obviously right; tests check the fast path in models/maml.py against it
and benchmarks/maml_step.py times it. It picks the rows of each variant
(models.maml.MAML_VARIANTS) on its own, written out by hand, so a wrong
choice of rows in models/maml.py cannot pass by being shared.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from models.losses import masked_bce_per_task
from models.maml import inner_row_count
from models.networks.base import MultiTaskModel


def reference_row_roles(batch_size: int, variant: str, inner_fraction: float) -> list[tuple[range, range]]:
    """(inner rows, outer rows) of each evaluation the variant averages."""
    every_row = range(batch_size)
    if variant == "split":
        n_in = inner_row_count(batch_size, inner_fraction)
        return [(range(n_in), range(n_in, batch_size))]
    if variant == "full":
        return [(every_row, every_row)]
    if variant == "swap":
        half_a, half_b = range(batch_size // 2), range(batch_size // 2, batch_size)
        return [(half_a, half_b), (half_b, half_a)]
    raise ValueError(f"no reference for MAML-MTL variant {variant!r}")


def reference_maml_step(model: MultiTaskModel, x: Tensor, labels: Tensor, mask: Tensor, *,
                        inner_lr: float, variant: str = "split", inner_fraction: float = 0.8,
                        second_order: bool = False,
                        pos_weight: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """The outer loss of each task `[K]` and the gradient of their mean
    w.r.t. every parameter.

    For each task k and each (inner rows I, outer rows O) of the variant:
    theta'_k = theta - beta * grad L_k(theta; I) over all parameters (through
    the gradient for second order, detached for first order), then
    L_k(theta'_k; O); task k's outer loss is the mean over the evaluations.
    """
    params = dict(model.named_parameters())
    n_tasks = labels.shape[1]
    roles = reference_row_roles(x.shape[0], variant, inner_fraction)
    task_losses = []
    for task in range(n_tasks):
        task_loss = torch.zeros((), dtype=x.dtype)
        for inner_rows, outer_rows in roles:
            inner, outer = list(inner_rows), list(outer_rows)
            logits_in = functional_call(model, params, (x[inner],))
            loss_in = masked_bce_per_task(logits_in, labels[inner], mask[inner], pos_weight)[task]
            grads = torch.autograd.grad(loss_in, list(params.values()), create_graph=second_order,
                                        allow_unused=True)
            task_params = {}
            for (name, param), grad in zip(params.items(), grads):
                if grad is None:
                    grad = torch.zeros_like(param)
                task_params[name] = param - inner_lr * (grad if second_order else grad.detach())
            logits_out = functional_call(model, task_params, (x[outer],))
            loss_out = masked_bce_per_task(logits_out, labels[outer], mask[outer], pos_weight)[task]
            task_loss = task_loss + loss_out / len(roles)
        task_losses.append(task_loss)
    outer_losses = torch.stack(task_losses)
    grads = torch.autograd.grad(outer_losses.mean(), list(params.values()), allow_unused=True)
    return outer_losses.detach(), {name: (torch.zeros_like(p) if g is None else g)
                           for (name, p), g in zip(params.items(), grads)}
