"""The MAML-MTL outer pass of a one-layer expert read by linear heads, as one
autograd function that works on blocks of (task, row) pairs (first order).

For one expert e with pre-activation z = x W_e + b_e, linear heads
logit_k = sum_e g^k_e (w_k . a_e) + b_k, and the inner step of every task k
on the inner rows I, task k's gradient at the expert's pre-activation on
inner row i factors as

    Delta_k(i) = c_k(i) m(i) * w_k,   c_k(i) = g^k_e(i) dL_k/dlogit_k(i),
                                      m(i) = sigma'(z(i)) * dropout(i),

so at theta'_k the outer row o reads (models/maml.py, the Gram identity)

    z_k(o) = x_o W_e + b_e + w_k * sum_i G(o, i) c_k(i) m(i),
    G = -beta (x_O x_I^T + 1).

Since w_k is a factor of the whole row, z_k(o) = base(o) + w_k * (L m)(o)
with L(o, .) = G(o, .) * c_k(.): the right factor m is the same for every
task, so pairs of all tasks share one product, `[n, |I|] x [|I|, h]` for a
block of n pairs, and everything after it (w_k, the base output, the
activation, dropout, the head) runs on that block while it is in cache:
the general path writes `[E, K, |O|, h]` tensors and walks them several
times in memory, which left its products waiting on memory
(models/maml.py). Only pairs whose label is present are computed
(nothing else reaches the loss): on PCBA about 60 % of them. The function
returns each pair's score s_k(o) = w'_k . (sigma(z_k(o)) * dropout(o)); the
caller mixes them with the outer gates. Only z is kept for the backward,
which needs no product.

First order only: c, m, G and the inner heads w_k are constants here (the
second-order path differentiates through them, models/maml.py). Built for
CPUs, where a loop over blocks costs little next to its products; on a GPU
models/maml.py keeps its batched path.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from models.activations import Activation

PAIRS_PER_BLOCK = 512
"""Pairs scored together: one `[512, |I|] x [|I|, h]` product and `[512, h]`
blocks (3 MB at h = 1500) that stay in cache for the elementwise work
after it. Forward and backward of one expert, 19,700 pairs, |I| = 256,
h = 1500, 2 CPU threads, medians of 6 interleaved runs: 229 / 226 / 246 /
293 ms for blocks of 256 / 512 / 1024 / 2048 pairs, 239 ms for the
earlier loop of one product per task."""


class OuterExpertScores(torch.autograd.Function):
    """s `[N]` for N (task, outer row) pairs of one expert, in any order;
    gradients for the expert's outer base output and the updated heads only.

    The pairs are taken in blocks of `pairs_per_block`, tasks mixed: the
    right factor m is the same for every task, so a block is one large
    product, and task k's head enters after it (z = base + w_k * (L m),
    L(o, .) = G(o, .) * c_k(.)) as a gathered row per pair.
    """

    @staticmethod
    def forward(ctx: Any, base: Tensor, heads_out: Tensor, gram: Tensor, coefficients: Tensor,
                inner_factor: Tensor, heads_in: Tensor, dropout: Tensor | None, task_of_pair: Tensor,
                row_of_pair: Tensor, activation: Activation, pairs_per_block: int) -> Tensor:
        """base `[|O|, h]` = x_O W_e + b_e; heads_out `[K, h]` the updated
        heads w'_k; gram `[|O|, |I|]` = G; coefficients `[K, |I|]` = c_k;
        inner_factor `[|I|, h]` = m, in the dtype the products run in (that
        of base, or bfloat16 to lower them); heads_in `[K, h]` = w_k; dropout
        `[|O|, h]` multipliers or None; task_of_pair, row_of_pair `[N]`."""
        pre_activations = base.new_empty(task_of_pair.shape[0], base.shape[1])
        scores = base.new_empty(task_of_pair.shape[0])
        for pairs in _blocks(task_of_pair.shape[0], pairs_per_block):
            rows, tasks = row_of_pair[pairs], task_of_pair[pairs]
            left = gram.index_select(0, rows).mul_(coefficients.index_select(0, tasks))
            z = pre_activations[pairs]
            if inner_factor.dtype == z.dtype:
                torch.mm(left, inner_factor, out=z)
            else:  # the product lowered (bfloat16), the rest at full precision
                z.copy_(torch.mm(left.to(inner_factor.dtype), inner_factor))
            z.mul_(heads_in.index_select(0, tasks)).add_(base.index_select(0, rows))
            activated = _activated(activation, z, _rows_of(dropout, rows))
            torch.sum(activated.mul_(heads_out.index_select(0, tasks)), dim=1, out=scores[pairs])
        ctx.save_for_backward(pre_activations, heads_out, dropout, task_of_pair, row_of_pair)
        ctx.activation = activation
        ctx.base_rows = base.shape[0]
        ctx.pairs_per_block = pairs_per_block
        return scores

    @staticmethod
    def backward(ctx: Any, grad_scores: Tensor) -> tuple[Tensor | None, ...]:
        pre_activations, heads_out, dropout, task_of_pair, row_of_pair = ctx.saved_tensors
        activation: Activation = ctx.activation
        grad_base = heads_out.new_zeros(ctx.base_rows, heads_out.shape[1])
        grad_heads = torch.zeros_like(heads_out)
        for pairs in _blocks(task_of_pair.shape[0], ctx.pairs_per_block):
            rows, tasks, z = row_of_pair[pairs], task_of_pair[pairs], pre_activations[pairs]
            grad = grad_scores[pairs].unsqueeze(1)
            scale = _rows_of(dropout, rows)
            grad_heads.index_add_(0, tasks, _activated(activation, z, scale).mul_(grad))
            grad_z = activation.derivative(z).mul_(heads_out.index_select(0, tasks)).mul_(grad)
            if scale is not None:
                grad_z.mul_(scale)
            grad_base.index_add_(0, rows, grad_z)
        return (grad_base, grad_heads, *(None,) * 9)


def _blocks(n_pairs: int, size: int) -> list[slice]:
    """Consecutive slices of at most `size` pairs covering all n_pairs."""
    return [slice(start, min(start + size, n_pairs)) for start in range(0, n_pairs, size)]


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
                        task_of_pair: Tensor, row_of_pair: Tensor, activation: Activation,
                        pairs_per_block: int = PAIRS_PER_BLOCK) -> Tensor:
    """OuterExpertScores.apply with its arguments named (module docstring)."""
    if pairs_per_block < 1:
        raise ValueError(f"pairs_per_block must be >= 1, got {pairs_per_block}")
    return OuterExpertScores.apply(base, heads_out, gram, coefficients, inner_factor, heads_in, dropout,
                                   task_of_pair, row_of_pair, activation, pairs_per_block)
