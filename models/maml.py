"""MAML-MTL outer losses, computed exactly and batched over all tasks.

Aoki et al. (2021), Sec. 3.2. Which rows take the inner step (I) and which
evaluate it (O) is the variant (MAML_VARIANTS below): split (the reference
code's; the first share p of the rows is I, the rest O, so the outer
gradient never sees a share p of the labels), full (I = O = the whole
batch) or swap (the two halves take each role once, and the outer loss
averages both evaluations). The paper's text does not fix the rows ("each
task loss is used to temporarily update the network, which is
re-evaluated"). One evaluation is

    theta'_k = theta - beta * grad_theta L_k(theta; I)     (every parameter)
    L_k^out  = L_k(theta'_k; O),   L = mean_k L_k^out

(L_k^in and L_k^out below are L_k on I and on O.) Every variant runs the
evaluations below unchanged: full has |I| = |O| = B, swap runs two with
|I| = |O| = B / 2, so the Gram corrections cost |I| |O| = B^2 and B^2 / 2
against 0.16 B^2 for split at p = 0.8.

First order treats theta'_k as a constant in grad_theta L; second order
differentiates through the inner step. Done naively this is 2K + 1 passes and
K copies of the weights. The mixture path below needs neither:

* Task k's inner loss reaches only gate k, tower k and the shared experts.
  One backward of sum_k L_k^in therefore gives every gate and tower its own
  task's inner gradient, and dL_k/d f^k for all k at once.
* The experts are the only weights shared by tasks. For the expert output
  a_e, dL_k/da_e = g^k_e(x) * dL_k/df^k, so the per-task gradient at each
  expert layer's pre-activation, Delta_k = dL_k/dz (`[E, K, B_in, h]`),
  follows by a batched backward through the layers. The inner step of a
  dense layer z = x W + b is rank-B_in: at theta'_k the outer rows give
      x_o W'_k + b'_k = x_o W + b - beta * ((x_o x_in^T) Delta_k + 1 sum_rows Delta_k),
  a `[B_out, B_in]` Gram product per task instead of a `d x h` weight copy.
  For deeper layers x_o is task k's own (perturbed) outer activation and
  x_in the unperturbed inner activation.
* An exclusive expert (MMoEEx) is open to one task's gate only: every other
  task gives it a zero gate weight, hence a zero Delta_k, and never reads it
  in the outer pass. Such experts are carried as `[E_x, 1, B, h]` (their own
  task only) and added to that task's mixture, the rest as `[E_s, K, B, h]`;
  with alpha = 0.5 this halves the expert work of the step, exactly.
* One expert layer read by linear heads (the product's shape), first
  order: Delta_k factors as c_k(i) m(i) * w_k (a scalar per task and row,
  a mask shared by the tasks, the head), so the inner pass needs only
  dL_k/dlogit_k and the outer pass takes the (task, row) pairs where a
  label is present in blocks, one product each, fused with the
  activation and heads (models/outer_expert_scores.py); no `[E, K, B, h]`
  tensor is formed.
  Every other shape takes the general path below.
* The outer pass runs for all K tasks at once on `[E, K, B_out, h]` tensors
  and one backward gives the outer gradient: with the inner quantities
  detached it is the first-order gradient (each layer being affine in its
  weights, d/dW of x W'_k is the gradient at theta'_k), kept in the graph it
  is the exact second-order one.

Dropout: one mask per row and unit is drawn for the inner rows and one for
the outer rows, and all tasks share them (a per-task loop would draw a new
mask per task; each task's loss sees the same distribution either way).
"""
from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.func import functional_call

from models.activations import Activation
from models.losses import masked_bce_per_task
from models.networks.base import MultiTaskModel
from models.networks.layers import linear_head_logits
from models.networks.mixture import MixtureOfExpertsModel
from models.networks.sparse_input import SparseRows
from models.outer_expert_scores import outer_expert_scores

AutocastFactory = Callable[[], AbstractContextManager]


