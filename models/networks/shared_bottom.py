"""Shared bottom (Caruana 1997): one trunk MLP read by K task towers."""
from __future__ import annotations

import torch

from models.config import ModelConfig
from models.networks.mixture import MixtureOfExpertsModel


class SharedBottom(MixtureOfExpertsModel):
    """One trunk of widths `expert_hidden`, K towers: a mixture with a single
    expert and no gates, so it shares the mixture code and its MAML-MTL path.
    It has no experts to report (expert_outputs / gate_weights give None)."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__(config, 1, None, torch.Generator().manual_seed(config.seed))
