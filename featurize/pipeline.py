"""``featurize_file``: the one featurization function, in-process or on Ray Data.

Two passes, whatever the backend:

1. Stage: the source streams Arrow batches; :func:`featurize_batch`
   standardizes, fingerprints and encodes labels for each batch, keeping
   every row (accepted or with a reject reason) in a staging Parquet. The
   in-process backend runs it in a loop; the Ray backend writes the input
   once to a raw Parquet file and runs equal row ranges of it (a multiple of
   the CPU count, at most RAY_BLOCK_ROWS rows each) through
   ``map_batches(read rows + featurize_batch) -> write_parquet`` with one CPU
   per task, streaming with bounded memory.
2. Finish (driver, cheap): from the small ``_row``/``mol_id``/``reason``/
   ``scaffold`` columns only, reject duplicate ids and assign splits; then
   stream the staged rows once more, in source order, into the atomic
   :class:`featurize.dataset.DatasetWriter`.

Since both backends share pass 2 and the per-batch function, they write the
same bytes. accepted + rejected == input rows is checked on commit.
"""
from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from tqdm import tqdm

from featurize.crash_guard import crashing_rows
from featurize.dataset import DEFAULT_ROWS_PER_SHARD, REJECTS_FILE, DatasetInfo, DatasetWriter, find_finished
from featurize.fingerprints import FingerprintRows
from featurize.sources.readers import LibrarySource, TaskSelection
from featurize.spec import FingerprintSpec
from featurize.splits import (
    DEFAULT_FRACTIONS,
    SPLIT_METHODS,
    check_fractions,
    random_split,
    scaffold_smiles,
    scaffold_split,
    split_names,
)
from featurize.standardize import DEFAULT_LIMITS, SizeLimits, standardize_molblock, standardize_smiles

logger = logging.getLogger(__name__)

Backend = Literal["auto", "local", "ray"]
BACKENDS = ("auto", "local", "ray")
#: Inputs at least this large (bytes on disk) go to Ray under backend="auto".
AUTO_RAY_MIN_BYTES = 32 * 2**20
#: Most rows per Ray task. Each task costs Ray time on top of its work, so
#: larger tasks scale better: 50k molecules on 2 CPUs ran 1.32x / 1.57x /
#: 1.64x / 1.70x / 1.77x faster than on 1 CPU with 1,024 / 2,048 / 4,096 /
#: 8,192 / 32,768-row tasks. 8,192 keeps tasks to share out on bigger inputs
#: and the progress bar moving (benchmarks/featurize.py).
RAY_BLOCK_ROWS = 8192
#: Row group size of the raw input file the Ray tasks read their rows from.
RAW_ROW_GROUP = 1024


@dataclass(frozen=True)
class FeaturizeSummary:
    """What a featurization did (the CLI prints it as a table)."""

    input_rows: int
    accepted: int
    rejected: int
    shards: int
    out_dir: Path
    elapsed_s: float
    skipped_existing: bool
    backend: str
    split_counts: dict[str, int] = field(default_factory=dict)
    reject_reasons: dict[str, int] = field(default_factory=dict)

    @property
    def rejects_path(self) -> Path:
        return self.out_dir / REJECTS_FILE

    @classmethod
    def from_info(cls, info: DatasetInfo, *, elapsed_s: float, skipped_existing: bool,
                  backend: str) -> FeaturizeSummary:
        reasons = pq.read_table(info.rejects_path, columns=["reason"])["reason"]
        counts = {item["values"]: item["counts"] for item in pc.value_counts(
            _reason_kind(reasons)).to_pylist()} if len(reasons) else {}
        return cls(input_rows=info.input_rows, accepted=info.accepted, rejected=info.rejected,
                   shards=len(info.shards), out_dir=info.path, elapsed_s=elapsed_s,
                   skipped_existing=skipped_existing, backend=backend,
                   split_counts=info.split_counts,
                   reject_reasons=dict(sorted(counts.items(), key=lambda kv: -kv[1])))


