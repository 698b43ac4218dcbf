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

from models.activations import Activation, get_activation
from models.networks.sparse_input import Features, SparseRows


def activate_and_drop(activation: Activation, z: Tensor, p: float, training: bool) -> Tensor:
    """dropout(activation(z), p): the same inverted dropout as
    nn.functional.dropout, drawn as uniform >= p (Bernoulli(1 - p)).

    On CPU, bernoulli_ costs 7.4 ms for a 512 x 1500 mask on 2 threads, a
    uniform draw 2.7 ms: at sparse input the mask was the largest cost of a
    shared-bottom step. The 0 / (1 / (1 - p)) multipliers are made in place
    in the draw, and fused with the activation where it allows (ReLU).
    """
    if not training or p == 0.0:
        return activation.fn(z)
    keep = torch.rand_like(z).ge_(p).mul_(1.0 / (1.0 - p))
    if activation.scaled is not None:
        return activation.scaled(z, keep)
    return activation.fn(z) * keep


class StackedLinear(nn.Module):
    """G independent affine maps y_g = x_g W_g + b_g in one tensor op.

    Input is either shared by all groups, `[B, in]` (dense, or
    :class:`SparseRows`), or one per group, `[G, B, in]`; the
    output is `[G, B, out]`, contiguous. `groups` selects a subset of
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
        return stacked_affine(x, weight, bias)


def stacked_affine(x: Features, weight: Tensor, bias: Tensor) -> Tensor:
    """x_g W_g + b_g for weights `[G, in, out]` and biases `[G, out]`; x is
    `[B, in]` (dense or SparseRows, shared by all groups) or `[G, B, in]`
    -> `[G, B, out]` (StackedLinear's product; an ensemble's stacked
    experts call it with G = members x experts)."""
    if isinstance(x, SparseRows):
        out = x.stacked_matmul(weight)
    elif x.dim() == 2:
        out = torch.einsum("bi,gio->gbo", x, weight)
    else:
        out = torch.bmm(x, weight)
    # One layout whatever the input (the einsum leaves `[B, G, out]`
    # memory order): the next layer's bmm reads it without a copy, and
    # dropout draws its mask in the same order for dense and sparse rows.
    return out.contiguous() + bias.unsqueeze(1)


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
            h = activate_and_drop(self.activation, layer(h), self.dropout, self.training)
        return h


class Towers(nn.Module):
    """One small head per task mapping that task's representation to a logit.

    `tower_hidden` = 0 gives a linear head; otherwise Linear -> activation ->
    dropout -> Linear. The call takes `[K, B, h]` (task k reads row block k,
    as in the MAML-MTL outer pass) and gives `[K, B]` logits. When every task
    reads the same `[B, h]` (shared bottom), or a gated mixture of the same
    expert outputs into linear heads, `shared_input_logits` and
    `mixture_logits` compute the same logits without K copies of the input.
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
            h = activate_and_drop(self.activation, self.hidden(h, tasks), self.dropout, self.training)
        return self.output(h, tasks).squeeze(-1)

    def shared_input_logits(self, f: Tensor) -> Tensor:
        """f `[B, h]` read by every tower -> logits `[B, K]`.

        Linear heads are one `[h, K]` product; heads with a hidden layer are
        one `[h, K * t]` product, then each task's `[t] -> 1` output.
        """
        if self.hidden is None:
            return torch.addmm(self._output_bias(), f, self._output_columns().t())
        n_tasks, in_features, width = self.hidden.weight.shape
        columns = self.hidden.weight.permute(1, 0, 2).reshape(in_features, n_tasks * width)
        z = torch.addmm(self.hidden.bias.reshape(-1), f, columns).view(f.shape[0], n_tasks, width)
        h = activate_and_drop(self.activation, z, self.dropout, self.training)
        return torch.einsum("bkt,kt->bk", h, self._output_columns()) + self._output_bias()

    def mixture_logits(self, weights: Tensor, expert_out: Tensor) -> Tensor:
        """Linear heads on the mixtures f^k = sum_e g^k_e f_e -> logits `[B, K]`.

        weights `[B, K, E]` (rows sum to 1), expert_out `[E, B, h]`. A linear
        head commutes with the convex mixture, w_k . sum_e g^k_e f_e + b_k =
        sum_e g^k_e (w_k . f_e) + b_k (Ma et al. 2018, Eq. 5-6), so the heads
        read the E expert outputs in one `[E * B, h] x [h, K]` product and the
        `[K, B, h]` mixtures are never formed.
        """
        if self.hidden is not None:
            raise ValueError("mixture_logits needs linear towers (tower_hidden = 0)")
        return linear_head_logits(weights, expert_out, self._output_columns(), self._output_bias())

    def _output_columns(self) -> Tensor:
        """The output weights `[K, in, 1]` as `[K, in]`: task k's head is row k."""
        return self.output.weight.squeeze(-1)

    def _output_bias(self) -> Tensor:
        return self.output.bias.squeeze(-1)


def linear_head_logits(weights: Tensor | None, expert_out: Tensor, head_weight: Tensor,
                       head_bias: Tensor) -> Tensor:
    """sum_e g^k_e (w_k . f_e) + b_k -> `[B, K]` from expert outputs `[E, B, h]`,
    gate weights `[B, K, E]` (None: one expert, weight 1) and heads `[K, h]`,
    `[K]`: one `[E * B, h] x [h, K]` product (Towers.mixture_logits; the
    MAML-MTL inner pass calls it with the heads of the tasks in play)."""
    per_expert = torch.matmul(expert_out, head_weight.transpose(0, 1))  # [E, B, K]
    if weights is None:
        return per_expert[0] + head_bias
    return torch.einsum("bke,ebk->bk", weights, per_expert) + head_bias
