"""Scoring a library on Ray Data, streaming, with every row accounted for.

    read (driver's node)  -> featurize (CPU tasks)  -> score (actor pool)  -> driver
    _row, mol_id, raw        + smiles, fp, reason      + one float per assay   scores/, rejects

Featurization reuses featurize.batch.featurize_batch, so a screened
molecule gets exactly the fingerprint it would get in a training set. Scoring
runs in actors that load the model once (GPU actors with ``use_gpu``). Rows
that cannot be scored are never dropped: they travel with a reject reason to
the driver, which splits each block into the score shards and the rejects
file. Ray Data's backpressure keeps only a few blocks in flight, so memory
does not grow with the library.
"""
from __future__ import annotations

import logging
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from featurize.spec import FingerprintSpec
from pipelines.errors import UserError
from pipelines.names import SIMILARITY_SAMPLE_EVERY
from pipelines.screening.library_source import BLOCK_ROWS, ScreeningLibrary
from pipelines.screening.model import ScreeningModel, unzip_to
from pipelines.screening.score_parts import CommittedRows, ScoreParts
from pipelines.serving.applicability_domain import (
    DOMAIN_COLUMNS,
    IN_TRAINING_SET_COLUMN,
    NN_MOL_ID_COLUMN,
    NN_SIMILARITY_COLUMN,
    TrainingDomain,
)

if TYPE_CHECKING:
    from ray import ObjectRef

logger = logging.getLogger(__name__)

FEATURIZE_SECONDS = "_featurize_s"
SCORE_SECONDS = "_score_s"
#: Which scored rows get the nearest-training-molecule search (``--domain``):
#: "hits" searches the hit lists (after the pass) and a seeded sample of the
#: library (for its similarity histogram); every row still gets
#: ``in_training_set`` (an exact hash lookup). "all" searches every row.
DomainScope = Literal["hits", "all"]
_SAMPLE_SEED = 0x5EED


def in_similarity_sample(rows: np.ndarray) -> np.ndarray:
    """Whether each library row (source position) is in the seeded sample:
    a splitmix64 hash of the position, so the sample is the same in every
    run, on every worker, whatever the block boundaries."""
    with np.errstate(over="ignore"):
        x = rows.astype(np.uint64) + np.uint64(_SAMPLE_SEED)
        x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        x ^= x >> np.uint64(31)
    return x % np.uint64(SIMILARITY_SAMPLE_EVERY) == 0


@dataclass(frozen=True)
class Resources:
    """How the scoring actors and featurize tasks are placed.

    ``num_actors`` None sizes the pool to the cluster: one actor per GPU
    share with ``use_gpu``, else one per ``cpus_per_actor`` CPUs. On CPUs Ray
    Data fuses the featurize tasks into the scoring actors (same resources),
    so each actor featurizes and scores its blocks and the pool size is the
    parallelism; GPU actors stay separate from the CPU featurize tasks.
    """

    num_actors: int | None = None
    use_gpu: bool = False
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 1.0
    cpus_per_featurize_task: float = 1.0
    batch_size: int = 4096  # rows per scoring call


@dataclass(frozen=True)
class ScoringCounts:
    """What the streaming pass saw. Seconds are summed over workers: CPU
    time of the calling thread for featurization, and for scoring on one
    CPU thread; wall time in the model for GPU or multi-threaded scoring."""

    library_rows: int
    scored: int
    rejected: int
    featurize_seconds: float
    score_seconds: float
    score_files: list[Path]
    resumed_rows: int = 0  # committed by an earlier, killed run: not scored again


# -- Ray Data stages -----------------------------------------------------------------
def featurize_block(batch: pa.Table, *, spec: FingerprintSpec,
                    kind: Literal["smiles", "molblock"]) -> pa.Table:
    """Standardize and fingerprint one block (the training featurization);
    ``raw`` is kept only on rejected rows, the only place it is written.
    Scores carry the library's own SMILES (canonical ones only for SDF
    records): canonicalizing would cost a third of the featurization."""
    from featurize.batch import featurize_batch

    started = time.thread_time()  # RDKit works in this thread; other calls may overlap
    table = featurize_batch(batch, spec=spec, tasks=[], kind=kind, with_scaffold=False,
                            canonical_smiles=False)
    raw_index = table.schema.get_field_index("raw")
    table = table.set_column(raw_index, "raw", pc.if_else(
        pc.is_null(table["reason"]), pa.scalar(None, pa.string()), table["raw"]))
    return _with_seconds(table, FEATURIZE_SECONDS, time.thread_time() - started)