def inner_row_count(batch_size: int, inner_fraction: float) -> int:
    """Rows of the inner part: round(p * B), keeping at least one row on each side."""
    if batch_size < 2:
        raise ValueError(f"MAML-MTL needs a batch of at least 2 rows (inner and outer), got {batch_size}")
    return min(max(round(inner_fraction * batch_size), 1), batch_size - 1)


RowRoles = tuple[slice, slice]
"""(inner rows I, outer rows O) of one evaluation of the inner step."""


def _split_roles(batch_size: int, inner_fraction: float) -> tuple[RowRoles, ...]:
    """The reference code's split: the first round(p * B) rows inner, the rest outer."""
    n_in = inner_row_count(batch_size, inner_fraction)
    return ((slice(0, n_in), slice(n_in, batch_size)),)


def _full_roles(batch_size: int, inner_fraction: float) -> tuple[RowRoles, ...]:
    """Every row is inner and outer: every label reaches the outer loss (p unused)."""
    every_row = slice(0, batch_size)
    return ((every_row, every_row),)


def _swap_roles(batch_size: int, inner_fraction: float) -> tuple[RowRoles, ...]:
    """Halves A (the first B // 2 rows) and B (the rest), each inner once and
    outer once: rows of one evaluation stay disjoint as in split, yet every
    label enters the outer loss (p unused)."""
    if batch_size < 2:
        raise ValueError(f"the swap variant of MAML-MTL needs a batch of at least 2 rows (two halves), "
                         f"got {batch_size}")
    first, second = slice(0, batch_size // 2), slice(batch_size // 2, batch_size)
    return ((first, second), (second, first))


MAML_VARIANTS: dict[str, Callable[[int, float], tuple[RowRoles, ...]]] = {
    "split": _split_roles, "full": _full_roles, "swap": _swap_roles,
}
"""Variant name -> (batch size, inner_fraction) -> the evaluations of one step.
The outer loss of task k is the mean of L_k(theta'_k(I); O) over them."""


@dataclass(frozen=True)
class _Rows:
    """Inner and outer rows of one evaluation, restricted to the tasks in play
    (the same rows on both sides for the full variant)."""

    x_in: Tensor
    labels_in: Tensor
    mask_in: Tensor
    x_out: Tensor
    labels_out: Tensor
    mask_out: Tensor


def maml_outer_losses(model: MultiTaskModel, x: Tensor, labels: Tensor, mask: Tensor, *,
                      inner_lr: float, variant: str = "split", inner_fraction: float = 0.8,
                      second_order: bool = False, pos_weight: float | Sequence[float] | Tensor | None = None,
                      tasks: Tensor | None = None, autocast: AutocastFactory | None = None) -> Tensor:
    """Per-task outer losses `[K']`, differentiable w.r.t. the model's
    parameters (first- or second-order as asked): L_k(theta'_k; O) for split
    and full, 1/2 [L_k(theta'_k(A); B) + L_k(theta'_k(B); A)] for swap.

    variant: a key of MAML_VARIANTS; inner_fraction applies to split only.
    tasks: optional sorted task indices taking part (K' of them); default all.
    autocast: a factory of the context to run forward computations in.
    """
    if variant not in MAML_VARIANTS:
        raise ValueError(f"MAML-MTL variant {variant!r} is not one of {tuple(MAML_VARIANTS)}")
    if tasks is not None:
        labels, mask = labels[:, tasks], mask[:, tasks]
        if pos_weight is not None and not isinstance(pos_weight, (int, float)):
            pos_weight = torch.as_tensor(pos_weight, dtype=x.dtype, device=x.device)[tasks]
    if isinstance(model, MixtureOfExpertsModel):
        evaluate = _mixture_outer_losses
    elif getattr(model, "task_separable", False):
        evaluate = _separable_outer_losses
    else:
        raise TypeError(f"MAML-MTL has no path for {type(model).__name__}: it needs a mixture-of-experts "
                        "model or a task-separable one")
    context = autocast or contextlib.nullcontext
    # Each evaluation is a complete split-like pass (its own inner step and
    # Gram corrections); swap runs two with the roles exchanged.
    losses = [evaluate(model, _Rows(x[inner], labels[inner], mask[inner], x[outer], labels[outer],
                                    mask[outer]), inner_lr, second_order, pos_weight, tasks, context)
              for inner, outer in MAML_VARIANTS[variant](x.shape[0], inner_fraction)]
    return torch.stack(losses).mean(0)


def _separable_outer_losses(model: MultiTaskModel, rows: _Rows, inner_lr: float, second_order: bool,
                            pos_weight: float | None, tasks: Tensor | None,
                            autocast: AutocastFactory) -> Tensor:
    """Models whose every parameter belongs to one task (single-task nets).

    Task k's inner loss reaches only its own slice of each parameter, so one
    backward of sum_k L_k^in gives each slice its own task's gradient and a
    single updated parameter set holds theta'_k for every task at once.
    """
    params = dict(model.named_parameters())
    with autocast():
        logits_in = _select(model(rows.x_in), tasks)
    inner = masked_bce_per_task(logits_in, rows.labels_in, rows.mask_in, pos_weight)
    grads = torch.autograd.grad(inner.sum(), list(params.values()), create_graph=second_order)
    updated = {name: p - inner_lr * _constant_unless(g, second_order)
               for (name, p), g in zip(params.items(), grads)}
    with autocast():
        logits_out = _select(functional_call(model, updated, (rows.x_out,)), tasks)
    return masked_bce_per_task(logits_out, rows.labels_out, rows.mask_out, pos_weight)


@dataclass
class _InnerPass:
    """What the inner pass of a mixture model leaves for the outer pass."""

    layer_inputs: list[Tensor]   # input of each expert layer: x_in [B, d], then [E, B, h]
    pre_activations: list[Tensor]  # z of each expert layer [E, B, h]
    dropout_masks: list[Tensor | None]
    mixture_weights: Tensor | None  # g^k_e(x_in) [B, K, E]
    grad_mixture: Tensor           # dL_k/df^k [K, B, h]
    towers: dict[str, Tensor]      # theta'_k of the towers (stacked over tasks)
    gates: dict[str, Tensor]       # theta'_k of the gates (stacked over tasks)


def _mixture_outer_losses(model: MixtureOfExpertsModel, rows: _Rows, inner_lr: float,
                          second_order: bool, pos_weight: float | None, tasks: Tensor | None,
                          autocast: AutocastFactory) -> Tensor:
    """The low-rank exact path for MMoEEx, MMoE and shared bottom (module docstring)."""
    product_dtype = _linear_head_product_dtype(model, rows, second_order, autocast)
    if product_dtype is not None:
        return _linear_head_outer_losses(model, rows, inner_lr, pos_weight, tasks, product_dtype)
    inner = _mixture_inner_pass(model, rows, inner_lr, second_order, pos_weight, tasks, autocast)
    n_tasks = inner.grad_mixture.shape[0]
    with autocast():
        weights = (functional_call(model.gates, inner.gates, (rows.x_out, tasks))
                   if model.gates is not None else None)
        mixed = None
        for group in _expert_groups(model, tasks):
            deltas = _expert_deltas(model, inner, group, second_order)
            expert_out = _perturbed_expert_outputs(model, rows, inner, group, deltas, inner_lr,
                                                   second_order)
            mixed = group.add_to_mixture(mixed, weights, expert_out, model.mix, n_tasks)
        logits = functional_call(model.towers, inner.towers, (mixed, tasks)).transpose(0, 1)
    return masked_bce_per_task(logits, rows.labels_out, rows.mask_out, pos_weight)


def _linear_head_product_dtype(model: MixtureOfExpertsModel, rows: _Rows, second_order: bool,
                               autocast: AutocastFactory) -> torch.dtype | None:
    """The dtype of the fused path's correction products, or None where the
    general path runs. The fused path takes one expert layer, linear heads,
    first order, on a CPU: the shape the product trains, whose outer pass
    models/outer_expert_scores.py fuses. Under bfloat16 autocast it runs
    its correction products (most of its work) in bfloat16 and the rest in
    the rows' dtype; float16 autocast keeps the general path, whose
    products autocast lowers; so does a GPU, where the fused path's loop
    would be a few thousand small kernels a step against the general
    path's few large ones (measured on an H100 for the general path only,
    docs/benchmarks.md)."""
    if (second_order or rows.x_in.device.type != "cpu" or len(model.experts.layers) != 1
            or model.towers.hidden is not None):
        return None
    with autocast():
        if not torch.is_autocast_enabled("cpu"):
            return rows.x_in.dtype
        lowered = torch.get_autocast_dtype("cpu")
    return lowered if lowered == torch.bfloat16 else None


def _linear_head_outer_losses(model: MixtureOfExpertsModel, rows: _Rows, inner_lr: float,
                              pos_weight: float | None, tasks: Tensor | None,
                              product_dtype: torch.dtype) -> Tensor:
    """First-order outer losses for one-layer experts read by linear heads.

    The same numbers as the general path, arranged so that no `[K, B, h]`
    tensor is formed: the inner pass needs only dL_k/dlogit_k (the heads
    are linear, so task k's gradient at an expert's pre-activation is that
    scalar times g^k_e sigma'(z) w_k), and the outer pass scores each
    (task, labelled outer row) pair in models/outer_expert_scores.py, its
    correction products in product_dtype (the rest in the rows' dtype).
    """
    layer, activation = model.experts.layers[0], model.experts.activation
    dropout = model.experts.dropout if model.training else 0.0
    # The layers that read the input take its on-bits (as the plain step
    # does on a CPU); the Gram products below read the dense rows.
    x_in, x_out = SparseRows.from_dense(rows.x_in), SparseRows.from_dense(rows.x_out)
    with torch.no_grad():
        z_in = layer(x_in)  # [E, B_in, h]
        drop_in = _dropout_mask(z_in.shape, dropout, z_in)
        expert_in = _activate_and_drop(activation, z_in, drop_in)
    heads = model.towers.output
    gate_params = dict(model.gates.named_parameters()) if model.gates is not None else {}
    weights_in = model.gates(x_in, tasks) if model.gates is not None else None  # [B_in, K, E]
    logits_in = linear_head_logits(weights_in, expert_in, _head_rows(heads.weight, tasks),
                                    _head_rows(heads.bias, tasks))
    inner_losses = masked_bce_per_task(logits_in, rows.labels_in, rows.mask_in, pos_weight)
    grad_logits, grad_weight, grad_bias, *grad_gates = torch.autograd.grad(
        inner_losses.sum(), [logits_in, heads.weight, heads.bias, *gate_params.values()])
    updated_gates = {name: p - inner_lr * g for (name, p), g in zip(gate_params.items(), grad_gates)}
    weights_out = (functional_call(model.gates, updated_gates, (x_out, tasks))
                   if model.gates is not None else None)
    heads_out = _head_rows(heads.weight - inner_lr * grad_weight, tasks)  # w'_k [K, h]
    heads_in = _head_rows(heads.weight, tasks).detach()
    gram = (rows.x_out @ rows.x_in.transpose(0, 1) + 1.0) * -inner_lr
    base = layer(x_out)  # [E, B_out, h]
    drop_out = _dropout_mask(base.shape, dropout, base)
    inner_factor = activation.derivative(z_in)
    if drop_in is not None:
        inner_factor.mul_(drop_in)
    inner_factor = inner_factor.to(product_dtype)
    n_outer, n_tasks = rows.mask_out.shape
    open_mask = (model.gates.open_mask(tasks) if model.gates is not None
                 else torch.ones(n_tasks, 1, dtype=torch.bool, device=base.device))
    labelled = rows.mask_out.transpose(0, 1)  # [K, B_out]: only these pairs reach the loss
    logits = _head_rows(heads.bias - inner_lr * grad_bias, tasks).unsqueeze(1).expand(n_tasks, n_outer)
    logits = logits.reshape(-1)
    grad_logits = grad_logits.transpose(0, 1)  # [K, B_in]
    for expert in range(base.shape[0]):
        pairs = (labelled & open_mask[:, expert:expert + 1]).nonzero()
        if pairs.shape[0] == 0:
            continue
        task_of_pair, row_of_pair = pairs[:, 0], pairs[:, 1]
        coefficients = grad_logits  # c_k(i) = g^k_e(i) dL_k/dlogit_k(i)
        if weights_in is not None:
            coefficients = coefficients * weights_in[:, :, expert].detach().transpose(0, 1)
        scores = outer_expert_scores(
            base[expert], heads_out, gram, coefficients, inner_factor[expert], heads_in,
            None if drop_out is None else drop_out[expert], task_of_pair, row_of_pair, activation)
        if weights_out is not None:
            scores = scores * weights_out[row_of_pair, task_of_pair, expert]
        logits = logits.index_add(0, task_of_pair * n_outer + row_of_pair, scores)
    return masked_bce_per_task(logits.view(n_tasks, n_outer).transpose(0, 1), rows.labels_out,
                               rows.mask_out, pos_weight)


def _head_rows(head_param: Tensor, tasks: Tensor | None) -> Tensor:
    """A linear head's `[K, h, 1]` weight or `[K, 1]` bias as `[K', h]` or
    `[K']`, for the tasks in play."""
    rows = head_param.squeeze(-1)
    return rows if tasks is None else rows[tasks]


@dataclass(frozen=True)
class _ExpertGroup:
    """Experts whose outer pass runs together, and the tasks each one serves.

    experts: `[G]` expert indices, or None for all experts (no copies made).
    tasks: None when the experts serve every task in play (tensors laid out
    `[G, K, B, h]`), or `[G]` the one task (its position among the tasks in
    play) each expert is open to (`[G, 1, B, h]`).
    """

    experts: Tensor | None
    tasks: Tensor | None

    def pick(self, per_expert: Tensor) -> Tensor:
        """This group's rows of an `[E, ...]` tensor."""
        return per_expert if self.experts is None else per_expert[self.experts]

    def per_task(self, per_task: Tensor) -> Tensor:
        """`[K, ...]` -> `[1, K, ...]` (every task) or `[G, 1, ...]` (each expert's task)."""
        return per_task.unsqueeze(0) if self.tasks is None else per_task[self.tasks].unsqueeze(1)

    def gate_weights(self, weights: Tensor) -> Tensor:
        """g^k_e for this group from `[B, K, E]` -> `[G, K or 1, B, 1]`."""
        if self.tasks is None:
            return self.pick(weights.permute(2, 1, 0)).unsqueeze(-1)
        return weights[:, self.tasks, self.experts].transpose(0, 1)[:, None, :, None]

    def add_to_mixture(self, mixed: Tensor | None, weights: Tensor | None, expert_out: Tensor,
                       mix: Callable[[Tensor | None, Tensor, int], Tensor], n_tasks: int) -> Tensor:
        """mixed + this group's share of f^k = sum_e g^k_e f^k_e, `[K, B, h]`."""
        if self.tasks is None:
            if weights is not None and self.experts is not None:
                weights = weights[:, :, self.experts]
            part = mix(weights, expert_out, n_tasks)
            return part if mixed is None else mixed + part
        share = (self.gate_weights(weights) * expert_out).squeeze(1)
        return mixed.index_add(0, self.tasks, share.to(mixed.dtype))  # autocast: mixed may be bf16


def _expert_groups(model: MixtureOfExpertsModel, tasks: Tensor | None) -> list[_ExpertGroup]:
    """Split the experts by the gates open to them: experts open to several
    tasks (shared ones) first, then those open to one task only (exclusive
    ones, when more than one task is in play); experts no task in play may
    read are left out, since nothing in the outer loss depends on them.
    The `[K, E]` open mask is read on the host: one small synchronization
    per step on CUDA."""
    if model.gates is None:
        return [_ExpertGroup(experts=None, tasks=None)]
    open_mask = model.gates.open_mask(tasks).cpu()  # [K, E]
    n_open = open_mask.sum(0)
    single = (n_open == 1) & (open_mask.shape[0] > 1)
    shared = (n_open > 0) & ~single
    if not single.any():
        return [_ExpertGroup(experts=None if shared.all() else _on(model, shared.nonzero()[:, 0]),
                             tasks=None)]
    owners = open_mask[:, single].to(torch.int64).argmax(0)
    return [_ExpertGroup(experts=_on(model, shared.nonzero()[:, 0]), tasks=None),
            _ExpertGroup(experts=_on(model, single.nonzero()[:, 0]), tasks=_on(model, owners))]


def _on(model: MixtureOfExpertsModel, index: Tensor) -> Tensor:
    """Index tensors live where the expert weights do."""
    return index.to(model.experts.layers[0].weight.device)


def _mixture_inner_pass(model: MixtureOfExpertsModel, rows: _Rows, inner_lr: float,
                        second_order: bool, pos_weight: float | None, tasks: Tensor | None,
                        autocast: AutocastFactory) -> _InnerPass:
    """Forward on the inner rows and ONE backward of sum_k L_k^in."""
    experts = model.experts
    dropout = experts.dropout if model.training else 0.0
    layer_inputs, pre_activations, masks = [], [], []
    with autocast():
        # First order needs no graph through the experts: their per-task
        # gradients are built by hand (_expert_deltas) and held constant.
        with torch.set_grad_enabled(second_order):
            h = rows.x_in
            for layer in experts.layers:
                z = layer(h)
                drop = _dropout_mask(z.shape, dropout, z)
                layer_inputs.append(h)
                pre_activations.append(z)
                masks.append(drop)
                h = _activate_and_drop(experts.activation, z, drop)
        if not second_order:
            h = h.requires_grad_()  # so dL/df^k exists even without gates
        weights = model.gates(rows.x_in, tasks) if model.gates is not None else None
        n_tasks = rows.labels_in.shape[1]
        mixed = model.mix(weights, h, n_tasks)
        logits = model.towers(mixed, tasks).transpose(0, 1)
    losses = masked_bce_per_task(logits, rows.labels_in, rows.mask_in, pos_weight)
    tower_params = dict(model.towers.named_parameters())
    gate_params = dict(model.gates.named_parameters()) if model.gates is not None else {}
    grads = torch.autograd.grad(losses.sum(), [mixed, *tower_params.values(), *gate_params.values()],
                                create_graph=second_order)
    grads = [_constant_unless(g, second_order) for g in grads]
    tower_grads = grads[1:1 + len(tower_params)]
    gate_grads = grads[1 + len(tower_params):]
    return _InnerPass(
        layer_inputs=layer_inputs, pre_activations=pre_activations, dropout_masks=masks,
        mixture_weights=None if weights is None else _constant_unless(weights, second_order),
        grad_mixture=grads[0],
        towers={n: p - inner_lr * g for (n, p), g in zip(tower_params.items(), tower_grads)},
        gates={n: p - inner_lr * g for (n, p), g in zip(gate_params.items(), gate_grads)},
    )


def _expert_deltas(model: MixtureOfExpertsModel, inner: _InnerPass, group: _ExpertGroup,
                   second_order: bool) -> list[Tensor]:
    """Delta_k at every expert layer's pre-activation: dL_k^in/dz, `[G, K, B_in, h]`
    (or `[G, 1, B_in, h]` for experts serving one task each).

    Starts from dL_k/da_e = g^k_e * dL_k/df^k and back-propagates through the
    layers batched over experts (bmm) and tasks (rows of the bmm). These are
    the largest tensors of the step (K * E * B_in * h), so each is allocated
    once and scaled in place where autograd allows (first order).
    """
    experts = model.experts
    n_layers = len(experts.layers)
    deltas: list[Tensor] = []
    for index in reversed(range(n_layers)):
        local = experts.activation.derivative(group.pick(inner.pre_activations[index]))
        if inner.dropout_masks[index] is not None:
            local = local * group.pick(inner.dropout_masks[index])
        if index == n_layers - 1:
            # Contiguous operands make the product contiguous [G, K, B_in, h]
            # (task-major): every later use views it as G * K blocks with no
            # copy of this large tensor (the layer above's pre-activation from
            # einsum is laid out rows-first, which the product would inherit).
            grad = local.contiguous().unsqueeze(1) * group.per_task(inner.grad_mixture.contiguous())
            if inner.mixture_weights is not None:
                grad = _scale(grad, group.gate_weights(inner.mixture_weights), second_order)
        else:
            above = deltas[-1]
            weight = group.pick(_constant_unless(experts.layers[index + 1].weight, second_order))
            n_experts, n_tasks, n_rows, width = above.shape
            grad = torch.bmm(above.view(n_experts, n_tasks * n_rows, width), weight.transpose(1, 2))
            grad = _scale(grad.view(n_experts, n_tasks, n_rows, -1), local.unsqueeze(1), second_order)
        deltas.append(grad)
    return deltas[::-1]


def _perturbed_expert_outputs(model: MixtureOfExpertsModel, rows: _Rows, inner: _InnerPass,
                              group: _ExpertGroup, deltas: list[Tensor], inner_lr: float,
                              second_order: bool) -> Tensor:
    """The group's expert outputs on the outer rows at each task's theta'_k:
    `[G, K, B_out, h]` (or `[G, 1, B_out, h]`).

    z_k = x_o W + b - beta * (x_o x_in^T + 1 1^T) Delta_k: the bias update
    (the row sum of Delta_k) rides along as a constant input feature 1.
    """
    experts = model.experts
    dropout = experts.dropout if model.training else 0.0
    h = rows.x_out
    for index, layer in enumerate(experts.layers):
        delta = deltas[index]
        if index == 0:
            # x_o x_in^T is the same for every expert and task; applying it
            # as G * K small GEMMs was faster on CPU than as one
            # [B_out, B_in] x [B_in, G*K*h] product (which also needs a
            # rows-first copy of delta).
            gram = (rows.x_out @ rows.x_in.transpose(0, 1) + 1.0) * -inner_lr
            z = torch.matmul(gram, delta) + layer(rows.x_out, group.experts).unsqueeze(1)
        else:
            n_experts, n_tasks, n_inner, width = delta.shape
            inner_in = group.pick(_constant_unless(inner.layer_inputs[index], second_order))
            n_outer = h.shape[2]
            flat = h.reshape(n_experts, n_tasks * n_outer, -1)
            gram = torch.baddbmm(flat.new_full((1, 1, 1), -inner_lr), flat, inner_in.transpose(1, 2),
                                 alpha=-inner_lr)  # -beta (h x_in^T + 1) in one pass
            base = torch.baddbmm(group.pick(layer.bias).unsqueeze(1), flat, group.pick(layer.weight))
            z = torch.baddbmm(base.view(n_experts * n_tasks, n_outer, width),
                              gram.view(n_experts * n_tasks, n_outer, n_inner),
                              delta.view(n_experts * n_tasks, n_inner, width))
            z = z.view(n_experts, n_tasks, n_outer, width)
        drop = _dropout_mask((z.shape[0], 1, *z.shape[2:]), dropout, z)
        h = _activate_and_drop(experts.activation, z, drop)
    return h


def _activate_and_drop(activation: Activation, z: Tensor, drop: Tensor | None) -> Tensor:
    """activation(z) * drop for an expert layer's pre-activation z, fused
    where the activation allows (ReLU): the outer pass's `[E, K, B_out, h]`
    tensors are the largest of the step. z itself is left intact (it is a
    view there, and sigma'(z) reads it)."""
    if drop is None:
        return activation.fn(z)
    if activation.scaled is not None:
        return activation.scaled(z, drop)
    return activation.fn(z) * drop


def _scale(value: Tensor, factor: Tensor, second_order: bool) -> Tensor:
    """value * factor, in place when no graph needs the unscaled value (first order)."""
    return value * factor if second_order else value.mul_(factor)


def _dropout_mask(shape: tuple[int, ...] | torch.Size, p: float, like: Tensor) -> Tensor | None:
    """Inverted-dropout multipliers (0 or 1/(1-p)); None when p = 0."""
    if p == 0.0:
        return None
    keep = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1.0 - p)
    return keep / (1.0 - p)


def _constant_unless(value: Tensor, second_order: bool) -> Tensor:
    """First order holds the inner step's quantities constant (detached)."""
    return value if second_order else value.detach()


def _select(logits: Tensor, tasks: Tensor | None) -> Tensor:
    return logits if tasks is None else logits[:, tasks]
