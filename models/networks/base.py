"""The interface every multi-task network implements."""
from __future__ import annotations

from abc import ABC, abstractmethod

from torch import Tensor, nn

from models.config import ModelConfig
from models.networks.sparse_input import Features


class MultiTaskModel(nn.Module, ABC):
    """x `float[B, d]` (unpacked fingerprint bits, or the same rows as
    `SparseRows`) -> logits `float[B, K]`.

    Build one with models.factory.build_model; `.config` is the ModelConfig
    it was built from, enough to rebuild it before loading a state dict.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config

    @abstractmethod
    def forward(self, x: Features) -> Tensor:
        """Logits `[B, K]`, one per task."""

    def expert_outputs(self, x: Features) -> Tensor | None:
        """Expert representations `[E, B, h]`, or None for models without experts."""
        return None

    def gate_weights(self, x: Features) -> Tensor | None:
        """Per-task mixture weights `[B, K, E]` (rows sum to 1), or None without gates."""
        return None