def mark_featurized(batch: pa.Table) -> pa.Table:
    """Rows of an already featurized library: all accepted, nothing to redo."""
    nulls = pa.nulls(batch.num_rows, pa.string())
    table = batch.append_column("raw", nulls).append_column("reason", nulls)
    return table.append_column(FEATURIZE_SECONDS, pa.array(np.zeros(batch.num_rows, np.float64)))


class AssayScorer:
    """Ray Data actor: loads the model once, then scores the accepted rows of
    each block (packed fingerprints go to the device, probabilities come back:
    calibrated ones unless ``raw_scores``).

    ``archive`` is the model bundle's zip in Ray's object store: passed by
    value it would be pickled into the actor's definition, which Ray warns
    about (and refuses past 95 MiB) for a wide model's tens of MiB."""

    def __init__(self, archive: ObjectRef, columns: list[int], assays: list[str], device: str,
                 threads: int | None = None, raw_scores: bool = False,
                 domain_scope: DomainScope = "hits") -> None:
        import ray
        import torch

        from pipelines.platform.torch_setup import use_huge_pages
        from pipelines.serving.scorer import Scorer

        use_huge_pages()  # cluster actors run as the jobs do (see pipelines/platform/torch_setup.py)
        if threads:
            torch.set_num_threads(threads)
        self._folder = tempfile.TemporaryDirectory(prefix="screen-model-")
        self.scorer = Scorer.from_bundle(unzip_to(ray.get(archive), Path(self._folder.name)), device,
                                         raw_scores=raw_scores)
        self.columns = np.asarray(columns, dtype=np.int64)
        self.assays = assays
        self.domain_scope = domain_scope
        # One torch thread computes in the calling thread, so its CPU time is
        # exact even while the actor's other call runs; GPUs and thread pools
        # work elsewhere, where only wall time tells.
        self._clock = time.thread_time if device == "cpu" and threads == 1 else time.perf_counter

    def __call__(self, batch: pa.Table) -> pa.Table:
        from featurize.reader import fixed_binary_to_numpy

        started = self._clock()
        accepted = pc.is_null(batch["reason"]).to_numpy(zero_copy_only=False)
        probabilities = np.zeros((batch.num_rows, len(self.assays)), dtype=np.float32)
        fp = np.zeros((0, self.scorer.spec.n_bytes), np.uint8)
        if accepted.any():
            fp = fixed_binary_to_numpy(batch["fp"], self.scorer.spec.n_bytes)[accepted]
            probabilities[accepted] = self.scorer.score_packed(fp)[:, self.columns]
        table = batch.drop_columns(["fp"])
        for index, assay in enumerate(self.assays):
            table = table.append_column(assay, pa.array(probabilities[:, index], mask=~accepted))
        if self.scorer.domain is not None:
            rows = batch["_row"].to_numpy()[accepted]
            table = _with_domain(table, accepted, self._searched(rows), self.scorer.domain, fp)
        return _with_seconds(table, SCORE_SECONDS, self._clock() - started)

    def _searched(self, rows: np.ndarray) -> np.ndarray:
        """Which accepted rows get the nearest-neighbour search (see DomainScope)."""
        return np.ones(len(rows), bool) if self.domain_scope == "all" else in_similarity_sample(rows)


def _with_domain(table: pa.Table, accepted: np.ndarray, searched: np.ndarray, domain: TrainingDomain,
                 fp: np.ndarray) -> pa.Table:
    """The block with the domain columns: ``in_training_set`` on every
    accepted row, the nearest training molecule on the accepted rows
    ``searched`` marks (``fp``: the accepted rows' fingerprints); null elsewhere."""
    import torch

    similarity = np.zeros(table.num_rows, np.float32)
    has_similarity = np.zeros(table.num_rows, bool)
    mol_ids = np.full(table.num_rows, None, dtype=object)
    in_training_set = np.zeros(table.num_rows, bool)
    positions = np.flatnonzero(accepted)
    # The search answers in_training_set for its rows; the hash lookup for the rest.
    in_training_set[positions[~searched]] = domain.identical(fp[~searched])
    if searched.any():
        found = domain.nearest(fp[searched], threads=torch.get_num_threads())
        similarity[positions[searched]] = found.similarity
        has_similarity[positions[searched]] = True
        mol_ids[positions[searched]] = found.mol_id
        in_training_set[positions[searched]] = found.in_training_set
    return (table.append_column(NN_SIMILARITY_COLUMN, pa.array(similarity, mask=~has_similarity))
            .append_column(NN_MOL_ID_COLUMN, pa.array(mol_ids, pa.string()))
            .append_column(IN_TRAINING_SET_COLUMN, pa.array(in_training_set, mask=~accepted)))


