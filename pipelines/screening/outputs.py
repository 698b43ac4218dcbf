"""The files a screening run writes, streamed with bounded memory.

Layout of the output folder::

    scores/part-00000.parquet ...  one row per scored molecule (committed in parts as the
                                    screen goes: pipelines/screening/score_parts.py): row (source
                                    position), mol_id, smiles (as in the library;
                                    canonical for SDF records),
                                    one float32 probability column per assay;
                                    with a model that carries its training domain,
                                    nn_similarity, nn_mol_id, in_training_set
    rejects.parquet                 row, raw, mol_id, reason: every library
                                    row that could not be scored
    hits.parquet                    top K per assay: assay, rank, row, mol_id, smiles, score,
                                    alerts (structural alert names; --exclude-alerts:
                                    the K best molecules without any), and the
                                    domain columns when the scores have them
    multi_assay_hits.parquet        molecules active in several assays (in their top K,
                                    or scoring >= threshold), with alerts
    hits.png | hits-<assay>.png     the top hits drawn (per assay with --assays)
    similarity.png                  histogram of the library's nn_similarity (domain only)
    screening.json                  counts, model, library identity, options

Everything is written into a hidden folder beside the output, named by the
screening's identity, and renamed into place when complete, so a killed run
never leaves files that look done, and the same command again resumes from
the parts it committed.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from featurize.publishing import StagedFolder
from pipelines.errors import UserError
from pipelines.serving.applicability_domain import IN_TRAINING_SET_COLUMN, NN_MOL_ID_COLUMN, NN_SIMILARITY_COLUMN

SCORES_DIR = "scores"
REJECTS_FILE = "rejects.parquet"
HITS_FILE = "hits.parquet"
SIMILARITY_PICTURE = "similarity.png"
MULTI_ASSAY_FILE = "multi_assay_hits.parquet"
MANIFEST_FILE = "screening.json"

DOMAIN_FIELDS = (
    pa.field(NN_SIMILARITY_COLUMN, pa.float32()),  # null where not searched (--domain hits)
    pa.field(NN_MOL_ID_COLUMN, pa.string()),
    pa.field(IN_TRAINING_SET_COLUMN, pa.bool_(), nullable=False),
)


def scores_schema(assays: Sequence[str], with_domain: bool = False) -> pa.Schema:
    return pa.schema([
        pa.field("row", pa.int64(), nullable=False),
        pa.field("mol_id", pa.string()),
        pa.field("smiles", pa.string()),
        *(pa.field(assay, pa.float32(), nullable=False) for assay in assays),
        *(DOMAIN_FIELDS if with_domain else ()),
    ])


class SingleParquetWriter:
    """Appends tables to one Parquet file (written even when empty)."""

    def __init__(self, path: Path, schema: pa.Schema):
        self.path, self.schema = path, schema
        self._writer = pq.ParquetWriter(path, schema)

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self._writer.write_table(table.cast(self.schema))

    def close(self) -> None:
        self._writer.close()


class StagedOutput(StagedFolder):
    """A screening's output folder, staged under its identity's digest (so a
    killed screening run again resumes there); :meth:`commit` writes its
    manifest and publishes it (featurize.publishing: the old output is moved
    aside, not deleted, until the new one is in place)."""

    def __init__(self, out_dir: Path, identity: Mapping[str, Any]) -> None:
        super().__init__(out_dir, resume_key=identity_digest(identity)[:16])

    def commit(self, manifest: Mapping[str, Any]) -> None:
        (self.path / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, default=str))
        self.publish()


def read_manifest(out_dir: Path) -> dict[str, Any] | None:
    path = out_dir / MANIFEST_FILE
    return json.loads(path.read_text()) if path.is_file() else None


def check_out_dir(out_dir: Path, identity: Mapping[str, Any], overwrite: bool) -> dict[str, Any] | None:
    """The manifest of a finished identical run in ``out_dir`` (nothing to
    do), None when the run should go ahead; refuses to replace other work."""
    if not out_dir.exists() or not any(out_dir.iterdir()):
        return None
    manifest = read_manifest(out_dir)
    if manifest is None:
        raise UserError(f"--out {out_dir} exists, is not empty and holds no {MANIFEST_FILE}; "
                        "choose another output folder")
    if _canonical(manifest.get("identity")) == _canonical(identity):
        return manifest
    if not overwrite:
        raise UserError(f"--out {out_dir} holds a screening of another model, library or "
                        "options; pass --overwrite or choose another output folder")
    return None


def identity_digest(identity: Mapping[str, Any]) -> str:
    """SHA-256 of a screening's identity: a short stable name for it."""
    return hashlib.sha256(_canonical(identity).encode()).hexdigest()


def _canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)
