"""Pass 1 on Ray Data: the input written once to a raw Parquet file, equal
row ranges of it featurized by one-CPU tasks and written back as staged
runs, with Ray Data's context set for this pipeline only and a mark per
row range so a retried task can find the rows that crash RDKit
(:mod:`featurize.crash_guard`)."""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurize.batch import featurize_batch
from featurize.crash_guard import crashing_rows
from featurize.local_stage import stage_local
from featurize.options import FeaturizeOptions
from featurize.parquet_runs import sorted_runs, write_tables
from featurize.sources.readers import LibrarySource

logger = logging.getLogger(__name__)

#: Most rows per Ray task. Each task costs Ray time on top of its work, so
#: larger tasks scale better with the CPUs; 8,192 still leaves tasks to share
#: out on bigger inputs and keeps the progress bar moving
#: (benchmarks/featurize.py; docs/benchmarks.md, Featurization).
RAY_BLOCK_ROWS = 8192
#: Row group size of the raw input file the Ray tasks read their rows from.
RAW_ROW_GROUP = 1024


def stage_ray(source: LibrarySource, scratch: Path, options: FeaturizeOptions, num_cpus: int | None,
               address: str | None) -> list[Path]:
    import ray

    raw_path, staged = scratch / "raw.parquet", scratch / "staged"
    # Row groups of RAW_ROW_GROUP rows, so a task reads little beyond its range.
    n_rows = write_tables(source.iter_batches(RAW_ROW_GROUP), raw_path, RAW_ROW_GROUP)
    if n_rows == 0:  # Ray Data writes no file for an empty block
        return stage_local(source, staged, options, progress=False)
    started_here = not ray.is_initialized()
    if started_here:
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        ray.init(address=address, num_cpus=num_cpus if address == "local" else None,
                 log_to_driver=False, configure_logging=False)
    try:
        cpus = num_cpus or max(1, int(ray.cluster_resources().get("CPU", 1)))
        ranges = task_row_ranges(n_rows, cpus, RAY_BLOCK_ROWS)
        with _ray_data_limits(num_cpus):
            # One block and one task per row range, each reading its own rows
            # of the raw file (read_parquet, Ray 2.60's ReadFilesParquetV2,
            # would fuse a small file into one read task on a single CPU).
            (ray.data.from_items([{"path": str(raw_path), "start": start, "stop": stop}
                                  for start, stop in ranges], override_num_blocks=len(ranges))
             .map_batches(_featurize_row_ranges, batch_format="pyarrow", batch_size=1,
                          num_cpus=1, compute=ray.data.TaskPoolStrategy(size=num_cpus),
                          fn_kwargs=options.batch_kwargs())
             .write_parquet(str(staged), concurrency=num_cpus))  # the same cap, so the two fuse
    finally:
        if started_here:
            ray.shutdown()
    return sorted_runs(sorted(staged.glob("*.parquet")))


def task_row_ranges(n_rows: int, n_cpus: int, block_rows: int) -> list[tuple[int, int]]:
    """[start, stop) row ranges of the Ray tasks: at most ``block_rows`` rows
    each, equal in size (to a row), and a multiple of n_cpus of them, so no
    CPU is left alone with a last, odd task (fixed 4,096-row blocks made 50,000
    rows 12 full tasks and a short one). On the 50k benchmark this alone did
    not move the 2-CPU time; the scheduling change in _ray_data_limits did."""
    n_tasks = min(n_cpus * -(-n_rows // (block_rows * n_cpus)), n_rows)
    bounds = np.linspace(0, n_rows, n_tasks + 1).round().astype(np.int64)
    return [(int(start), int(stop)) for start, stop in zip(bounds[:-1], bounds[1:])]


def _featurize_row_ranges(ranges: pa.Table, **batch_kwargs: object) -> pa.Table:
    """A Ray task's work: read its rows of the raw file and featurize them."""
    return pa.concat_tables([featurize_row_range(Path(item["path"]), item["start"], item["stop"],
                                                 batch_kwargs) for item in ranges.to_pylist()])


def featurize_row_range(raw_path: Path, start: int, stop: int,
                        batch_kwargs: dict[str, object]) -> pa.Table:
    """Featurize rows [start, stop) of the raw file, surviving rows that
    crash RDKit (see :mod:`featurize.crash_guard`): a mark file is left
    beside the raw file while the range is being featurized. Ray retries a
    task whose worker died; the retry finds the mark, finds the crashing
    rows in child processes and rejects them, so the range completes."""
    batch = _read_rows(str(raw_path), start, stop)
    mark = raw_path.parent / "attempts" / f"{start}-{stop}"
    if mark.exists():
        crashed = crashing_rows(batch, batch_kwargs)
        logger.warning("rows %d-%d: an earlier attempt died; %d row(s) crash RDKit",
                       start, stop, len(crashed))
        batch = _with_reasons(batch, crashed)
    else:
        mark.parent.mkdir(exist_ok=True)
        mark.touch()
    table = featurize_batch(batch, **batch_kwargs)
    mark.unlink()
    return table


def _with_reasons(batch: pa.Table, reasons: dict[int, str]) -> pa.Table:
    """``batch`` with ``reasons`` (row index -> reason) set in its ``reason`` column."""
    merged = batch["reason"].to_pylist()
    for index, reason in reasons.items():
        merged[index] = merged[index] or reason
    return batch.set_column(batch.schema.get_field_index("reason"), "reason",
                            pa.array(merged, pa.string()))


def _read_rows(path: str, start: int, stop: int) -> pa.Table:
    """Rows [start, stop) of a Parquet file, reading only the row groups they lie in."""
    file = pq.ParquetFile(path)
    offsets = np.cumsum([0] + [file.metadata.row_group(i).num_rows
                               for i in range(file.num_row_groups)])
    groups = [i for i in range(file.num_row_groups) if offsets[i] < stop and offsets[i + 1] > start]
    return file.read_row_groups(groups).slice(start - offsets[groups[0]], stop - start)


@contextlib.contextmanager
def _ray_data_limits(num_cpus: int | None) -> Iterator[None]:
    """Keep blocks in source order, use at most ``num_cpus`` CPUs and turn off
    per-operator resource reservation, for this pipeline only (the
    DataContext is restored afterwards).

    The pipeline is one fused operator, so reservation protects nothing, and
    with it Ray 2.60's resource-budget backpressure ran one task at a time
    until the first finished, then left a gap between tasks (docs/benchmarks.md,
    Featurization). Without reservation the CPU limit is not enforced by that
    policy, so the caller also caps the task concurrency of the map and of
    the write at ``num_cpus``.
    """
    import ray

    context = ray.data.DataContext.get_current()
    saved = (context.execution_options.preserve_order, context.execution_options.resource_limits,
             context.op_resource_reservation_enabled)
    context.execution_options.preserve_order = True
    context.op_resource_reservation_enabled = False
    if num_cpus:
        context.execution_options.resource_limits = saved[1].copy(cpu=num_cpus)
    try:
        yield
    finally:
        (context.execution_options.preserve_order, context.execution_options.resource_limits,
         context.op_resource_reservation_enabled) = saved