def _with_seconds(table: pa.Table, column: str, seconds: float) -> pa.Table:
    """Spread a block's elapsed time over its rows: sums stay right however
    Ray re-batches rows downstream."""
    share = seconds / table.num_rows if table.num_rows else 0.0
    return table.append_column(column, pa.array(np.full(table.num_rows, share)))


# -- the pipeline ----------------------------------------------------------------------
def unscored_batches(library: ScreeningLibrary, done: np.ndarray | None) -> Iterator[pa.Table]:
    """The library's batches without the rows ``done`` marks (bool by row:
    committed by an earlier run of the same screening)."""
    for batch in library.iter_batches():
        if done is not None:
            rows = batch["_row"].to_numpy()
            inside = rows < len(done)
            skip = np.zeros(len(rows), dtype=bool)
            skip[inside] = done[rows[inside]]
            batch = batch.filter(pa.array(~skip))
        if batch.num_rows:
            yield batch


def library_dataset(library: ScreeningLibrary, done: CommittedRows | None = None):  # -> ray.data.Dataset
    from functools import partial

    from ray.data import read_datasource
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    class LibraryDatasource(Datasource):
        """One read task streaming the file from the driver's node."""

        def estimate_inmemory_data_size(self) -> int | None:
            return None

        def get_read_tasks(self, parallelism: int, per_task_row_limit: int | None = None,
                           data_context: Any = None) -> list[ReadTask]:
            remaining = None if library.rows is None else library.rows - (len(done.rows) if done else 0)
            metadata = BlockMetadata(num_rows=remaining, size_bytes=None, exec_stats=None,
                                     input_files=[str(library.path)])
            return [ReadTask(partial(unscored_batches, library, done.mask() if done else None), metadata,
                             per_task_row_limit=per_task_row_limit)]

        @property
        def supports_distributed_reads(self) -> bool:
            return False

    # The read is light (Arrow CSV/Parquet parsing or line splitting) and must
    # never wait for a CPU: the scoring actors may hold every CPU of the node.
    return read_datasource(LibraryDatasource(), override_num_blocks=1, num_cpus=0)


def scored_dataset(library: ScreeningLibrary, model: ScreeningModel, assays: list[str],
                   resources: Resources, raw_scores: bool = False,
                   done: CommittedRows | None = None,
                   domain_scope: DomainScope = "hits"):  # -> ray.data.Dataset
    """The library's rows, but those ``done`` holds, featurized and scored."""
    import ray
    from ray.data import ActorPoolStrategy

    dataset = library_dataset(library, done)
    if library.featurized:
        dataset = dataset.map_batches(mark_featurized, batch_format="pyarrow", batch_size=None)
    else:
        dataset = dataset.map_batches(
            featurize_block, batch_format="pyarrow", batch_size=BLOCK_ROWS,
            num_cpus=resources.cpus_per_featurize_task,
            fn_kwargs={"spec": model.spec, "kind": library.kind})
    actor_resources = ({"num_gpus": resources.gpus_per_actor} if resources.use_gpu else {})
    threads = None if resources.use_gpu else max(1, round(resources.cpus_per_actor))
    return dataset.map_batches(
        AssayScorer, batch_format="pyarrow", batch_size=resources.batch_size,
        # Two calls per actor: while one featurizes or scores, the other
        # batches its input or hands its output blocks to Ray. With one, the
        # actor sat idle between blocks (benchmarks/screen.py measures it).
        compute=ActorPoolStrategy(size=pool_size(resources), max_concurrent_calls_per_actor=2),
        num_cpus=resources.cpus_per_actor, **actor_resources,
        fn_constructor_kwargs={
            "archive": ray.put(model.archive), "columns": model.assay_indices(assays), "assays": assays,
            "device": "cuda" if resources.use_gpu else "cpu", "threads": threads,
            "raw_scores": raw_scores, "domain_scope": domain_scope,
        })


