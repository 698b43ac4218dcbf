"""The MAML-MTL outer pass of a one-layer expert read by linear heads, as one
autograd function that works a task at a time (first order).

For one expert e with pre-activation z = x W_e + b_e, linear heads
logit_k = sum_e g^k_e (w_k . a_e) + b_k, and the inner step of every task k
on the inner rows I, task k's gradient at the expert's pre-activation on
inner row i factors as

    Delta_k(i) = c_k(i) m(i) * w_k,   c_k(i) = g^k_e(i) dL_k/dlogit_k(i),
                                      m(i) = sigma'(z(i)) * dropout(i),

so at theta'_k the outer row o reads (models/maml.py, the Gram identity)

    z_k(o) = x_o W_e + b_e + w_k * sum_i G(o, i) c_k(i) m(i),
    G = -beta (x_O x_I^T + 1).

The sum is one product per task, `[|O_k|, |I|] x [|I|, h]` with left rows
G(o, .) * c_k(.) and right factor m * w_k, and everything after it (the
base output, the activation, dropout, the head) runs on that task's block
while it is in cache: the general path writes `[E, K, |O|, h]` tensors and
walks them several times in memory, which left its products waiting on
memory (models/maml.py). Only pairs whose label is present are computed
(nothing else reaches the loss): on PCBA about 60 % of them. The function
returns each pair's score s_k(o) = w'_k . (sigma(z_k(o)) * dropout(o)); the
caller mixes them with the outer gates. Only z is kept for the backward,
which needs no product.

First order only: c, m, G and the inner heads w_k are constants here (the
second-order path differentiates through them, models/maml.py). Built for
CPUs, where a per-task loop costs little next to its products; on a GPU
models/maml.py keeps its batched path.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.activations import Activation


class OuterExpertScores(torch.autograd.Function):
    """s `[N]` for N (task, outer row) pairs of one expert, sorted by task;
    gradients for the expert's outer base output and the updated heads only.

    The pairs are walked one task at a time: a task's heads are then one row
    (folded into the product's right factor, m * w_k, and read back as one
    vector), and its `[|O_k|, h]` blocks stay in cache.
    """

    @staticmethod
    def forward(ctx: Any, base: Tensor, heads_out: Tensor, gram: Tensor, coefficients: Tensor,
                inner_factor: Tensor, heads_in: Tensor, dropout: Tensor | None, task_of_pair: Tensor,
                row_of_pair: Tensor, activation: Activation) -> Tensor:
        """base `[|O|, h]` = x_O W_e + b_e; heads_out `[K, h]` the updated
        heads w'_k; gram `[|O|, |I|]` = G; coefficients `[K, |I|]` = c_k;
        inner_factor `[|I|, h]` = m; heads_in `[K, h]` = w_k; dropout
        `[|O|, h]` multipliers or None; task_of_pair, row_of_pair `[N]`."""
        pre_activations = base.new_empty(task_of_pair.shape[0], base.shape[1])
        scores = base.new_empty(task_of_pair.shape[0])
        for task, pairs in _task_segments(task_of_pair):
            rows = row_of_pair[pairs]
            z = torch.index_select(base, 0, rows, out=pre_activations[pairs])
            z.addmm_(gram.index_select(0, rows).mul_(coefficients[task]), inner_factor * heads_in[task])
            torch.mv(_activated(activation, z, _rows_of(dropout, rows)), heads_out[task], out=scores[pairs])
        ctx.save_for_backward(pre_activations, heads_out, dropout, task_of_pair, row_of_pair)
        ctx.activation = activation
        ctx.base_rows = base.shape[0]
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: Tensor) -> tuple[Tensor | None, ...]:
        pre_activations, heads_out, dropout, task_of_pair, row_of_pair = ctx.saved_tensors
        activation: Activation = ctx.activation
        grad_base = heads_out.new_zeros(ctx.base_rows, heads_out.shape[1])
        grad_heads = torch.zeros_like(heads_out)
        for task, pairs in _task_segments(task_of_pair):
            rows, z, grad = row_of_pair[pairs], pre_activations[pairs], grad_scores[pairs]
            scale = _rows_of(dropout, rows)
            torch.mv(_activated(activation, z, scale).transpose(0, 1), grad, out=grad_heads[task])
            grad_z = activation.derivative(z).mul_(torch.outer(grad, heads_out[task]))
            if scale is not None:
                grad_z.mul_(scale)
            grad_base.index_add_(0, rows, grad_z)
        return (grad_base, grad_heads, *(None,) * 8)


def _task_segments(task_of_pair: Tensor) -> list[tuple[int, slice]]:
    """(task, its slice of the pairs) for pairs sorted by task (one host read)."""
    tasks, counts = torch.unique_consecutive(task_of_pair, return_counts=True)
    ends = counts.cumsum(0).tolist()
    return [(task, slice(end - count, end))
            for task, count, end in zip(tasks.tolist(), counts.tolist(), ends)]


def _rows_of(dropout: Tensor | None, rows: Tensor) -> Tensor | None:
    """The dropout multipliers of the pairs' outer rows (None: no dropout)."""
    return None if dropout is None else dropout.index_select(0, rows)


def _activated(activation: Activation, z: Tensor, scale: Tensor | None) -> Tensor:
    """sigma(z) * scale, the pairs' dropout multipliers (a new tensor)."""
    if scale is None:
        return activation.fn(z)
    if activation.scaled is not None:
        return activation.scaled(z, scale)
    return activation.fn(z).mul_(scale)


def outer_expert_scores(base: Tensor, heads_out: Tensor, gram: Tensor, coefficients: Tensor,
                        inner_factor: Tensor, heads_in: Tensor, dropout: Tensor | None,
                        task_of_pair: Tensor, row_of_pair: Tensor, activation: Activation) -> Tensor:
    """OuterExpertScores.apply with its arguments named (module docstring)."""
    return OuterExpertScores.apply(base, heads_out, gram, coefficients, inner_factor, heads_in, dropout,
                                   task_of_pair, row_of_pair, activation)
