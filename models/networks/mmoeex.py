"""MMoEEx: multi-gate mixture of experts with exclusivity.

Aoki, Tung, Oliveira, "Heterogeneous Multi-task Learning with Expert
Diversity" (BIOKDD 2021, arXiv 2106.10595), Sec. 3.1. With alpha = 0 (or
architecture "mmoe") it is MMoE (Ma et al., KDD 2018).
"""
from __future__ import annotations

import torch
from torch import Tensor

from models.config import ModelConfig
from models.networks.gates import Gates, assign_exclusive_experts
from models.networks.mixture import MixtureOfExpertsModel
from models.networks.sparse_input import Features


class MMoEEx(MixtureOfExpertsModel):
    """E dense experts, one softmax gate per task (with the exclusivity mask), K towers."""

    def __init__(self, config: ModelConfig) -> None:
        generator = torch.Generator().manual_seed(config.seed)
        # The assignment has its own generator: it depends on (seed, E, K, alpha)
        # only, not on layer widths.
        assignment = assign_exclusive_experts(config.n_experts, config.n_tasks,
                                              config.n_exclusive_experts,
                                              torch.Generator().manual_seed(config.seed))
        gates = Gates(config.n_tasks, config.n_features, config.n_experts, assignment,
                      config.exclusivity, generator, input_dropout=config.gate_dropout)
        super().__init__(config, config.n_experts, gates, generator)

    def expert_outputs(self, x: Features) -> Tensor:
        return self.experts(x)

    def gate_weights(self, x: Features) -> Tensor:
        return self.gates(x)