def pool_size(resources: Resources) -> int:
    """``resources.num_actors``, or as many actors as the cluster has room for."""
    import ray

    if resources.num_actors:
        return resources.num_actors
    available = ray.cluster_resources()
    if resources.use_gpu:
        gpus = available.get("GPU", 0)
        if not gpus:
            raise UserError("--use-gpu: the Ray cluster has no GPUs")
        return max(1, int(gpus / resources.gpus_per_actor))
    return max(1, int(available.get("CPU", 1) / resources.cpus_per_actor))


def write_scores(blocks: Iterator[pa.Table], assays: list[str], parts: ScoreParts,
                 expected_rows: int | None, progress: bool, with_domain: bool = False,
                 done: CommittedRows | None = None) -> ScoringCounts:
    """Split each scored block into score and reject parts, committed as
    they fill, checking that every library row, with those ``done`` by an
    earlier run, comes back exactly once."""
    domain_columns = list(DOMAIN_COLUMNS) if with_domain else []
    done = done or CommittedRows(np.empty(0, np.int64), 0, 0)
    ledger = RowLedger()
    ledger.add(done.rows)
    scored, rejected = done.scored, done.rejected
    featurize_seconds = score_seconds = 0.0
    with tqdm(total=expected_rows, initial=len(done.rows), desc="screen", unit=" mol",
              disable=not progress, smoothing=0.05) as bar:
        for block in blocks:
            ledger.add(block["_row"].to_numpy())
            accepted = pc.is_null(block["reason"])
            accepted_rows = block.filter(accepted)
            rejected_rows = block.filter(pc.invert(accepted))
            parts.write(accepted_rows.select(["_row", "mol_id", "smiles", *assays, *domain_columns])
                        .rename_columns(["row", "mol_id", "smiles", *assays, *domain_columns]),
                        rejected_rows.select(["_row", "raw", "mol_id", "reason"])
                        .rename_columns(["row", "raw", "mol_id", "reason"]))
            scored += accepted_rows.num_rows
            rejected += rejected_rows.num_rows
            featurize_seconds += pc.sum(block[FEATURIZE_SECONDS]).as_py() or 0.0
            score_seconds += pc.sum(block[SCORE_SECONDS]).as_py() or 0.0
            bar.update(block.num_rows)
    parts.close()
    library_rows = ledger.check(expected_rows)
    if scored + rejected != library_rows:
        raise RuntimeError(f"accounting error: {scored} scored + {rejected} rejected "
                           f"!= {library_rows} library rows")
    return ScoringCounts(library_rows, scored, rejected, featurize_seconds, score_seconds,
                         parts.score_files, resumed_rows=len(done.rows))


class RowLedger:
    """Checks that the source positions seen are exactly 0..N-1, once each,
    in O(1) memory: count, max, and the sums of rows and of squared rows
    (mod 2^64, exact in uint64) must match those of 0..N-1."""

    _MASK = (1 << 64) - 1

    def __init__(self) -> None:
        self.count = 0
        self.max_row = -1
        self.sum = np.uint64(0)
        self.sum_squares = np.uint64(0)

    def add(self, rows: np.ndarray) -> None:
        if not len(rows):
            return
        wide = rows.astype(np.uint64)
        with np.errstate(over="ignore"):
            self.sum += wide.sum(dtype=np.uint64)
            self.sum_squares += (wide * wide).sum(dtype=np.uint64)
        self.count += len(rows)
        self.max_row = max(self.max_row, int(rows.max()))

    def check(self, expected_rows: int | None) -> int:
        """The number of library rows; raises if any row was lost or repeated."""
        n = self.max_row + 1
        expected_sum = (n * (n - 1) // 2) & self._MASK
        expected_squares = ((n - 1) * n * (2 * n - 1) // 6) & self._MASK
        if (self.count != n or int(self.sum) != expected_sum
                or int(self.sum_squares) != expected_squares):
            raise RuntimeError(f"accounting error: {self.count} rows came back, "
                               f"not each of the {n} library rows exactly once")
        if expected_rows is not None and n != expected_rows:
            raise RuntimeError(f"accounting error: the library has {expected_rows} rows, "
                               f"{n} came back")
        return n
