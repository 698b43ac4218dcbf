"""``featurize_file``: the one featurization function, in-process or on Ray Data.

Two passes, whatever the backend:

1. Stage: the source streams Arrow batches; :func:`featurize.batch.featurize_batch`
   standardizes, fingerprints and encodes labels for each batch, keeping
   every row (accepted or with a reject reason) in staged Parquet runs.
   featurize/local_stage.py runs it in a loop; featurize/ray_stage.py runs
   equal row ranges of the input as one-CPU Ray Data tasks, streaming with
   bounded memory.
2. Finish (featurize/finish.py, on the driver): reject duplicate ids, assign
   splits and write the runs, merged back into source order
   (featurize/parquet_runs.py), into the atomic
   :class:`featurize.dataset.DatasetWriter`.

Since both backends share pass 2 and the per-batch function, they write the
same bytes. accepted + rejected == input rows is checked on commit.
"""
from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurize.dataset import DEFAULT_ROWS_PER_SHARD, REJECTS_FILE, DatasetInfo, DatasetWriter, find_finished
from featurize.finish import finish_dataset
from featurize.local_stage import stage_local
from featurize.options import FeaturizeOptions
from featurize.ray_stage import stage_ray
from featurize.sources.readers import LibrarySource, TaskSelection
from featurize.spec import FingerprintSpec
from featurize.splits import DEFAULT_FRACTIONS, SPLIT_METHODS, check_fractions
from featurize.standardize import DEFAULT_LIMITS, SizeLimits

logger = logging.getLogger(__name__)

Backend = Literal["auto", "local", "ray"]
BACKENDS = ("auto", "local", "ray")
#: Inputs at least this large (bytes on disk) go to Ray under backend="auto".
AUTO_RAY_MIN_BYTES = 32 * 2**20


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


def _reason_kind(reasons: pa.ChunkedArray) -> pa.ChunkedArray:
    """The reason without its details, so the summary counts kinds:
    "sanitization failed: Explicit valence for atom # 3..." -> "sanitization
    failed", "too large (20000 heavy atoms > 1000)" -> "too large"."""
    return pc.utf8_trim_whitespace(pc.replace_substring_regex(reasons, r"[:(].*", ""))


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
    options = FeaturizeOptions(spec=spec or FingerprintSpec(), tasks=source.task_names(),
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
            staged = stage_ray(source, writer.scratch_dir, options, num_cpus, address)
        else:
            staged = stage_local(source, writer.scratch_dir / "staged", options, progress)
        input_rows = finish_dataset(staged, writer, options)
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
