"""Shared experts, per-task mixing and per-task towers: the structure MMoE,
MMoEEx and shared bottom have in common, and the one the fast MAML-MTL path
(models/maml.py) exploits."""
from __future__ import annotations

import torch
from torch import Tensor

from models.config import ModelConfig
from models.networks.base import MultiTaskModel
from models.networks.gates import Gates
from models.networks.layers import StackedMLP, Towers
from models.networks.sparse_input import Features


class MixtureOfExpertsModel(MultiTaskModel):
    """y^k = h^k(sum_e g^k_e(x) f_e(x)) (Ma et al. 2018, Eq. 5-6).

    `gates` is None when there is a single expert that every task reads with
    weight 1 (shared bottom). Subclasses only decide the experts and gates.
    The forward pass never expands the trunk to K copies: shared bottom's
    towers read its `[B, h]` output directly, and linear towers read the
    expert outputs before the mixing (Towers.mixture_logits). Only towers
    with a hidden layer after gates need the `[K, B, h]` mixtures, and
    `mix` builds them (the MAML-MTL path uses it too).
    """

    def __init__(self, config: ModelConfig, n_experts: int, gates: Gates | None,
                 generator: torch.Generator) -> None:
        super().__init__(config)
        self.experts = StackedMLP(n_experts, config.n_features, config.expert_hidden,
                                  config.activation, config.dropout, generator)
        self.gates = gates
        self.towers = Towers(config.n_tasks, config.expert_hidden[-1], config.tower_hidden,
                             config.activation, config.dropout, generator)

    @staticmethod
    def mix(weights: Tensor | None, expert_out: Tensor, n_tasks: int) -> Tensor:
        """f^k = sum_e g^k_e f_e -> `[K, B, h]`.

        weights: `[B, K, E]` or None (one expert, weight 1). expert_out:
        `[E, B, h]` (one output for all tasks) or `[E, K, B, h]` (task k's own
        expert outputs, as in the MAML-MTL outer pass).
        """
        if weights is None:
            single = expert_out[0]
            return single.expand(n_tasks, *single.shape) if single.dim() == 2 else single
        if expert_out.dim() == 3:
            return torch.einsum("bke,ebh->kbh", weights, expert_out)
        return torch.einsum("bke,ekbh->kbh", weights, expert_out)

    def forward(self, x: Features) -> Tensor:
        expert_out = self.experts(x)
        if self.gates is None:
            return self.towers.shared_input_logits(expert_out[0])
        weights = self.gates(x)
        if self.towers.hidden is None:
            return self.towers.mixture_logits(weights, expert_out)
        return self.towers(self.mix(weights, expert_out, self.config.n_tasks)).transpose(0, 1)
