"""Sparse input rows for fingerprints, in training and in inference.

A 2048-bit Morgan fingerprint of a drug-like molecule has about 40 bits on,
so the first layer's dense product x W spends 98 % of its multiply-adds on
zeros. As bags of non-zero columns (torch.nn.functional.embedding_bag's
layout), x W is the sum of W's rows at those columns: on a CPU this cuts the
first layers of experts and gates about 3x, and skips unpacking to float.
Only the layers that read the input (StackedLinear with shared input, Gates)
need to know; every other layer sees the usual dense activations.

Training uses the same product. Its weight gradient x^T dY reads only the
on-bits too: it is the same bag sum over the transposed rows (column i's
bag holds the rows where bit i is on), applied to dY, so it costs nnz * n
instead of B * d * n, and rows of absent columns come out zero. (embedding_bag's
own backward computes the same sum, but zero-fills the gradient, sorts the
indices and scatters into it at every call: 4.1 ms against 2.1 for the bag
sum at B = 512, d = 1024, 3 % bits on, n = 1500, 2 threads.) The input
never needs a gradient; only the gates may put dropout on it
(:meth:`SparseRows.dropout`).
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

#: Output width per group from which :meth:`SparseRows.stacked_matmul` gives
#: each (group, row) pair its own bag instead of gathering all groups' columns
#: at once. The one gather needs `[G, d, n]` copied to `[d, G * n]` (and its
#: gradient copied back); one bag per pair costs a fixed amount per index
#: and group, which narrow groups do not repay. Measured on 2 CPU threads,
#: B = 512, d = 1024, 3 % bits on, forward + backward, one gather against
#: bags per pair: G x n = 128 x 4: 8.8 vs 13.1 ms; 128 x 32: 49 vs 39 ms;
#: 16 x 256: 21.5 vs 14.9 ms; 4 x 1500: 41.6 vs 19.9 ms.
WIDE_GROUP = 32


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
        rows = self._row_of_each_index()
        dense = torch.zeros(self.shape, dtype=dtype, device=self.device)
        values = (torch.ones((), dtype=dtype, device=self.device) if self.values is None
                  else self.values.to(dtype))
        return dense.index_put_((rows, self.indices), values.expand(rows.shape), accumulate=True)

    @cached_property
    def transposed(self) -> SparseRows:
        """The ``[n_features, B]`` transpose as bags: bag i holds the rows
        where column i is non-zero. Built once per batch, on the first
        backward that needs it, and shared by every layer reading the input."""
        order = torch.argsort(self.indices, stable=True)
        counts = torch.bincount(self.indices, minlength=self.n_features)
        return SparseRows(self._row_of_each_index()[order], torch.cumsum(counts, 0) - counts,
                          None if self.values is None else self.values[order], self.batch_size)

    def block_diagonal(self, groups: int) -> SparseRows:
        """``groups`` copies of these rows on the diagonal of a ``[G * B, G *
        n_features]`` matrix: bag (g, b) is row b with its columns shifted by
        g * n_features. Its transpose is ``transposed.block_diagonal(groups)``."""
        shift = torch.arange(groups, device=self.device).unsqueeze(1)
        return SparseRows((self.indices + shift * self.n_features).reshape(-1),
                          (self.offsets + shift * self.indices.numel()).reshape(-1),
                          None if self.values is None else self.values.repeat(groups),
                          groups * self.n_features)

    def dropout(self, p: float) -> SparseRows:
        """``torch.nn.functional.dropout`` of the dense rows: each non-zero
        kept with probability 1 - p (torch's global generator) and scaled by
        1 / (1 - p); a row may lose every non-zero."""
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropout probability must be in [0, 1), got {p}")
        kept = torch.rand(self.indices.shape, device=self.device) >= p
        # Row b's kept non-zeros start after those kept before offsets[b].
        kept_before = torch.nn.functional.pad(torch.cumsum(kept, 0), (1, 0))
        values = torch.ones(self.indices.shape, device=self.device) if self.values is None else self.values
        return SparseRows(self.indices[kept], kept_before[self.offsets],
                          values[kept] / (1.0 - p), self.n_features)

    def bag_sum(self, table: Tensor) -> Tensor:
        """Row b of the result is the sum of ``table``'s rows at row b's
        columns, times their values: ``x @ table`` with no gradient path of
        its own (the products below give it one)."""
        return torch.nn.functional.embedding_bag(
            self.indices, table, self.offsets, mode="sum",
            per_sample_weights=None if self.values is None else self.values.to(table.dtype))

    def _row_of_each_index(self) -> Tensor:
        sizes = torch.diff(self.offsets, append=self.offsets.new_tensor([self.indices.numel()]))
        return torch.repeat_interleave(torch.arange(self.batch_size, device=self.device), sizes)

    def matmul(self, weight: Tensor) -> Tensor:
        """``x @ weight`` for ``weight`` ``[n_features, n]`` -> ``[B, n]``."""
        if weight.shape[0] != self.n_features:
            raise ValueError(f"weight has {weight.shape[0]} rows for {self.n_features} features")
        return _BagProduct.apply(weight, self, 1)

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
        through :meth:`block_diagonal` (bag (g, b) holds row b's columns
        shifted by g * d): no copy of the weight forward, and the gradient
        lands in its `[G, d, n]` layout.
        """
        groups, n_features, n = weight.shape
        if n < WIDE_GROUP:
            return self.grouped_matmul(weight).transpose(0, 1)
        if n_features != self.n_features:
            raise ValueError(f"weight has {n_features} rows for {self.n_features} features")
        out = _BagProduct.apply(weight.reshape(groups * n_features, n), self, groups)
        return out.view(groups, self.batch_size, n)


class _BagProduct(torch.autograd.Function):
    """``rows.block_diagonal(groups) @ table`` (plain ``rows @ table`` for one
    group), with the table's gradient as the bag sum over the transpose
    (module docstring). First-order only: nothing differentiates a weight
    gradient here (MAML-MTL reads dense rows)."""

    @staticmethod
    def forward(ctx: FunctionCtx, table: Tensor, rows: SparseRows, groups: int) -> Tensor:
        ctx.rows, ctx.groups = rows, groups
        return (rows if groups == 1 else rows.block_diagonal(groups)).bag_sum(table)

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor, None, None]:
        columns = ctx.rows.transposed
        if ctx.groups > 1:
            columns = columns.block_diagonal(ctx.groups)
        return columns.bag_sum(grad.contiguous()), None, None


#: What a network's forward takes: unpacked fingerprints ``float[B, d]``, or
#: the same rows as :class:`SparseRows`.
Features = Tensor | SparseRows
