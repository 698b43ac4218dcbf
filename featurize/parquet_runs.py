"""Staged Parquet runs: written as tables stream in, each sorted by
``_row``, then merged back into source order a chunk at a time (a k-way
merge whose memory is one chunk per file)."""
from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq


def write_tables(tables: Iterable[pa.Table], path: Path, row_group_size: int | None = None) -> int:
    """Stream tables into one Parquet file (opened with the first one's
    schema); returns the number of rows written."""
    n_rows = 0
    with contextlib.ExitStack() as stack:
        writer = None
        for table in tables:
            if writer is None:
                writer = stack.enter_context(pq.ParquetWriter(path, table.schema))
            writer.write_table(table, row_group_size=row_group_size)
            n_rows += table.num_rows
    return n_rows


def sorted_runs(files: list[Path]) -> list[Path]:
    """Make each staged file a run sorted by ``_row``. Ray Data may write the
    blocks of one file in completion order, and one file's rows may
    interleave with another's; each file is one write task's output (bounded
    by Ray's block sizes), so sorting it in memory is safe. The merge in pass
    2 then restores the source order across files."""
    for path in files:
        table = pq.read_table(path)
        rows = table["_row"].to_numpy()
        if np.any(np.diff(rows) < 0):
            pq.write_table(table.sort_by("_row"), path)
    return files


def merge_runs(files: list[Path], chunk_rows: int = 8192) -> Iterator[pa.Table]:
    """Rows of several ``_row``-sorted files, in ``_row`` order, a chunk at a
    time (a k-way merge: memory is one chunk per file). Every buffered row up
    to the smallest last-buffered ``_row`` is safe to emit, since unread rows
    of each file come after its buffer."""
    readers = [pq.ParquetFile(path).iter_batches(batch_size=chunk_rows) for path in files]
    buffers: list[pa.Table | None] = [None] * len(readers)

    def refill(index: int) -> None:
        while buffers[index] is None or buffers[index].num_rows == 0:
            batch = next(readers[index], None)
            if batch is None:
                buffers[index] = None
                return
            buffers[index] = pa.Table.from_batches([batch])

    for index in range(len(readers)):
        refill(index)
    while any(buffer is not None for buffer in buffers):
        live = [i for i, buffer in enumerate(buffers) if buffer is not None]
        bound = min(buffers[i]["_row"][-1].as_py() for i in live)
        parts = []
        for i in live:
            rows = buffers[i]["_row"].to_numpy()
            cut = int(np.searchsorted(rows, bound, side="right"))
            parts.append(buffers[i].slice(0, cut))
            buffers[i] = buffers[i].slice(cut)
            refill(i)
        merged = pa.concat_tables(parts)
        yield merged if len(parts) == 1 else merged.sort_by("_row")
