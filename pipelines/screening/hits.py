"""Hit lists from the score files, in one bounded-memory pass.

- ``hits.parquet``: for every assay, the ``top_k`` highest-scoring molecules
  (ties broken by source row, so the result does not depend on the order in
  which Ray delivered blocks). Memory: ``top_k`` candidates per assay.
- ``multi_assay_hits.parquet``: every molecule active in ``min_active_assays``
  or more assays, with how many and which, and its best score among them.
  By default "active" means ranked in the assay's top ``top_k`` (rows sorted
  by assay count, then score): with PCBA's 1-2 % actives a model's
  probabilities seldom reach 0.5, so a fixed cut would leave the view empty.
  Given a probability ``threshold``, it means a score at or above it
  (streamed out as found, in score-file order, so memory stays bounded).
"""
from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.screening.outputs import DOMAIN_FIELDS, HITS_FILE, MULTI_ASSAY_FILE, SingleParquetWriter

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
              top_k: int, threshold: float | None, min_active_assays: int) -> HitsSummary:
    """Write ``hits.parquet`` and ``multi_assay_hits.parquet`` into ``out_dir``
    (``threshold`` None: active means in the assay's top ``top_k``)."""
    top = TopK(top_k, len(assays))
    multi = SingleParquetWriter(out_dir / MULTI_ASSAY_FILE, MULTI_ASSAY_SCHEMA)
    assay_names = np.array(assays, dtype=object)
    multi_rows = 0
    for table in _iter_tables(score_files, ["row", "mol_id", "smiles", *assays]):
        scores = np.column_stack([table[assay].to_numpy() for assay in assays]) \
            if table.num_rows else np.empty((0, len(assays)), np.float32)
        top.update(scores, table["row"].to_numpy())
        if threshold is not None:
            found = _multi_assay_table(table, scores >= threshold, scores, assay_names, min_active_assays)
            multi.write(found)
            multi_rows += found.num_rows
    hits = _hits_table(score_files, assays, top)
    if threshold is None:
        ids, active, scores = _top_k_membership(hits, assays)
        found = _multi_assay_table(ids, active, scores, assay_names, min_active_assays)
        multi.write(found.sort_by([("n_active_assays", "descending"), ("max_score", "descending"),
                                   ("row", "ascending")]))
        multi_rows += found.num_rows
    multi.close()
    pq.write_table(hits, out_dir / HITS_FILE)
    return HitsSummary(hits=hits.num_rows, multi_assay_hits=multi_rows)


def _multi_assay_table(ids: pa.Table, active: np.ndarray, scores: np.ndarray, assay_names: np.ndarray,
                       min_active_assays: int) -> pa.Table:
    """The molecules of ``ids`` (row, mol_id, smiles) active in at least
    ``min_active_assays`` assays; ``active`` and ``scores`` are [rows, assays]."""
    n_active = active.sum(axis=1)
    selected = np.flatnonzero(n_active >= min_active_assays)
    return pa.table({
        "row": ids["row"].take(selected),
        "mol_id": ids["mol_id"].take(selected),
        "smiles": ids["smiles"].take(selected),
        "n_active_assays": n_active[selected].astype(np.int32),
        "active_assays": [assay_names[active[i]].tolist() for i in selected],
        "max_score": np.where(active[selected], scores[selected], -np.inf).max(axis=1, initial=-np.inf)
                     .astype(np.float32),
    }, schema=MULTI_ASSAY_SCHEMA)


def _top_k_membership(hits: pa.Table, assays: Sequence[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """One row per molecule of the hit list (at most top_k x assays, so in
    memory): its ids, in which assays' top K it is, and its scores there."""
    unique_rows, first, inverse = np.unique(hits["row"].to_numpy(), return_index=True, return_inverse=True)
    column = {assay: index for index, assay in enumerate(assays)}
    assay_index = np.array([column[assay] for assay in hits["assay"].to_pylist()], dtype=np.int64)
    active = np.zeros((len(unique_rows), len(assays)), dtype=bool)
    scores = np.zeros((len(unique_rows), len(assays)), dtype=np.float32)
    active[inverse, assay_index] = True
    scores[inverse, assay_index] = hits["score"].to_numpy()
    return hits.select(["row", "mol_id", "smiles"]).take(first), active, scores


def _hits_table(score_files: Sequence[Path], assays: Sequence[str], top: TopK) -> pa.Table:
    """Attach ids, SMILES and (where scored) the nearest training molecule
    to the winning rows (a second pass over a few narrow columns, keeping
    only the at most top_k x assays winners)."""
    wanted = pa.array(np.unique(np.concatenate([np.empty(0, np.int64), *top.rows])))
    schema = pq.read_schema(score_files[0])
    domain = [field for field in DOMAIN_FIELDS if field.name in schema.names]
    columns = ["row", "mol_id", "smiles", *(field.name for field in domain)]
    lookup = pa.concat_tables([
        schema.empty_table().select(columns),
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
        **{field.name: lookup[field.name].take(take) for field in domain},
    }, schema=pa.schema([*HITS_SCHEMA, *domain]))


def _iter_tables(files: Sequence[Path], columns: list[str]) -> Iterator[pa.Table]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])
