"""Streaming reader of fingerprint datasets, shared by training and screening.

Reads one Parquet row group at a time (memory is bounded by a row group and a
batch, not the dataset) and yields packed fingerprints as they are stored;
:func:`featurize.tensors.unpack_fingerprints` unpacks them on the device that
trains, so host-to-device traffic stays 8x smaller than float bits.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurize.dataset import SPLITS, DatasetInfo, read_dataset_info
from featurize.errors import InputDataError

ID_COLUMNS = ("mol_id", "smiles")


@dataclass(frozen=True)
class FingerprintBatch:
    """A batch of rows: ``fp`` uint8[B, n_bytes]; ``labels`` int8[B, K]
    (1 active, 0 inactive, -1 missing) or None for an unlabeled library;
    ``mol_id``/``smiles`` when asked for."""

    fp: np.ndarray
    labels: np.ndarray | None
    mol_id: list[str] | None = None
    smiles: list[str | None] | None = None

    def __len__(self) -> int:
        return len(self.fp)

    @property
    def mask(self) -> np.ndarray | None:
        """True where a label is present."""
        return None if self.labels is None else self.labels >= 0

    @staticmethod
    def concat(batches: Sequence[FingerprintBatch]) -> FingerprintBatch:
        first = batches[0]
        return FingerprintBatch(
            fp=np.concatenate([batch.fp for batch in batches]),
            labels=None if first.labels is None else np.concatenate([b.labels for b in batches]),
            mol_id=None if first.mol_id is None else [i for b in batches for i in b.mol_id],
            smiles=None if first.smiles is None else [s for b in batches for s in b.smiles],
        )

    def slice(self, start: int, stop: int) -> FingerprintBatch:
        return FingerprintBatch(
            fp=self.fp[start:stop],
            labels=None if self.labels is None else self.labels[start:stop],
            mol_id=None if self.mol_id is None else self.mol_id[start:stop],
            smiles=None if self.smiles is None else self.smiles[start:stop],
        )


def iter_batches(dataset: str | os.PathLike[str] | DatasetInfo, *, split: str | None = None,
                 batch_size: int = 1024, columns: Sequence[str] = ID_COLUMNS,
                 shuffle_seed: int | None = None, shuffle_window: int = 4,
                 drop_last: bool = False) -> Iterator[FingerprintBatch]:
    """Yield :class:`FingerprintBatch` es of ``batch_size`` rows.

    ``split``: None for every row, else "train"/"valid"/"test".
    ``columns``: which of ``mol_id``/``smiles`` to load (fp and labels always).
    ``shuffle_seed``: None reads in stored order; a seed shuffles the order
    of row groups and the rows inside a window of ``shuffle_window`` row
    groups (a bounded-memory shuffle, deterministic for the seed).
    """
    info = dataset if isinstance(dataset, DatasetInfo) else read_dataset_info(dataset)
    _check_arguments(info, split, batch_size, columns)
    row_groups = [(shard, group) for shard in info.shards
                  for group in range(pq.ParquetFile(shard).num_row_groups)]
    rng = None if shuffle_seed is None else np.random.default_rng(shuffle_seed)
    if rng is not None:
        row_groups = [row_groups[i] for i in rng.permutation(len(row_groups))]
    read_columns = ["fp", *info.tasks, *columns, *(["split"] if split else [])]

    pending: list[FingerprintBatch] = []
    pending_rows = 0
    window = 1 if rng is None else shuffle_window
    for start in range(0, len(row_groups), window):
        tables = [pq.ParquetFile(shard).read_row_group(group, columns=read_columns)
                  for shard, group in row_groups[start:start + window]]
        table = pa.concat_tables(tables)
        if split:
            table = table.filter(pc.equal(table["split"], split))
        if rng is not None:
            table = table.take(rng.permutation(table.num_rows))
        if not table.num_rows:
            continue
        pending.append(_to_batch(table, info, columns))
        pending_rows += table.num_rows
        if pending_rows >= batch_size:
            merged = FingerprintBatch.concat(pending)
            full = pending_rows - pending_rows % batch_size
            for offset in range(0, full, batch_size):
                yield merged.slice(offset, offset + batch_size)
            pending = [merged.slice(full, pending_rows)] if full < pending_rows else []
            pending_rows -= full
    if pending_rows and not drop_last:
        yield FingerprintBatch.concat(pending)


def read_all(dataset: str | os.PathLike[str] | DatasetInfo, *, split: str | None = None,
             columns: Sequence[str] = ID_COLUMNS) -> FingerprintBatch:
    """Every row (of one split) in one batch: for data that fits in memory."""
    info = dataset if isinstance(dataset, DatasetInfo) else read_dataset_info(dataset)
    batches = list(iter_batches(info, split=split, batch_size=1 << 20, columns=columns))
    if not batches:
        n_tasks = len(info.tasks)
        return FingerprintBatch(
            fp=np.zeros((0, info.spec.n_bytes), np.uint8),
            labels=np.zeros((0, n_tasks), np.int8) if n_tasks else None,
            mol_id=[] if "mol_id" in columns else None,
            smiles=[] if "smiles" in columns else None)
    return FingerprintBatch.concat(batches)


def fixed_binary_to_numpy(column: pa.ChunkedArray | pa.Array, n_bytes: int) -> np.ndarray:
    """A fixed_size_binary(n_bytes) column as uint8[rows, n_bytes], zero-copy
    where the column is one chunk."""
    array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    data = np.frombuffer(array.buffers()[1], dtype=np.uint8)
    start = array.offset * n_bytes
    return data[start:start + len(array) * n_bytes].reshape(len(array), n_bytes)


def _to_batch(table: pa.Table, info: DatasetInfo, columns: Sequence[str]) -> FingerprintBatch:
    labels = (np.column_stack([table[task].to_numpy() for task in info.tasks]).astype(np.int8)
              if info.tasks else None)
    return FingerprintBatch(
        fp=fixed_binary_to_numpy(table["fp"], info.spec.n_bytes),
        labels=labels,
        mol_id=table["mol_id"].to_pylist() if "mol_id" in columns else None,
        smiles=table["smiles"].to_pylist() if "smiles" in columns else None,
    )


def _check_arguments(info: DatasetInfo, split: str | None, batch_size: int,
                     columns: Sequence[str]) -> None:
    if batch_size <= 0:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    unknown = set(columns) - set(ID_COLUMNS)
    if unknown:
        raise ValueError(f"columns may only name {ID_COLUMNS}, got {sorted(unknown)}")
    if split is None:
        return
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    if not info.has_split:
        raise InputDataError(f"{info.path}: dataset has no split column; featurize it "
                             "with --split random or --split scaffold")
