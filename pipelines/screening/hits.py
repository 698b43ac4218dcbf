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

With an ensemble's spread (:class:`HitSpread`), hits.parquet carries the
``spread`` of each hit's score (the members' standard deviation) and the
multi-assay view the ``max_spread`` over a molecule's active assays; with a
spread limit (``screen --max-spread``) a (molecule, assay) pair whose spread
exceeds it is not a hit: it leaves the assay's list (ranks keep their place
in the model's ranking) and the molecule's active assays.

Both carry ``alerts``, the structural alerts of each molecule
(:mod:`pipelines.screening.alerts`). With ``exclude_alerts`` flagged
molecules are left out of the ranking: each assay's list holds its
``top_k`` best unflagged molecules, found by paging down the ranking (a pool
of ``2 x top_k`` candidates, then pages twice as deep, at most
:data:`MAX_PAGE`, over the assays still short) so memory stays bounded and
the result is the same as filtering a full sort. Alerts are remembered per
distinct SMILES checked (hit lists, pages, the multi-assay view): memory in
proportion to the alert work (milliseconds a molecule), not to the library.
"""
from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipelines.screening.alerts import AlertCache
from pipelines.screening.outputs import DOMAIN_FIELDS, HITS_FILE, MULTI_ASSAY_FILE, SingleParquetWriter
from pipelines.serving.applicability_domain import (
    IN_TRAINING_SET_COLUMN,
    NN_MOL_ID_COLUMN,
    NN_SIMILARITY_COLUMN,
    Neighbours,
)

#: The nearest training molecule of each SMILES (a screen's hits, --domain hits).
NearestBySmiles = Callable[[Sequence[str]], Neighbours]
#: An ensemble's spread of each SMILES' scores, float32 [n, screened assays]
#: (NaN rows where a SMILES does not featurize).
SpreadBySmiles = Callable[[Sequence[str]], np.ndarray]
SPREAD_FIELD = pa.field("spread", pa.float32())
MAX_SPREAD_FIELD = pa.field("max_spread", pa.float32())

READ_ROWS = 65_536
MAX_PAGE = 65_536  # deepest page of candidates per assay when excluding alerts
ALERTS_FIELD = pa.field("alerts", pa.list_(pa.string()), nullable=False)

HITS_SCHEMA = pa.schema([
    pa.field("assay", pa.string(), nullable=False),
    pa.field("rank", pa.int32(), nullable=False),
    pa.field("row", pa.int64(), nullable=False),
    pa.field("mol_id", pa.string()),
    pa.field("smiles", pa.string()),
    pa.field("score", pa.float32(), nullable=False),
    ALERTS_FIELD,
])

MULTI_ASSAY_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("mol_id", pa.string()),
    pa.field("smiles", pa.string()),
    pa.field("n_active_assays", pa.int32(), nullable=False),
    pa.field("active_assays", pa.list_(pa.string()), nullable=False),
    pa.field("max_score", pa.float32(), nullable=False),
    ALERTS_FIELD,
])


@dataclass(frozen=True)
class HitsSummary:
    hits: int
    multi_assay_hits: int
    hits_with_alerts: int  # rows of hits.parquet with at least one alert
    excluded_for_alerts: int  # distinct flagged molecules skipped (exclude_alerts)
    dropped_for_spread: int = 0  # (molecule, assay) hits over the spread limit


class HitSpread:
    """An ensemble's spread of hit molecules' scores, computed once per
    distinct SMILES (hit lists and multi-assay view share it), and the
    limit above which a hit is dropped (None: none is)."""

    def __init__(self, spread: SpreadBySmiles, n_assays: int, limit: float | None = None) -> None:
        self._spread, self.n_assays, self.limit = spread, n_assays, limit
        self._known: dict[str, np.ndarray] = {}

    def of(self, smiles: Sequence[str | None]) -> np.ndarray:
        """float32 [len(smiles), assays]: each molecule's spread per screened assay."""
        new = [text for text in dict.fromkeys(smiles) if text is not None and text not in self._known]
        if new:
            self._known.update(zip(new, self._spread(new)))
        missing = np.full(self.n_assays, np.nan, np.float32)
        return np.array([self._known.get(text, missing) if text is not None else missing
                         for text in smiles], np.float32).reshape(len(smiles), self.n_assays)

    def agreed(self, spread: np.ndarray) -> np.ndarray:
        """Which spreads are within the limit (all without one)."""
        return np.ones(spread.shape, bool) if self.limit is None else spread <= self.limit


