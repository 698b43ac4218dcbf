"""Single-task baseline: K independent networks, the reference of the Delta metric."""
from __future__ import annotations

import torch
from torch import Tensor

from models.config import ModelConfig
from models.networks.base import MultiTaskModel
from models.networks.layers import StackedMLP, Towers
from models.networks.sparse_input import Features


class SingleTaskNets(MultiTaskModel):
    """Task k has its own trunk (widths `expert_hidden`) and tower; the K nets
    are stacked along a task axis and run as one batched matmul per layer.

    Every parameter tensor's leading axis is the task, so task k's loss
    reaches only slice k: MAML-MTL uses that (`task_separable`).
    """

    task_separable = True

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config)
        generator = torch.Generator().manual_seed(config.seed)
        self.trunks = StackedMLP(config.n_tasks, config.n_features, config.expert_hidden,
                                 config.activation, config.dropout, generator)
        self.towers = Towers(config.n_tasks, config.expert_hidden[-1], config.tower_hidden,
                             config.activation, config.dropout, generator)

    def forward(self, x: Features) -> Tensor:
        return self.towers(self.trunks(x)).transpose(0, 1)
