"""Hit lists from the score files, in one bounded-memory pass.

- ``hits.parquet``: for every assay, the ``top_k`` highest-scoring molecules
  (ties broken by source row, so the result does not depend on the order in
  which Ray delivered blocks). Memory: ``top_k`` candidates per assay.
- ``multi_assay_hits.parquet``: every molecule scoring at least
  ``threshold`` in ``min_active_assays`` or more assays (streamed out as it is
  found, in score-file order), with how many and which assays.
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.screening.outputs import HITS_FILE, MULTI_ASSAY_FILE, SingleParquetWriter

READ_ROWS = 65_536

HITS_SCHEMA = pa.schema([
    pa.field("assay", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("mol_id", pa.string()),
    pa.field("smiles", pa.string()),
    pa.field("score", pa.float32(), nullable=False),
])

MULTI_ASSAY_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("mol_id", pa.string()),
    pa.field("smiles", pa.string()),
    pa.field("n_active_assays", pa.int32(), nullable=False),
    pa.field("active_assays", pa.list_(pa.string()), nullable=False),
    pa.field("max_score", pa.float32(), nullable=False),
])


@dataclass(frozen=True)
class HitsSummary:
    hits: int
    multi_assay_hits: int


class TopK:
    """The ``k`` best (score, row) pairs of each of ``n_assays`` columns,
    updated batch by batch: highest score first, lowest row on ties."""

    def __init__(self, k: int, n_assays: int):
        self.k = k
        self.scores = [np.empty(0, np.float32) for _ in range(n_assays)]
        self.rows = [np.empty(0, np.int64) for _ in range(n_assays)]

    def update(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """``scores``: float32 [B, n_assays]; ``rows``: int64 [B]."""
        for assay in range(scores.shape[1]):
            column = scores[:, assay]
            if len(column) > self.k:  # everything that can still make the cut, ties included
                cutoff = np.partition(column, len(column) - self.k)[len(column) - self.k]
                keep = column >= cutoff
                column, batch_rows = column[keep], rows[keep]
            else:
                batch_rows = rows
            merged_scores = np.concatenate([self.scores[assay], column])
            merged_rows = np.concatenate([self.rows[assay], batch_rows])
            order = np.lexsort((merged_rows, -merged_scores))[:self.k]
            self.scores[assay], self.rows[assay] = merged_scores[order], merged_rows[order]


def rank_hits(score_files: Sequence[Path], assays: Sequence[str], out_dir: Path, *,
              top_k: int, threshold: float, min_active_assays: int) -> HitsSummary:
    """Write ``hits.parquet`` and ``multi_assay_hits.parquet`` into ``out_dir``."""
    top = TopK(top_k, len(assays))
    multi = SingleParquetWriter(out_dir / MULTI_ASSAY_FILE, MULTI_ASSAY_SCHEMA)
    assay_names = np.array(assays, dtype=object)
    multi_rows = 0
    for table in _iter_tables(score_files, ["row", "mol_id", "smiles", *assays]):
        scores = np.column_stack([table[assay].to_numpy() for assay in assays]) \
            if table.num_rows else np.empty((0, len(assays)), np.float32)
        rows = table["row"].to_numpy()
        top.update(scores, rows)
        active = scores >= threshold
        n_active = active.sum(axis=1)
        selected = np.flatnonzero(n_active >= min_active_assays)
        if len(selected):
            multi.write(pa.table({
                "row": rows[selected],
                "mol_id": table["mol_id"].take(selected),
                "smiles": table["smiles"].take(selected),
                "n_active_assays": n_active[selected].astype(np.int32),
                "active_assays": [assay_names[active[i]].tolist() for i in selected],
                "max_score": scores[selected].max(axis=1),
            }))
            multi_rows += len(selected)
    multi.close()
    hits = _hits_table(score_files, assays, top)
    pq.write_table(hits, out_dir / HITS_FILE)
    return HitsSummary(hits=hits.num_rows, multi_assay_hits=multi_rows)


def _hits_table(score_files: Sequence[Path], assays: Sequence[str], top: TopK) -> pa.Table:
    """Attach ids and SMILES to the winning rows (a second pass over two
    narrow columns, keeping only the at most top_k x assays winners)."""
    wanted = pa.array(np.unique(np.concatenate([np.empty(0, np.int64), *top.rows])))
    columns = ["row", "mol_id", "smiles"]
    lookup = pa.concat_tables([
        pq.read_schema(score_files[0]).empty_table().select(columns),
        *(table.filter(pc.is_in(table["row"], value_set=wanted))
          for table in _iter_tables(score_files, columns)),
    ])
    position = {row: index for index, row in enumerate(lookup["row"].to_pylist())}
    assay_col, rank_col, row_col, score_col = [], [], [], []
    for assay, scores, rows in zip(assays, top.scores, top.rows):
        assay_col += [assay] * len(rows)
        rank_col += range(1, len(rows) + 1)
        row_col += rows.tolist()
        score_col.append(scores)
    take = pa.array([position[row] for row in row_col], pa.int64())
    return pa.table({
        "assay": pa.array(assay_col, pa.string()),
        "rank": pa.array(rank_col, pa.int32()),
        "row": pa.array(row_col, pa.int64()),
        "mol_id": lookup["mol_id"].take(take),
        "smiles": lookup["smiles"].take(take),
        "score": pa.array(np.concatenate([np.empty(0, np.float32), *score_col]), pa.float32()),
    }, schema=HITS_SCHEMA)


def _iter_tables(files: Sequence[Path], columns: list[str]) -> Iterator[pa.Table]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])
