"""The fingerprint dataset on disk, written atomically.

Layout (what training and screening read)::

    DIR/features/part-00000.parquet ...  one row per accepted molecule:
        mol_id string, smiles string, fp fixed_size_binary(spec.n_bytes),
        one int8 column per task (1 active, 0 inactive, -1 missing),
        split string (train/valid/test) where a split was made;
        schema metadata: pcba.fingerprint_spec (JSON), pcba.tasks (JSON list)
    DIR/rejects.parquet    row int64, raw string, mol_id string, reason string
    DIR/manifest.json      counts, spec, tasks, metadata hash, input identity

Everything is written into a hidden temp dir beside DIR and renamed into
place at the end, so a killed job leaves no half-written dataset, and the
manifest lets a re-run with the same input and options be a no-op.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurize.errors import InputDataError
from featurize.publishing import StagedFolder, jsonable
from featurize.spec import FingerprintSpec, read_schema_metadata, schema_metadata

logger = logging.getLogger(__name__)

FEATURES_DIR = "features"
REJECTS_FILE = "rejects.parquet"
MANIFEST_FILE = "manifest.json"
MANIFEST_VERSION = 1
SPLITS = ("train", "valid", "test")
DEFAULT_ROWS_PER_SHARD = 100_000
DEFAULT_ROW_GROUP_SIZE = 10_000

REJECTS_SCHEMA = pa.schema([
    pa.field("row", pa.int64(), nullable=False),
    pa.field("raw", pa.string()),
    pa.field("mol_id", pa.string()),
    pa.field("reason", pa.string(), nullable=False),
])


def features_schema(spec: FingerprintSpec, tasks: Sequence[str], *, with_split: bool) -> pa.Schema:
    """The schema (with spec/tasks metadata) of every feature shard."""
    fields = [
        pa.field("mol_id", pa.string(), nullable=False),
        pa.field("smiles", pa.string()),  # null only for imported fingerprints
        pa.field("fp", pa.binary(spec.n_bytes), nullable=False),
        *(pa.field(task, pa.int8(), nullable=False) for task in tasks),
    ]
    if with_split:
        fields.append(pa.field("split", pa.string(), nullable=False))
    return pa.schema(fields, metadata=schema_metadata(spec, tasks))


def metadata_hash(spec: FingerprintSpec, tasks: Sequence[str]) -> str:
    """Short hash of what a model must agree with (spec and task order)."""
    digest = hashlib.sha256()
    for value in schema_metadata(spec, tasks).values():
        digest.update(value)
    return digest.hexdigest()[:16]


@dataclass(frozen=True)
class DatasetInfo:
    """What a finished dataset holds, from its manifest."""

    path: Path
    spec: FingerprintSpec
    tasks: list[str]
    input_rows: int
    accepted: int
    rejected: int
    split_counts: dict[str, int]
    metadata_hash: str
    shards: list[Path]
    input: dict[str, Any] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def n_tasks(self) -> int:
        return len(self.tasks)

    @property
    def has_labels(self) -> bool:
        return bool(self.tasks)

    @property
    def has_split(self) -> bool:
        return bool(self.split_counts)

    @property
    def rejects_path(self) -> Path:
        return self.path / REJECTS_FILE


def read_dataset_info(path: str | os.PathLike[str]) -> DatasetInfo:
    """Read DIR/manifest.json (and check the shards it names exist)."""
    path = Path(path)
    manifest_path = path / MANIFEST_FILE
    if not manifest_path.is_file():
        raise InputDataError(f"{path}: not a fingerprint dataset (no {MANIFEST_FILE}); "
                             "make one with `python -m pipelines featurize`")
    manifest = json.loads(manifest_path.read_text())
    shards = [path / FEATURES_DIR / name for name in manifest["shards"]]
    missing = [str(shard) for shard in shards if not shard.is_file()]
    if missing:
        raise InputDataError(f"{path}: dataset is incomplete, missing {', '.join(missing)}")
    return DatasetInfo(
        path=path,
        spec=FingerprintSpec.from_json(json.dumps(manifest["spec"])),
        tasks=list(manifest["tasks"]),
        input_rows=manifest["input_rows"],
        accepted=manifest["accepted"],
        rejected=manifest["rejected"],
        split_counts=dict(manifest["split_counts"]),
        metadata_hash=manifest["metadata_hash"],
        shards=shards,
        input=manifest.get("input", {}),
        options=manifest.get("options", {}),
    )


def read_shard_metadata(shard: str | os.PathLike[str]) -> tuple[FingerprintSpec, list[str]]:
    """Spec and tasks from one shard's schema metadata (no data is read)."""
    return read_schema_metadata(pq.read_schema(shard).metadata, source=str(shard))


