"""Sparse input rows for fingerprints, in training and in inference.

A 2048-bit Morgan fingerprint of a drug-like molecule has about 40 bits on,
so the first layer's dense product x W spends 98 % of its multiply-adds on
zeros. As bags of non-zero columns (torch.nn.functional.embedding_bag's
layout), x W is the sum of W's rows at those columns: on a CPU this cuts the
first layers of experts and gates about 3x, and skips unpacking to float.
Only the layers that read the input (StackedLinear with shared input, Gates)
need to know; every other layer sees the usual dense activations.

Training uses the same product: embedding_bag's backward adds each bag's
output gradient (times its value) into the weight rows of that bag's
columns only, so the weight gradient costs B * nnz * n instead of B * d * n
(the rows of absent columns get zeros). The input itself never needs a
gradient, and the layers put no dropout on it, so nothing else changes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

#: Output width per group from which :meth:`SparseRows.stacked_matmul` gives
#: each (group, row) pair its own bag instead of gathering all groups' columns
#: at once. The one gather needs `[G, d, n]` copied to `[d, G * n]` (and its
#: gradient copied back); one bag per pair costs a fixed amount per index
#: and group. Measured on 2 CPU threads, B = 512, d = 1024, 3 % bits on,
#: forward + backward: G x n = 4 x 1500: 26 ms one gather, 16 ms bags per
#: pair; 8 x 500: 13 vs 16 ms; 128 x 32: 16 vs 161 ms.
WIDE_GROUP = 1024


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

    @property
    def shape(self) -> torch.Size:
        """``[B, n_features]``, the shape of the dense matrix these rows stand for."""
        return torch.Size((self.batch_size, self.n_features))

    @property
    def device(self) -> torch.device:
        return self.indices.device

    def __len__(self) -> int:
        """Rows, as ``len`` of the dense matrix (training loops count samples so)."""
        return self.batch_size

    def to_dense(self, dtype: torch.dtype = torch.float32) -> Tensor:
        """The ``[B, n_features]`` matrix (for steps that slice rows)."""
        rows = torch.repeat_interleave(
            torch.arange(self.batch_size, device=self.device),
            torch.diff(self.offsets, append=self.offsets.new_tensor([self.indices.numel()])))
        dense = torch.zeros(self.shape, dtype=dtype, device=self.device)
        values = (torch.ones((), dtype=dtype, device=self.device) if self.values is None
                  else self.values.to(dtype))
        return dense.index_put_((rows, self.indices), values.expand(rows.shape), accumulate=True)

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

    def stacked_matmul(self, weight: Tensor) -> Tensor:
        """``x @ weight[g]`` for every group -> ``[G, B, n]``, group-major as
        StackedLinear lays out its outputs.

        Wide groups (n >= WIDE_GROUP) read ``weight`` as ``[G * d, n]`` rows
        with bag (g, b) holding row b's columns shifted by g * d: no copy of
        the weight forward, and the gradient lands in its `[G, d, n]` layout.
        """
        groups, n_features, n = weight.shape
        if n < WIDE_GROUP:
            return self.grouped_matmul(weight).transpose(0, 1)
        if n_features != self.n_features:
            raise ValueError(f"weight has {n_features} rows for {self.n_features} features")
        shift = torch.arange(groups, device=self.device).unsqueeze(1)
        indices = (self.indices.unsqueeze(0) + shift * n_features).reshape(-1)
        offsets = (self.offsets.unsqueeze(0) + shift * self.indices.numel()).reshape(-1)
        values = None if self.values is None else self.values.to(weight.dtype).repeat(groups)
        out = torch.nn.functional.embedding_bag(indices, weight.reshape(groups * n_features, n),
                                                offsets, mode="sum", per_sample_weights=values)
        return out.view(groups, self.batch_size, n)


#: What a network's forward takes: unpacked fingerprints ``float[B, d]``, or
#: the same rows as :class:`SparseRows`.
Features = Tensor | SparseRows
