"""Per-task softmax gates over the experts, with MMoEEx exclusivity.

Aoki et al. (2021), Sec. 3: g^k(x) = softmax(W^k x) and a share alpha of the
experts is exclusive, each to one task. The reference code zeroes a closed
gate entry's weights, which leaves its logit at a constant and the expert
with a non-zero share; here closed entries' logits are set to -inf before the
softmax, so closed means closed and the other entries renormalise.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from models.networks.sparse_input import Features, SparseRows


def assign_exclusive_experts(n_experts: int, n_tasks: int, n_exclusive: int,
                             generator: torch.Generator) -> Tensor:
    """A seeded random assignment: `[E]` int64, the task an expert belongs to, -1 = shared.

    `n_exclusive` experts are drawn at random; each is given a distinct random
    task (tasks repeat only when there are more exclusive experts than tasks).
    """
    if not 0 <= n_exclusive < n_experts:
        raise ValueError(f"n_exclusive must be in [0, {n_experts - 1}] so one expert stays shared, "
                         f"got {n_exclusive}")
    assignment = torch.full((n_experts,), -1, dtype=torch.long)
    experts = torch.randperm(n_experts, generator=generator)[:n_exclusive]
    if n_exclusive <= n_tasks:
        tasks = torch.randperm(n_tasks, generator=generator)[:n_exclusive]
    else:
        tasks = torch.randint(n_tasks, (n_exclusive,), generator=generator)
    assignment[experts] = tasks
    return assignment


class Gates(nn.Module):
    """K softmax gates over E experts: x `[B, d]` -> weights `[B, K, E]`.

    The buffer `exclusive_expert_task` (saved in the state dict) holds each
    expert's task (-1 = shared). With exclusivity "exclusive" an assigned
    expert is open to its task only; with "exclusion" it is closed to its
    task only. The open/closed mask is derived from the buffer at every
    call, so a loaded state dict can never disagree with it.

    `input_dropout` drops input features (fingerprint bits) before the gate
    product in training, scaling the kept ones by 1 / (1 - p): the gates'
    own regularizer, as 128 x E x d gate weights fit rare bits first.
    """

    def __init__(self, n_tasks: int, in_features: int, n_experts: int, exclusive_expert_task: Tensor,
                 exclusivity: str, generator: torch.Generator, input_dropout: float = 0.0) -> None:
        super().__init__()
        self.input_dropout = input_dropout
        # Small weights: gates start close to uniform over their open experts.
        self.weight = nn.Parameter(torch.empty(n_tasks, in_features, n_experts).normal_(
            0.0, 0.01, generator=generator))
        self.bias = nn.Parameter(torch.zeros(n_tasks, n_experts))
        self.register_buffer("exclusive_expert_task", exclusive_expert_task.clone())
        self.exclusivity = exclusivity
        self.n_tasks = n_tasks

    def open_mask(self, tasks: Tensor | None = None) -> Tensor:
        """`[K, E]` bool: may task k's gate route to expert e."""
        task_ids = torch.arange(self.n_tasks, device=self.exclusive_expert_task.device)
        if tasks is not None:
            task_ids = task_ids[tasks]
        return open_mask(self.exclusive_expert_task, task_ids, self.exclusivity)

    def forward(self, x: Features, tasks: Tensor | None = None) -> Tensor:
        weight, bias = self.weight, self.bias
        if tasks is not None:
            weight, bias = weight[tasks], bias[tasks]
        if self.training and self.input_dropout > 0:
            x = (x.dropout(self.input_dropout) if isinstance(x, SparseRows)
                 else torch.nn.functional.dropout(x, self.input_dropout))
        if isinstance(x, SparseRows):
            logits = x.grouped_matmul(weight) + bias
        else:
            logits = torch.einsum("bd,kde->bke", x, weight) + bias
        return open_softmax(logits, self.open_mask(tasks))


def open_mask(exclusive_expert_task: Tensor, task_ids: Tensor, exclusivity: str) -> Tensor:
    """`[..., K, E]` bool from each expert's task `[..., E]` (-1 = shared):
    may task k's gate route to expert e (see :class:`Gates`)."""
    owner = exclusive_expert_task.unsqueeze(-2)
    is_own = owner == task_ids.unsqueeze(-1)
    if exclusivity == "exclusive":
        return (owner < 0) | is_own
    return ~is_own


def open_softmax(logits: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last axis (E) of gate logits `[B, ..., E]`, closed
    entries (``mask`` False, broadcast over B) at exactly zero."""
    logits = logits.masked_fill(~mask, float("-inf"))
    # The same softmax over E, taken on the [B, E, ...] view: over a short
    # last dim PyTorch's CPU kernel works one E-row at a time; over dim 1
    # it vectorizes across the K tasks (B=256, K=128, E=4: 2.8 -> 0.3 ms).
    return torch.softmax(logits.movedim(-1, 1), dim=1).movedim(1, -1)
