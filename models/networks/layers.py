"""Dense layers stacked over a group axis (experts or tasks).

MMoE-style code usually loops `[expert(x) for expert in experts]` and one
tower call per task; at K = 128 that is 128 small kernels per layer. Here
every group's weight lives in one tensor `[G, in, out]` and a layer is a
single einsum / batched matmul, whatever G is.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from models.activations import get_activation
from models.networks.sparse_input import Features, SparseRows


class StackedLinear(nn.Module):
    """G independent affine maps y_g = x_g W_g + b_g in one tensor op.

    Input is either shared by all groups, `[B, in]` (dense, or
    :class:`SparseRows` at inference), or one per group, `[G, B, in]`; the
    output is `[G, B, out]`. `groups` selects a subset of
    the G maps (used when only some tasks take part in a step).
    """

    def __init__(self, n_groups: int, in_features: int, out_features: int,
                 generator: torch.Generator) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_groups, in_features, out_features))
        self.bias = nn.Parameter(torch.empty(n_groups, out_features))
        # Same law as nn.Linear's default init, per group.
        bound = 1.0 / math.sqrt(in_features)
        with torch.no_grad():
            self.weight.uniform_(-bound, bound, generator=generator)
            self.bias.uniform_(-bound, bound, generator=generator)

    def forward(self, x: Features, groups: Tensor | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if groups is not None:
            weight, bias = weight[groups], bias[groups]
        if isinstance(x, SparseRows):
            out = x.grouped_matmul(weight).transpose(0, 1)
        elif x.dim() == 2:
            out = torch.einsum("bi,gio->gbo", x, weight)
        else:
            out = torch.bmm(x, weight)
        return out + bias.unsqueeze(1)


class StackedMLP(nn.Module):
    """G independent MLPs: each layer is Linear -> activation -> dropout.

    The activation is applied after the last layer too: an expert's output
    is a hidden representation that the towers read, as in MMoE.
    """

    def __init__(self, n_groups: int, in_features: int, widths: tuple[int, ...],
                 activation: str, dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        sizes = (in_features, *widths)
        self.layers = nn.ModuleList(
            StackedLinear(n_groups, sizes[i], sizes[i + 1], generator) for i in range(len(widths))
        )
        self.activation = get_activation(activation)
        self.dropout = dropout
        self.out_features = widths[-1]

    def forward(self, x: Features) -> Tensor:
        """x `[B, in]` (or `[G, B, in]`) -> `[G, B, out]`."""
        h = x
        for layer in self.layers:
            h = nn.functional.dropout(self.activation.fn(layer(h)), self.dropout, self.training)
        return h


class Towers(nn.Module):
    """One small head per task mapping that task's representation to a logit.

    `tower_hidden` = 0 gives a linear head; otherwise Linear -> activation ->
    dropout -> Linear. Input `[K, B, h]` (task k reads row block k), output
    `[K, B]` logits.
    """

    def __init__(self, n_tasks: int, in_features: int, tower_hidden: int, activation: str,
                 dropout: float, generator: torch.Generator) -> None:
        super().__init__()
        self.hidden = (StackedLinear(n_tasks, in_features, tower_hidden, generator)
                       if tower_hidden > 0 else None)
        self.output = StackedLinear(n_tasks, tower_hidden or in_features, 1, generator)
        self.activation = get_activation(activation)
        self.dropout = dropout

    def forward(self, f: Tensor, tasks: Tensor | None = None) -> Tensor:
        h = f
        if self.hidden is not None:
            h = nn.functional.dropout(self.activation.fn(self.hidden(h, tasks)), self.dropout,
                                      self.training)
        return self.output(h, tasks).squeeze(-1)
