"""The plain MAML-MTL reference: a loop over tasks with a copy of the parameters.

Deliberately naive (2K + 1 passes, K parameter copies) so it is obviously
right; tests check the fast path in models/maml.py against it and
benchmarks/maml_step.py times it.
"""
from __future__ import annotations

import torch
from torch import Tensor
from torch.func import functional_call

from models.losses import masked_bce_per_task
from models.maml import inner_row_count
from models.networks.base import MultiTaskModel


def reference_maml_step(model: MultiTaskModel, x: Tensor, labels: Tensor, mask: Tensor, *,
                        inner_lr: float, inner_fraction: float = 0.8, second_order: bool = False,
                        pos_weight: float | None = None) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean over tasks of L_k^out(theta'_k) and its gradient w.r.t. every parameter.

    For each task k: theta'_k = theta - beta * grad L_k^in(theta) over all
    parameters (through the gradient for second order, detached for first
    order), then L_k^out(theta'_k) on the outer rows.
    """
    n_in = inner_row_count(x.shape[0], inner_fraction)
    params = dict(model.named_parameters())
    n_tasks = labels.shape[1]
    total = torch.zeros((), dtype=x.dtype)
    for task in range(n_tasks):
        logits_in = functional_call(model, params, (x[:n_in],))
        loss_in = masked_bce_per_task(logits_in, labels[:n_in], mask[:n_in], pos_weight)[task]
        grads = torch.autograd.grad(loss_in, list(params.values()), create_graph=second_order,
                                    allow_unused=True)
        task_params = {}
        for (name, param), grad in zip(params.items(), grads):
            if grad is None:
                grad = torch.zeros_like(param)
            task_params[name] = param - inner_lr * (grad if second_order else grad.detach())
        logits_out = functional_call(model, task_params, (x[n_in:],))
        total = total + masked_bce_per_task(logits_out, labels[n_in:], mask[n_in:], pos_weight)[task]
    loss = total / n_tasks
    grads = torch.autograd.grad(loss, list(params.values()), allow_unused=True)
    return loss.detach(), {name: (torch.zeros_like(p) if g is None else g)
                           for (name, p), g in zip(params.items(), grads)}