class TopK:
    """The ``k`` best (score, row) pairs of each of ``n_assays`` columns,
    updated batch by batch: highest score first, lowest row on ties.

    ``after``: per assay, a (score, row) pair; only pairs ranked after it
    count (the next page of a ranking already read down to it)."""

    def __init__(self, k: int, n_assays: int, after: tuple[np.ndarray, np.ndarray] | None = None):
        self.k = k
        self.after = after
        self.scores = [np.empty(0, np.float32) for _ in range(n_assays)]
        self.rows = [np.empty(0, np.int64) for _ in range(n_assays)]

    def update(self, scores: np.ndarray, rows: np.ndarray) -> None:
        """``scores``: float32 [B, n_assays]; ``rows``: int64 [B]."""
        for assay in range(scores.shape[1]):
            column, column_rows = scores[:, assay], rows
            if self.after is not None:
                last_score, last_row = self.after[0][assay], self.after[1][assay]
                later = (column < last_score) | ((column == last_score) & (rows > last_row))
                column, column_rows = column[later], rows[later]
            if len(column) > self.k:  # everything that can still make the cut, ties included
                cutoff = np.partition(column, len(column) - self.k)[len(column) - self.k]
                keep = column >= cutoff
                column, column_rows = column[keep], column_rows[keep]
            merged_scores = np.concatenate([self.scores[assay], column])
            merged_rows = np.concatenate([self.rows[assay], column_rows])
            order = np.lexsort((merged_rows, -merged_scores))[:self.k]
            self.scores[assay], self.rows[assay] = merged_scores[order], merged_rows[order]


def rank_hits(score_files: Sequence[Path], assays: Sequence[str], out_dir: Path, *,
              top_k: int, threshold: float | None, min_active_assays: int,
              exclude_alerts: bool = False, alerts: AlertCache | None = None,
              nearest: NearestBySmiles | None = None, spread: HitSpread | None = None) -> HitsSummary:
    """Write ``hits.parquet`` and ``multi_assay_hits.parquet`` into ``out_dir``
    (``threshold`` None: active means in the assay's top ``top_k``;
    ``exclude_alerts``: molecules with alerts are left out of both).

    Where the score files carry the domain columns, both files do too:
    ``nearest`` searches the hits' nearest training molecules by SMILES
    (the score files then hold them for a sample only, ``--domain hits``);
    without it they are read from the score files. ``spread``: an
    ensemble's, as the module docstring says."""
    alerts = alerts if alerts is not None else AlertCache()
    domain = HitDomain.of(score_files, nearest)
    top = TopK(2 * top_k if exclude_alerts else top_k, len(assays))
    multi = SingleParquetWriter(out_dir / MULTI_ASSAY_FILE, pa.schema(
        [*MULTI_ASSAY_SCHEMA, *domain.fields, *([MAX_SPREAD_FIELD] if spread else [])]))
    assay_names = np.array(assays, dtype=object)
    multi_rows = 0
    skipped: set[int] = set()  # flagged molecules left out (exclude_alerts)
    for table in _iter_tables(score_files, ["row", "mol_id", "smiles", *assays, *domain.names]):
        scores = _score_matrix(table, assays)
        top.update(scores, table["row"].to_numpy())
        if threshold is not None:
            found = _multi_assay_table(table, scores >= threshold, scores, assay_names,
                                       min_active_assays, alerts, domain, spread)
            if exclude_alerts:
                flagged = pc.list_value_length(found["alerts"]).to_numpy() > 0
                skipped.update(found["row"].to_numpy()[flagged].tolist())
                found = found.filter(pa.array(~flagged))
            multi.write(found)
            multi_rows += found.num_rows
    if exclude_alerts:
        winner_scores, winner_rows = _best_unflagged(score_files, assays, top, top_k, alerts, skipped)
    else:
        winner_scores, winner_rows = top.scores, top.rows
    hits = _hits_table(score_files, assays, winner_scores, winner_rows, alerts, domain)
    dropped = 0
    if spread is not None:
        hits, dropped = _with_spread(hits, assays, spread)
    if threshold is None:
        ids, active, scores = _top_k_membership(hits, assays, domain.names)
        found = _multi_assay_table(ids, active, scores, assay_names, min_active_assays, alerts,
                                   domain.as_read(), spread)
        multi.write(found.sort_by([("n_active_assays", "descending"), ("max_score", "descending"),
                                   ("row", "ascending")]))
        multi_rows += found.num_rows
    multi.close()
    pq.write_table(hits, out_dir / HITS_FILE)
    with_alerts = int((pc.list_value_length(hits["alerts"]).to_numpy() > 0).sum())
    return HitsSummary(hits=hits.num_rows, multi_assay_hits=multi_rows,
                       hits_with_alerts=with_alerts, excluded_for_alerts=len(skipped),
                       dropped_for_spread=dropped)