def find_finished(out_dir: str | os.PathLike[str], input_identity: Mapping[str, Any],
                  options: Mapping[str, Any], *, overwrite: bool = False) -> DatasetInfo | None:
    """The dataset at ``out_dir`` if it was made from the same input with the
    same options (a re-run is then a no-op), else None. Checked before any
    work: a directory that is not a dataset, or a dataset made from other
    inputs/options (unless ``overwrite``), is an error, since replacing it
    silently would lose work."""
    out_dir = Path(out_dir)
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    if not (out_dir / MANIFEST_FILE).is_file():
        raise InputDataError(f"{out_dir}: exists, is not empty and is not a fingerprint "
                             "dataset; choose another output directory")
    info = read_dataset_info(out_dir)
    if jsonable(info.input) == jsonable(input_identity) and \
            jsonable(info.options) == jsonable(options):
        return info
    if not overwrite:
        raise InputDataError(f"{out_dir}: already holds a dataset made from other inputs or "
                             "options; pass --overwrite or choose another --out")
    return None


class _ShardedWriter:
    """Writes tables as part-NNNNN.parquet shards of at most ``rows_per_shard``
    rows in row groups of ``row_group_size`` (buffered, so many small input
    batches still make full row groups for fast streaming reads, and the
    bytes written do not depend on how the input was batched)."""

    def __init__(self, directory: Path, schema: pa.Schema, rows_per_shard: int,
                 row_group_size: int, name_pattern: str = "part-{:05d}.parquet") -> None:
        self.directory = directory
        self.name_pattern = name_pattern
        self.schema = schema
        self.rows_per_shard = rows_per_shard
        self.row_group_size = min(row_group_size, rows_per_shard)
        self.shards: list[str] = []
        self.rows_written = 0
        self._buffer: list[pa.Table] = []
        self._buffered_rows = 0
        self._writer: pq.ParquetWriter | None = None
        self._rows_in_shard = 0
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, table: pa.Table) -> None:
        table = table.select(self.schema.names).cast(self.schema)
        self._buffer.append(table)
        self._buffered_rows += table.num_rows
        while self._buffered_rows >= self.row_group_size:
            self._flush(self.row_group_size)

    def close(self) -> None:
        while self._buffered_rows:
            self._flush(min(self._buffered_rows, self.row_group_size))
        if not self.shards:  # an empty dataset still carries its schema
            self._open_shard()
        self._writer.close()

    def _flush(self, n_rows: int) -> None:
        buffered = pa.concat_tables(self._buffer)
        while n_rows:
            if self._writer is None or self._rows_in_shard >= self.rows_per_shard:
                self._open_shard()
            take = min(n_rows, self.rows_per_shard - self._rows_in_shard)
            self._writer.write_table(buffered.slice(0, take), row_group_size=take)
            buffered = buffered.slice(take)
            self._rows_in_shard += take
            self.rows_written += take
            self._buffered_rows -= take
            n_rows -= take
        self._buffer = [buffered] if buffered.num_rows else []

    def _open_shard(self) -> None:
        if self._writer is not None:
            self._writer.close()
        name = self.name_pattern.format(len(self.shards))
        self._writer = pq.ParquetWriter(self.directory / name, self.schema, compression="zstd")
        self.shards.append(name)
        self._rows_in_shard = 0


