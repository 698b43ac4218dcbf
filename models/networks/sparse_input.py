"""Sparse input rows for inference on fingerprints.

A 2048-bit Morgan fingerprint of a drug-like molecule has about 40 bits on,
so the first layer's dense product x W spends 98 % of its multiply-adds on
zeros. As bags of non-zero columns (torch.nn.functional.embedding_bag's
layout), x W is the sum of W's rows at those columns: on a CPU this cuts the
first layers of experts and gates about 3x, and skips unpacking to float.
Only the layers that read the input (StackedLinear with shared input, Gates)
need to know; every other layer sees the usual dense activations.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class SparseRows:
    """``B`` rows of a ``[B, n_features]`` matrix as bags of non-zeros.

    Row b's non-zero columns are ``indices[offsets[b]:offsets[b + 1]]`` (the
    last row runs to the end) with values ``values`` at the same positions,
    or 1 where ``values`` is None (fingerprint bits).
    """

    indices: Tensor
    offsets: Tensor
    values: Tensor | None
    n_features: int

    @classmethod
    def from_dense(cls, x: Tensor) -> SparseRows:
        """The non-zeros of ``x`` ``[B, n_features]`` (any dtype); values are
        kept as float32 unless every non-zero is 1."""
        if x.dim() != 2:
            raise ValueError(f"expected a [B, n_features] matrix, got shape {tuple(x.shape)}")
        rows, columns = x.nonzero(as_tuple=True)
        offsets = torch.searchsorted(rows, torch.arange(x.shape[0], device=x.device))
        values = x[rows, columns]
        binary = bool((values == 1).all())
        return cls(columns, offsets, None if binary else values.to(torch.float32), x.shape[1])

    @property
    def batch_size(self) -> int:
        return self.offsets.shape[0]

    def matmul(self, weight: Tensor) -> Tensor:
        """``x @ weight`` for ``weight`` ``[n_features, n]`` -> ``[B, n]``."""
        if weight.shape[0] != self.n_features:
            raise ValueError(f"weight has {weight.shape[0]} rows for {self.n_features} features")
        return torch.nn.functional.embedding_bag(
            self.indices, weight, self.offsets, mode="sum",
            per_sample_weights=None if self.values is None else self.values.to(weight.dtype))

    def grouped_matmul(self, weight: Tensor) -> Tensor:
        """``x @ weight[g]`` for every group of ``weight`` ``[G, n_features,
        n]`` -> ``[B, G, n]``, with one gather over all groups' columns."""
        groups, n_features, n = weight.shape
        flat = weight.permute(1, 0, 2).reshape(n_features, groups * n)
        return self.matmul(flat).view(self.batch_size, groups, n)


#: What a network's forward takes: unpacked fingerprints ``float[B, d]``, or
#: the same rows as :class:`SparseRows`.
Features = Tensor | SparseRows