def _with_spread(hits: pa.Table, assays: Sequence[str], spread: HitSpread) -> tuple[pa.Table, int]:
    """The hit list with each hit's spread, less the hits over the limit
    (and how many those were)."""
    column = {assay: index for index, assay in enumerate(assays)}
    matrix = spread.of(hits["smiles"].to_pylist())
    values = matrix[np.arange(hits.num_rows), [column[assay] for assay in hits["assay"].to_pylist()]]
    hits = hits.append_column(SPREAD_FIELD, pa.array(values, pa.float32()))
    kept = spread.agreed(values)
    return hits.filter(pa.array(kept)), int((~kept).sum())


def _best_unflagged(score_files: Sequence[Path], assays: Sequence[str], pool: TopK, top_k: int,
                    alerts: AlertCache, skipped: set[int]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Each assay's ``top_k`` best molecules without alerts (scores, rows).

    ``pool`` is the first page of every assay's ranking. Pages are read
    down the ranking, twice as deep each time, for the assays still short,
    until each has ``top_k`` or its ranking ends (a page that is not full).
    Flagged molecules ranked above an assay's last kept one go to ``skipped``."""
    kept_scores: list[list[np.ndarray]] = [[] for _ in assays]
    kept_rows: list[list[np.ndarray]] = [[] for _ in assays]
    have = [0] * len(assays)
    pending = list(range(len(assays)))  # the assays of ``pool``, in its column order
    while True:
        smiles = _smiles_by_row(score_files, np.concatenate([np.empty(0, np.int64), *pool.rows]))
        alerts.alerts(list(smiles.values()))  # every new molecule of the page in one threaded call
        short = []
        for slot, assay in enumerate(pending):
            rows, scores = pool.rows[slot], pool.scores[slot]
            clean = ~alerts.flagged([smiles[row] for row in rows.tolist()])
            need = top_k - have[assay]
            chosen = np.flatnonzero(clean)[:need]
            kept_scores[assay].append(scores[chosen])
            kept_rows[assay].append(rows[chosen])
            have[assay] += len(chosen)
            passed = chosen[-1] + 1 if len(chosen) == need else len(rows)
            skipped.update(rows[:passed][~clean[:passed]].tolist())
            if have[assay] < top_k and len(rows) == pool.k:
                short.append(slot)
        if not short:
            break
        after = (np.array([pool.scores[slot][-1] for slot in short], np.float32),
                 np.array([pool.rows[slot][-1] for slot in short], np.int64))
        pending = [pending[slot] for slot in short]
        columns = [assays[assay] for assay in pending]
        pool = TopK(max(pool.k, min(2 * pool.k, MAX_PAGE)), len(pending), after)
        for table in _iter_tables(score_files, ["row", *columns]):
            pool.update(_score_matrix(table, columns), table["row"].to_numpy())
    return ([np.concatenate([np.empty(0, np.float32), *parts]) for parts in kept_scores],
            [np.concatenate([np.empty(0, np.int64), *parts]) for parts in kept_rows])


def _score_matrix(table: pa.Table, assays: Sequence[str]) -> np.ndarray:
    """float32 [rows, assays] of a score table."""
    if not table.num_rows:
        return np.empty((0, len(assays)), np.float32)
    return np.column_stack([table[assay].to_numpy() for assay in assays])


def _multi_assay_table(ids: pa.Table, active: np.ndarray, scores: np.ndarray, assay_names: np.ndarray,
                       min_active_assays: int, alerts: AlertCache, domain: HitDomain,
                       spread: HitSpread | None = None) -> pa.Table:
    """The molecules of ``ids`` (row, mol_id, smiles, the domain's columns)
    active in at least ``min_active_assays`` assays; ``active`` and
    ``scores`` are [rows, assays]. With ``spread`` an assay counts only where
    the spread is within its limit, and ``max_spread`` is the largest over
    the active assays."""
    n_active = active.sum(axis=1)
    selected = np.flatnonzero(n_active >= min_active_assays)
    extra: dict[str, np.ndarray] = {}
    if spread is not None:
        spreads = spread.of(ids["smiles"].take(selected).to_pylist())
        active = active.copy()
        active[selected] &= spread.agreed(spreads)
        agreed = active[selected].sum(axis=1) >= min_active_assays
        selected, spreads = selected[agreed], spreads[agreed]
        extra[MAX_SPREAD_FIELD.name] = np.where(active[selected], spreads, -np.inf).max(
            axis=1, initial=-np.inf).astype(np.float32)
        n_active = active.sum(axis=1)
    smiles = ids["smiles"].take(selected)
    return pa.table({
        "row": ids["row"].take(selected),
        "mol_id": ids["mol_id"].take(selected),
        "smiles": smiles,
        "n_active_assays": n_active[selected].astype(np.int32),
        "active_assays": [assay_names[active[i]].tolist() for i in selected],
        "max_score": np.where(active[selected], scores[selected], -np.inf).max(axis=1, initial=-np.inf)
                     .astype(np.float32),
        "alerts": alerts.alerts(smiles.to_pylist()),
        **domain.columns(ids.take(selected)),
        **extra,
    }, schema=pa.schema([*MULTI_ASSAY_SCHEMA, *domain.fields, *([MAX_SPREAD_FIELD] if spread else [])]))


def _top_k_membership(hits: pa.Table, assays: Sequence[str],
                      domain_names: Sequence[str]) -> tuple[pa.Table, np.ndarray, np.ndarray]:
    """One row per molecule of the hit list (at most top_k x assays, so in
    memory): its ids, in which assays' top K it is, and its scores there."""
    unique_rows, first, inverse = np.unique(hits["row"].to_numpy(), return_index=True, return_inverse=True)
    column = {assay: index for index, assay in enumerate(assays)}
    assay_index = np.array([column[assay] for assay in hits["assay"].to_pylist()], dtype=np.int64)
    active = np.zeros((len(unique_rows), len(assays)), dtype=bool)
    scores = np.zeros((len(unique_rows), len(assays)), dtype=np.float32)
    active[inverse, assay_index] = True
    scores[inverse, assay_index] = hits["score"].to_numpy()
    return hits.select(["row", "mol_id", "smiles", *domain_names]).take(first), active, scores


def _lookup(score_files: Sequence[Path], rows: np.ndarray, columns: Sequence[str]) -> pa.Table:
    """``columns`` (row among them) of ``rows``: a pass over those narrow
    columns, keeping only the rows asked for."""
    wanted = pa.array(np.unique(rows))
    schema = pq.read_schema(score_files[0])
    columns = list(columns)
    return pa.concat_tables([
        schema.empty_table().select(columns),
        *(table.filter(pc.is_in(table["row"], value_set=wanted))
          for table in _iter_tables(score_files, columns)),
    ])


def _smiles_by_row(score_files: Sequence[Path], rows: np.ndarray) -> dict[int, str | None]:
    lookup = _lookup(score_files, rows, ["row", "smiles"])
    return dict(zip(lookup["row"].to_pylist(), lookup["smiles"].to_pylist()))


def _hits_table(score_files: Sequence[Path], assays: Sequence[str], scores: Sequence[np.ndarray],
                rows: Sequence[np.ndarray], alerts: AlertCache, domain: HitDomain) -> pa.Table:
    """The hit list from each assay's ranked (scores, rows), with ids,
    SMILES, alerts and (with a domain) the nearest training molecule attached."""
    lookup = _lookup(score_files, np.concatenate([np.empty(0, np.int64), *rows]),
                     ["row", "mol_id", "smiles", *domain.names])
    position = {row: index for index, row in enumerate(lookup["row"].to_pylist())}
    assay_col, rank_col, row_col = [], [], []
    for assay, assay_rows in zip(assays, rows):
        assay_col += [assay] * len(assay_rows)
        rank_col += range(1, len(assay_rows) + 1)
        row_col += assay_rows.tolist()
    take = pa.array([position[row] for row in row_col], pa.int64())
    smiles = lookup["smiles"].take(take)
    found = domain.columns(lookup)
    return pa.table({
        "assay": pa.array(assay_col, pa.string()),
        "rank": pa.array(rank_col, pa.int32()),
        "row": pa.array(row_col, pa.int64()),
        "mol_id": lookup["mol_id"].take(take),
        "smiles": smiles,
        "score": pa.array(np.concatenate([np.empty(0, np.float32), *scores]), pa.float32()),
        "alerts": alerts.alerts(smiles.to_pylist()),
        **{name: column.take(take) for name, column in found.items()},
    }, schema=pa.schema([*HITS_SCHEMA, *domain.fields]))


@dataclass(frozen=True)
class HitDomain:
    """The domain columns of hit molecules (none for a model without its
    training domain): searched by SMILES with ``nearest`` where given
    (``in_training_set`` always comes from the score files: every row has
    it, exactly), else as the score files hold them."""

    fields: list[pa.Field]
    nearest: NearestBySmiles | None = None

    @classmethod
    def of(cls, score_files: Sequence[Path], nearest: NearestBySmiles | None) -> HitDomain:
        names = pq.read_schema(score_files[0]).names
        fields = [field for field in DOMAIN_FIELDS if field.name in names]
        return cls(fields, nearest if fields else None)

    @property
    def names(self) -> list[str]:
        return [field.name for field in self.fields]

    def as_read(self) -> HitDomain:
        """This domain, taking the columns of tables that already hold them."""
        return replace(self, nearest=None)

    def columns(self, ids: pa.Table) -> dict[str, pa.Array]:
        """The domain columns of ``ids`` (smiles and the domain's columns), by name."""
        if self.nearest is None:
            return {name: ids[name] for name in self.names}
        smiles = ids["smiles"].to_pylist()
        first = {text: index for index, text in enumerate(dict.fromkeys(smiles))}
        found = self.nearest(list(first))
        position = pa.array([first[text] for text in smiles], pa.int64())
        similarity = pa.array(found.similarity, pa.float32(), mask=np.isnan(found.similarity))
        return {NN_SIMILARITY_COLUMN: similarity.take(position),
                NN_MOL_ID_COLUMN: pa.array(found.mol_id, pa.string()).take(position),
                IN_TRAINING_SET_COLUMN: ids[IN_TRAINING_SET_COLUMN]}


def _iter_tables(files: Sequence[Path], columns: list[str]) -> Iterator[pa.Table]:
    for path in files:
        for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS, columns=columns):
            yield pa.Table.from_batches([batch])
