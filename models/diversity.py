"""Expert diversity (Aoki et al. 2021, Sec. 4.4).

d_ij = sqrt(sum_n ||f_i(x_n) - f_j(x_n)||^2) over N samples; D is scaled by
its largest entry and the diversity score is the mean entry of the scaled D
(diagonal included, as the matrix is defined). Distances are accumulated
batch by batch so a whole test split never has to sit in memory.
"""
from __future__ import annotations

import numpy as np
import torch


class ExpertDistanceAccumulator:
    """Streams `[E, B, h]` expert outputs into the squared distances `[E, E]`."""

    def __init__(self) -> None:
        self._squared: np.ndarray | None = None
        self.n_samples = 0

    def update(self, expert_outputs: torch.Tensor | np.ndarray) -> None:
        """Add a batch's sum_n ||f_i(x_n) - f_j(x_n)||^2 for every pair of experts.

        Differences are taken directly (not via |a|^2 + |b|^2 - 2ab, which
        cancels catastrophically when experts are nearly identical)."""
        flat = torch.as_tensor(expert_outputs).detach().to("cpu", torch.float64)
        if flat.dim() != 3:
            raise ValueError(f"expert outputs must be [E, B, h], got {tuple(flat.shape)}")
        self.n_samples += flat.shape[1]
        flat = flat.reshape(flat.shape[0], -1)
        squared = torch.cdist(flat, flat, compute_mode="donot_use_mm_for_euclid_dist").square().numpy()
        if self._squared is None:
            self._squared = np.zeros_like(squared)
        elif self._squared.shape != squared.shape:
            raise ValueError(f"batch has {squared.shape[0]} experts, earlier batches {self._squared.shape[0]}")
        self._squared += squared

    def distance_matrix(self) -> np.ndarray:
        """The scaled D `[E, E]` (all zeros if every expert agrees everywhere)."""
        if self._squared is None:
            raise ValueError("no expert outputs were accumulated")
        distances = np.sqrt(self._squared)
        largest = distances.max()
        return distances / largest if largest > 0 else distances


def expert_distance_matrix(expert_outputs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Scaled distance matrix D `[E, E]` of expert outputs `[E, N, h]`."""
    accumulator = ExpertDistanceAccumulator()
    accumulator.update(expert_outputs)
    return accumulator.distance_matrix()


def diversity_score(distance_matrix: np.ndarray) -> float:
    """Mean entry of the scaled distance matrix (0 = identical experts)."""
    return float(np.mean(distance_matrix))
