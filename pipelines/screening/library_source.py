"""What a screening library is and how Ray Data reads it.

A library is either raw molecules (.csv/.csv.gz/.parquet/.smi/.sdf, read by
featurize.sources.readers.LibrarySource and featurized with the model's own spec) or
already featurized (a fingerprint dataset folder from `pipelines featurize`,
or one of its Parquet shards), whose spec must match the model's.

Both are read by one Ray Data datasource that streams Arrow batches from the
file on the driver's node (no shared filesystem needed on a cluster: blocks
travel through the object store) and numbers rows by source position
(``_row``), which is what makes "accepted + rejected == library rows"
checkable downstream.
"""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import pyarrow as pa
import pyarrow.parquet as pq

from featurize.dataset import MANIFEST_FILE, read_dataset_info
from featurize.errors import InputDataError
from featurize.sources.readers import LibrarySource
from featurize.spec import SPEC_METADATA_KEY, FingerprintSpec, read_schema_metadata

#: Rows per block: a few seconds of RDKit work per featurize task, so both the
#: task overhead and the memory held in flight stay small.
BLOCK_ROWS = 4096


@dataclass(frozen=True)
class ScreeningLibrary:
    """A resolved library: raw molecules (``source``) or fingerprints
    (``fingerprint_files`` with their ``spec``)."""

    path: Path
    kind: Literal["smiles", "molblock", "fingerprints"]
    source: LibrarySource | None = None
    fingerprint_files: tuple[Path, ...] = ()
    spec: FingerprintSpec | None = None
    rows: int | None = None  # known up front for Parquet inputs (progress bar total)

    @property
    def featurized(self) -> bool:
        return self.kind == "fingerprints"

    def describe(self) -> str:
        return f"{self.path} ({'fingerprints, ' + self.spec.describe() if self.featurized else self.kind})"

    def iter_batches(self, batch_rows: int = BLOCK_ROWS) -> Iterator[pa.Table]:
        """Stream ``_row, mol_id, raw`` (raw libraries, with the reader's
        ``reason`` where it rejected a row itself, e.g. text that is not
        UTF-8) or ``_row, mol_id, smiles, fp`` (fingerprints), in source order."""
        if self.source is not None:
            for batch in self.source.iter_batches(batch_rows):
                yield batch.select([name for name in ("_row", "mol_id", "raw", "reason")
                                    if name in batch.column_names])
            return
        start = 0
        for path in self.fingerprint_files:
            for record_batch in pq.ParquetFile(path).iter_batches(
                    batch_size=batch_rows, columns=["mol_id", "smiles", "fp"]):
                table = pa.Table.from_batches([record_batch])
                rows = pa.array(range(start, start + table.num_rows), pa.int64())
                start += table.num_rows
                yield table.add_column(0, "_row", rows)


def resolve_library(path: str | Path, smiles_col: str = "smiles",
                    id_col: str | None = None) -> ScreeningLibrary:
    """Decide what ``path`` holds; fingerprint inputs carry their spec."""
    path = Path(path)
    if path.is_dir():
        if not (path / MANIFEST_FILE).is_file():
            raise InputDataError(f"--library {path} is a folder but not a fingerprint dataset "
                                 f"(no {MANIFEST_FILE}); give a molecule file or a featurize output")
        info = read_dataset_info(path)
        return ScreeningLibrary(path, "fingerprints", fingerprint_files=tuple(info.shards),
                                spec=info.spec, rows=info.accepted)
    if not path.is_file():
        raise FileNotFoundError(f"library not found: {path}")
    if path.name.lower().endswith(".parquet"):
        metadata = pq.read_schema(path).metadata or {}
        rows = pq.ParquetFile(path).metadata.num_rows
        if SPEC_METADATA_KEY in metadata:
            spec, _ = read_schema_metadata(metadata, source=str(path))
            return ScreeningLibrary(path, "fingerprints", fingerprint_files=(path,), spec=spec,
                                    rows=rows)
        source = LibrarySource(path, smiles_col=smiles_col, id_col=id_col, tasks=None)
        return ScreeningLibrary(path, source.kind, source=source, rows=rows)
    source = LibrarySource(path, smiles_col=smiles_col, id_col=id_col, tasks=None)
    return ScreeningLibrary(path, source.kind, source=source)


def check_library_spec(library: ScreeningLibrary, model_spec: FingerprintSpec) -> None:
    """A featurized library must have been made with the model's spec; raw
    libraries are featurized with the model's spec, so they always agree."""
    if library.featurized:
        model_spec.check_compatible(library.spec, what=f"library {library.path}", expected="model")
    elif model_spec.kind != "morgan":
        raise InputDataError(
            f"the model uses {model_spec.describe()} fingerprints, which cannot be computed "
            f"from the SMILES in {library.path}; screen a library featurized the same way")


