"""A screening's score and reject shards, committed together every few tens
of thousands of library rows, so a killed screen keeps what it committed.

Each part is written as hidden ``.tmp`` files and committed by renaming:
first its rejects (``rejects/part-NNNNN.parquet``, possibly empty), then its
scores (``scores/part-NNNNN.parquet``), so a score part on disk means the
whole part is. Opening the folder again (the same screening run again after
a kill) drops what was never committed and reports the rows that were
(:meth:`ScoreParts.committed`); the new run scores only the others and
adds parts after the last one. At the end the reject parts are merged, in
row order, into ``rejects.parquet``.
"""
from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurize.dataset import REJECTS_SCHEMA
from pipelines.names import SCREEN_ROWS_PER_PART
from pipelines.screening.outputs import SCORES_DIR

REJECT_PARTS_DIR = "rejects"
_PART = re.compile(r"part-(\d{5,})\.parquet")


@dataclass(frozen=True)
class CommittedRows:
    """What earlier runs of a screening committed: every row they accounted
    for (scored or rejected), and how many of each."""

    rows: np.ndarray
    scored: int
    rejected: int

    def mask(self) -> np.ndarray | None:
        """bool[max row + 1], True where a row is done; None when none is."""
        if not len(self.rows):
            return None
        done = np.zeros(int(self.rows.max()) + 1, dtype=bool)
        done[self.rows] = True
        return done


class ScoreParts:
    """Writes the parts of one screening under ``folder`` (see the module docstring)."""

    def __init__(self, folder: Path, schema: pa.Schema, rows_per_part: int = SCREEN_ROWS_PER_PART) -> None:
        if rows_per_part < 1:
            raise ValueError(f"rows_per_part must be >= 1, got {rows_per_part}")
        self.scores_dir, self.rejects_dir = folder / SCORES_DIR, folder / REJECT_PARTS_DIR
        self.schema, self.rows_per_part = schema, rows_per_part
        for directory in (self.scores_dir, self.rejects_dir):
            directory.mkdir(parents=True, exist_ok=True)
            for leftover in directory.glob(".*.tmp"):  # a part being written when the job died
                leftover.unlink()
        committed = {self._index(path) for path in self.scores_dir.glob("part-*.parquet")}
        for path in self.rejects_dir.glob("part-*.parquet"):
            if self._index(path) not in committed:  # renamed just before the kill, its scores not
                path.unlink()
        self._next = max(committed, default=-1) + 1
        self._writers: tuple[pq.ParquetWriter, pq.ParquetWriter] | None = None
        self._rows = 0

    @property
    def score_files(self) -> list[Path]:
        return sorted(self.scores_dir.glob("part-*.parquet"))

    def committed(self) -> CommittedRows:
        """The rows of the parts committed so far (by earlier runs, when called first)."""
        scored = [pq.read_table(path, columns=["row"])["row"].to_numpy() for path in self.score_files]
        rejected = [pq.read_table(path, columns=["row"])["row"].to_numpy()
                    for path in sorted(self.rejects_dir.glob("part-*.parquet"))]
        rows = np.concatenate([np.empty(0, np.int64), *scored, *rejected])
        return CommittedRows(rows, sum(map(len, scored)), sum(map(len, rejected)))

    def write(self, scores: pa.Table, rejects: pa.Table | None = None) -> None:
        """Append scored rows (``schema``) and rejected rows (row, raw, mol_id,
        reason); the part is committed once it holds ``rows_per_part`` rows."""
        if self._writers is None:
            self._writers = (pq.ParquetWriter(self._temporary(self.scores_dir), self.schema,
                                              use_dictionary=non_float_columns(self.schema)),
                             pq.ParquetWriter(self._temporary(self.rejects_dir), REJECTS_SCHEMA))
        score_writer, reject_writer = self._writers
        if scores.num_rows:
            score_writer.write_table(scores.cast(self.schema))
        if rejects is not None and rejects.num_rows:
            reject_writer.write_table(rejects.cast(REJECTS_SCHEMA))
        self._rows += scores.num_rows + (0 if rejects is None else rejects.num_rows)
        if self._rows >= self.rows_per_part:
            self._commit()

    def close(self) -> None:
        """Commit the last part; with no part at all, an empty one (a readable
        file with the schema)."""
        if self._writers is None and not self.score_files:
            self.write(self.schema.empty_table())  # opens an empty part
        if self._writers is not None:
            self._commit()

    def merge_rejects(self, path: Path) -> int:
        """Write every rejected row, in row order, to ``path``; return how many."""
        parts = [pq.read_table(part) for part in sorted(self.rejects_dir.glob("part-*.parquet"))]
        rejects = pa.concat_tables([REJECTS_SCHEMA.empty_table(), *parts]).sort_by("row")
        pq.write_table(rejects, path)
        shutil.rmtree(self.rejects_dir)
        return rejects.num_rows

    def _commit(self) -> None:
        for writer in self._writers:
            writer.close()
        for directory in (self.rejects_dir, self.scores_dir):  # scores last: they mark the part done
            self._temporary(directory).rename(directory / f"part-{self._next:05d}.parquet")
        self._writers, self._rows, self._next = None, 0, self._next + 1

    def _temporary(self, directory: Path) -> Path:
        return directory / f".part-{self._next:05d}.parquet.tmp"

    @staticmethod
    def _index(path: Path) -> int:
        return int(_PART.fullmatch(path.name).group(1))


def non_float_columns(schema: pa.Schema) -> list[str]:
    """Columns worth dictionary-encoding. Probabilities almost never repeat,
    so trying a dictionary on each of 128 float columns only costs time and
    bytes."""
    return [field.name for field in schema if not pa.types.is_floating(field.type)]