def _reason_kind(reasons: pa.ChunkedArray) -> pa.ChunkedArray:
    """The reason without its details, so the summary counts kinds:
    "sanitization failed: Explicit valence for atom # 3..." -> "sanitization
    failed", "too large (20000 heavy atoms > 1000)" -> "too large"."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(reasons, r"[:(].*", ""))


# -- pass 1: one batch ---------------------------------------------------------------
def featurize_batch(batch: pa.Table, *, spec: FingerprintSpec, tasks: Sequence[str],
                    kind: Literal["smiles", "molblock"], with_scaffold: bool,
                    canonical_smiles: bool = True, limits: SizeLimits = DEFAULT_LIMITS) -> pa.Table:
    """Standardize, fingerprint and encode labels for one source batch.

    A ``reason`` column in ``batch`` (the readers' rejects, e.g. "not
    UTF-8"; tables built by hand may leave it out) wins over everything
    else: such rows are never parsed. ``limits``: see :class:`SizeLimits`.
    Returns every input row (``_row``, ``mol_id``, ``raw``, ``smiles`` (canonical,
    or with ``canonical_smiles=False`` the input SMILES as given), ``fp``
    as fixed_size_binary (zeros for rejects), int8 task columns, ``scaffold``
    if asked, and ``reason``: null for accepted rows). Runs on Ray workers:
    pure function of its arguments, one cached RDKit generator per process.
    """
    n_rows = batch.num_rows
    standardize = (partial(standardize_molblock, limits=limits) if kind == "molblock"
                   else partial(standardize_smiles, canonical=canonical_smiles, limits=limits))
    labels, label_reasons = encode_labels(batch, tasks)
    ids = batch["mol_id"].to_pylist()
    reasons: list[str | None] = (batch["reason"].to_pylist() if "reason" in batch.column_names
                                 else [None] * n_rows)
    smiles: list[str | None] = [None] * n_rows
    scaffolds: list[str | None] = [None] * n_rows
    accepted: list[int] = []
    fingerprints = FingerprintRows(spec)
    for index, raw in enumerate(batch["raw"].to_pylist()):
        if reasons[index] is not None:
            continue
        if ids[index] is None:
            reasons[index] = "empty id"
            continue
        result = standardize(raw)
        reasons[index] = result.reason or label_reasons[index]
        if reasons[index] is None:  # each Mol is used up here, then freed (see FingerprintRows)
            smiles[index] = result.smiles
            if with_scaffold:
                scaffolds[index] = scaffold_smiles(result.mol)
            accepted.append(index)
            fingerprints.add(result.mol)
    fp = np.zeros((n_rows, spec.n_bytes), dtype=np.uint8)
    fp[accepted] = fingerprints.matrix()
    columns = {
        "_row": batch["_row"],
        "mol_id": batch["mol_id"],
        "raw": batch["raw"],
        "smiles": pa.array(smiles, pa.string()),
        "fp": pa.FixedSizeBinaryArray.from_buffers(pa.binary(spec.n_bytes), n_rows,
                                                   [None, pa.py_buffer(fp.tobytes())]),
        **{task: labels[:, k] for k, task in enumerate(tasks)},
    }
    if with_scaffold:
        columns["scaffold"] = pa.array(scaffolds, pa.string())
    columns["reason"] = pa.array(reasons, pa.string())
    return pa.table(columns)


def encode_labels(batch: pa.Table, tasks: Sequence[str]) -> tuple[np.ndarray, list[str | None]]:
    """float task columns -> int8 ``[n, K]`` (1, 0, -1 missing) and, per row,
    the first value that is neither 0, 1 nor missing (a reject reason)."""
    labels = np.full((batch.num_rows, len(tasks)), -1, dtype=np.int8)
    reasons: list[str | None] = [None] * batch.num_rows
    for k, task in enumerate(tasks):
        values = batch[task].to_numpy(zero_copy_only=False).astype(np.float64)
        present = ~np.isnan(values)
        labels[present, k] = values[present].astype(np.int8)
        for index in np.flatnonzero(present & (values != 0) & (values != 1)):
            reasons[index] = reasons[index] or f"label {task}={values[index]:g} is not 0 or 1"
    return labels, reasons


# -- pass 1: backends ----------------------------------------------------------------
def _stage_local(source: LibrarySource, staged: Path, options: _Options,
                 progress: bool) -> list[Path]:
    path = staged / "part-000000.parquet"
    staged.mkdir()
    with tqdm(desc="featurize", unit=" mol", disable=not progress, smoothing=0.1) as bar:
        def featurized() -> Iterator[pa.Table]:
            for batch in source.iter_batches():
                yield featurize_batch(batch, **options.batch_kwargs())
                bar.update(batch.num_rows)

        _write_tables(featurized(), path)
    return [path]


def _write_tables(tables: Iterable[pa.Table], path: Path, row_group_size: int | None = None) -> int:
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


def _stage_ray(source: LibrarySource, scratch: Path, options: _Options, num_cpus: int | None,
               address: str | None) -> list[Path]:
    import ray

    raw_path, staged = scratch / "raw.parquet", scratch / "staged"
    # Row groups of RAW_ROW_GROUP rows, so a task reads little beyond its range.
    n_rows = _write_tables(source.iter_batches(RAW_ROW_GROUP), raw_path, RAW_ROW_GROUP)
    if n_rows == 0:  # Ray Data writes no file for an empty block
        return _stage_local(source, staged, options, progress=False)
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
    return _sorted_runs(sorted(staged.glob("*.parquet")))


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
    until the first finished, then left ~0.15 s between tasks: 14 one-second
    tasks on 2 CPUs took 8.9 s instead of 7.3-7.8 s. Without reservation the
    CPU limit is not enforced by that policy, so the caller also caps the
    task concurrency of the map and of the write at ``num_cpus``.
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


def _sorted_runs(files: list[Path]) -> list[Path]:
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


def _merge_runs(files: list[Path], chunk_rows: int = 8192) -> Iterator[pa.Table]:
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


# -- pass 2 --------------------------------------------------------------------------
def _finish(staged_files: list[Path], writer: DatasetWriter, options: _Options) -> int:
    """Reject duplicate ids, assign splits and write the dataset in source
    order; returns the number of input rows."""
    key_columns = ["_row", "mol_id", "reason", *(["scaffold"] if options.split == "scaffold"
                                                 else [])]
    keys = pa.concat_tables([pq.read_table(path, columns=key_columns)
                             for path in staged_files]).sort_by("_row")
    rows = keys["_row"].to_numpy()
    if not np.array_equal(rows, np.arange(len(rows))):
        raise RuntimeError("staged rows do not cover the input exactly once")
    accepted = keys["reason"].is_null().to_numpy(zero_copy_only=False)
    duplicate = accepted & ~_first_of_each_id(keys.filter(accepted), len(rows))
    keep = accepted & ~duplicate
    codes = _split_codes(keys, keep, options)
    split_of_row = np.full(len(rows), -1, dtype=np.int8)
    if codes is not None:
        split_of_row[keep] = codes
    del keys

    for table in _merge_runs(staged_files):
        batch_rows = table["_row"].to_numpy()
        batch_keep = keep[batch_rows]
        features = table.filter(batch_keep)
        if codes is not None:
            features = features.append_column(
                "split", pa.array(split_names(split_of_row[batch_rows][batch_keep]), pa.string()))
        writer.write_features(features)
        rejected = table.filter(~batch_keep)
        reasons = np.where(duplicate[rejected["_row"].to_numpy()], "duplicate id",
                           rejected["reason"].to_numpy(zero_copy_only=False))
        writer.write_rejects(pa.table({"row": rejected["_row"], "raw": rejected["raw"],
                                       "mol_id": rejected["mol_id"],
                                       "reason": pa.array(reasons, pa.string())}))
    return len(rows)


def _first_of_each_id(keys: pa.Table, n_rows: int) -> np.ndarray:
    """bool[n_rows]: True at the first ``_row`` of each ``mol_id`` in ``keys``.
    Grouped in Arrow: a pandas ``duplicated`` over Python strings held ~200
    bytes per input row in the driver."""
    first = keys.group_by("mol_id", use_threads=False).aggregate([("_row", "min")])
    mask = np.zeros(n_rows, dtype=bool)
    mask[first["_row_min"].to_numpy()] = True
    return mask


def _split_codes(keys: pa.Table, keep: np.ndarray, options: _Options) -> np.ndarray | None:
    if options.split == "random":
        return random_split(int(keep.sum()), options.fractions, options.seed)
    if options.split == "scaffold":
        scaffolds = keys["scaffold"].to_numpy(zero_copy_only=False)[keep]
        return scaffold_split(scaffolds, options.fractions)
    return None


# -- entry point ---------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    spec: FingerprintSpec
    tasks: list[str]
    kind: Literal["smiles", "molblock"]
    split: str
    fractions: tuple[float, float, float]
    seed: int
    rows_per_shard: int
    limits: SizeLimits

    def batch_kwargs(self) -> dict[str, object]:
        return {"spec": self.spec, "tasks": self.tasks, "kind": self.kind,
                "with_scaffold": self.split == "scaffold", "limits": self.limits}

    def manifest(self, source: LibrarySource) -> dict[str, object]:
        """What must match for a re-run to be a no-op (backend and CPUs do
        not change the output, so they are not here)."""
        options = asdict(self)
        options.update(smiles_col=source.smiles_col, id_col=source.id_col)
        if self.split == "scaffold":
            options.pop("seed")  # the scaffold split is deterministic
        return options


def featurize_file(input_path: str | os.PathLike[str] | LibrarySource,
                   out_dir: str | os.PathLike[str], *,
                   spec: FingerprintSpec | None = None, smiles_col: str = "smiles",
                   id_col: str | None = None, tasks: TaskSelection = "auto",
                   split: str = "none", fractions: Sequence[float] = DEFAULT_FRACTIONS,
                   seed: int = 0, backend: Backend = "auto", num_cpus: int | None = None,
                   address: str | None = None, rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                   limits: SizeLimits = DEFAULT_LIMITS, overwrite: bool = False,
                   progress: bool = True) -> FeaturizeSummary:
    """Featurize a molecule file into a fingerprint dataset at ``out_dir``.

    ``input_path``: a .csv/.csv.gz/.parquet/.smi/.sdf file (read with
    ``smiles_col``/``id_col``/``tasks``, see :class:`LibrarySource`) or a
    ready :class:`LibrarySource` (PCBA: :func:`featurize.sources.pcba.pcba_source`).
    ``split``: "none", "random" (seeded) or "scaffold" (Bemis-Murcko).
    ``backend``: "local" (this process), "ray" (Ray Data; ``address`` or
    RAY_ADDRESS picks the cluster, ``num_cpus`` caps the CPUs it uses) or
    "auto" (Ray for an address or inputs of 32 MiB or more).
    ``limits``: the largest SMILES and molecules handed to RDKit; larger
    rows are rejected as "too long" / "too large" (:class:`SizeLimits`).
    A finished dataset made from the same input and options is left as it is
    (``skipped_existing`` in the summary).
    """
    started = time.perf_counter()
    source = (input_path if isinstance(input_path, LibrarySource)
              else LibrarySource(Path(input_path), smiles_col=smiles_col, id_col=id_col,
                                 tasks=tasks))
    if split not in SPLIT_METHODS:
        raise ValueError(f"split must be one of {SPLIT_METHODS}, got {split!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    options = _Options(spec=spec or FingerprintSpec(), tasks=source.task_names(),
                       kind=source.kind, split=split, fractions=check_fractions(fractions),
                       seed=seed, rows_per_shard=rows_per_shard, limits=limits)
    identity = source.identity()
    chosen = _choose_backend(backend, source, address)
    finished = find_finished(out_dir, identity, options.manifest(source), overwrite=overwrite)
    if finished is not None:
        logger.info("%s already holds this dataset (same input and options): nothing to do",
                    out_dir)
        return FeaturizeSummary.from_info(finished, elapsed_s=time.perf_counter() - started,
                                          skipped_existing=True, backend="none")

    with DatasetWriter(out_dir, options.spec, options.tasks, with_split=split != "none",
                       rows_per_shard=rows_per_shard) as writer:
        logger.info("featurizing %s (%s backend) into %s", source.path, chosen, out_dir)
        if chosen == "ray":
            staged = _stage_ray(source, writer.scratch_dir, options, num_cpus, address)
        else:
            staged = _stage_local(source, writer.scratch_dir / "staged", options, progress)
        input_rows = _finish(staged, writer, options)
        info = writer.commit(input_rows=input_rows, input_identity=identity,
                             options=options.manifest(source), overwrite=overwrite)
    return FeaturizeSummary.from_info(info, elapsed_s=time.perf_counter() - started,
                                      skipped_existing=False, backend=chosen)


def _choose_backend(backend: Backend, source: LibrarySource, address: str | None) -> str:
    if backend != "auto":
        return backend
    if address or os.environ.get("RAY_ADDRESS"):
        return "ray"
    return "ray" if source.path.stat().st_size >= AUTO_RAY_MIN_BYTES else "local"