class DatasetWriter:
    """Builds a dataset in a temp dir beside ``out_dir``; :meth:`commit`
    renames it into place. Use as a context manager: leaving the block with
    an exception removes the temp dir.

    ``scratch_dir`` is free space inside the temp dir for intermediate files
    (the featurization pipeline stages there); it is removed on commit.
    """

    def __init__(self, out_dir: str | os.PathLike[str], spec: FingerprintSpec,
                 tasks: Sequence[str], *, with_split: bool,
                 rows_per_shard: int = DEFAULT_ROWS_PER_SHARD,
                 row_group_size: int = DEFAULT_ROW_GROUP_SIZE) -> None:
        self.out_dir = Path(out_dir).resolve()
        self.spec = spec
        self.tasks = list(tasks)
        self.with_split = with_split
        self._staged = StagedFolder(self.out_dir)
        self.temp_dir = self._staged.path
        self.scratch_dir = self.temp_dir / "_scratch"
        self.scratch_dir.mkdir()
        self._features = _ShardedWriter(self.temp_dir / FEATURES_DIR,
                                        features_schema(spec, tasks, with_split=with_split),
                                        rows_per_shard, row_group_size)
        self._rejects = _ShardedWriter(self.temp_dir, REJECTS_SCHEMA, rows_per_shard=2**62,
                                       row_group_size=row_group_size, name_pattern=REJECTS_FILE)
        self._split_counts: dict[str, int] = {}
        self._committed = False

    def __enter__(self) -> DatasetWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if not self._committed:
            self.abort()

    def write_features(self, table: pa.Table) -> None:
        """Append accepted rows (columns as in :func:`features_schema`)."""
        if self.with_split:
            for item in pc.value_counts(table["split"]).to_pylist():
                self._split_counts[item["values"]] = \
                    self._split_counts.get(item["values"], 0) + item["counts"]
        self._features.write(table)

    def write_rejects(self, table: pa.Table) -> None:
        """Append rejected rows (row, raw, mol_id, reason)."""
        if table.num_rows:
            self._rejects.write(table)

    def commit(self, *, input_rows: int, input_identity: Mapping[str, Any],
               options: Mapping[str, Any], overwrite: bool = False) -> DatasetInfo:
        """Close the files, write the manifest and move the dataset into place.

        Raises if accepted + rejected != input_rows: a row that went missing
        is a bug, and a dataset that silently lost rows must not be published.
        """
        self._features.close()
        self._rejects.close()
        accepted, rejected = self._features.rows_written, self._rejects.rows_written
        if accepted + rejected != input_rows:
            raise RuntimeError(f"row accounting failed for {self.out_dir}: accepted {accepted} "
                               f"+ rejected {rejected} != input rows {input_rows}")
        manifest = {
            "format_version": MANIFEST_VERSION,
            "input_rows": input_rows,
            "accepted": accepted,
            "rejected": rejected,
            "split_counts": {name: self._split_counts.get(name, 0) for name in SPLITS}
            if self.with_split else {},
            "spec": json.loads(self.spec.to_json()),
            "tasks": self.tasks,
            "metadata_hash": metadata_hash(self.spec, self.tasks),
            "shards": self._features.shards,
            "input": dict(input_identity),
            "options": dict(options),
        }
        shutil.rmtree(self.scratch_dir)
        (self.temp_dir / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        self._replace_out_dir(overwrite)
        self._committed = True
        return read_dataset_info(self.out_dir)

    def abort(self) -> None:
        self._staged.discard()

    def _replace_out_dir(self, overwrite: bool) -> None:
        if self.out_dir.exists() and any(self.out_dir.iterdir()) and not overwrite:
            raise InputDataError(f"{self.out_dir}: already holds a dataset made from other "
                                 "inputs or options; pass --overwrite or choose another --out")
        self._staged.publish()
