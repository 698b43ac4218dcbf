"""Readers of raw inputs, streamed as Arrow batches.

Every reader yields batches with the same columns, whatever the format:
``_row`` (int64, the record's 0-based position in the source: data row of a
table, non-blank line of a .smi, record of an .sdf), ``raw`` (the SMILES, or
the mol block for .sdf), ``mol_id`` (string; kept from the id column or
generated from the position as MOL000001...; null where the id cell is
empty), ``reason`` (string, null unless the reader itself rejects the row:
a SMILES, id or record that is not UTF-8 becomes "hex " and its bytes in
hex, which no parser takes for a molecule, with the reason "not UTF-8 ...")
and one float64 column per task (null = missing label). Memory stays
bounded by one batch, so libraries larger than RAM stream through.

A file that cannot be read at all (missing, a directory, empty, a ragged
CSV line, a cut-off gzip, not Parquet) raises :class:`InputDataError` with
one line naming the file, where it failed and what to do, never a
traceback of the library that read it.
"""
from __future__ import annotations

import gzip
import hashlib
import logging
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pyarrow.types as patypes

from featurize.errors import InputDataError

logger = logging.getLogger(__name__)

BATCH_ROWS = 8192
TABLE_SUFFIXES = (".csv", ".csv.gz", ".parquet")
SUFFIXES = (*TABLE_SUFFIXES, ".smi", ".smi.gz", ".sdf", ".sdf.gz")
TaskSelection = Literal["auto"] | Sequence[str] | None
#: What the ``raw`` (or ``mol_id``) cell of a row that is not UTF-8 starts
#: with, before its bytes in hex: the space makes it an invalid SMILES.
HEX_PREFIX = "hex "


def generated_ids(rows: np.ndarray) -> pa.Array:
    """Ids for inputs without an id column, from the source position."""
    return pa.array([f"MOL{row + 1:06d}" for row in rows.tolist()], pa.string())


def suffix_of(path: Path) -> str:
    name = path.name.lower()
    for suffix in sorted(SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise InputDataError(f"{path}: unknown input format; expected one of {', '.join(SUFFIXES)}")


#: Id column used when none is named and a table has it.
DEFAULT_ID_COLUMN = "mol_id"


@dataclass(frozen=True)
class LibrarySource:
    """A molecule file and how to read it.

    ``tasks``: "auto" takes every numeric column that is not the SMILES or id
    column as a task (.csv/.parquet; .smi/.sdf have none); None reads no
    labels (an unlabeled screening library); a list names the task columns.
    ``id_col`` None takes the table's ``mol_id`` column where it has one (the
    column the panel and our own outputs use, so duplicate ids are caught and
    never read as a task), else generates ids; for .sdf it names a data field
    (``_Name`` is the title line).
    """

    path: Path
    smiles_col: str = "smiles"
    id_col: str | None = None
    tasks: TaskSelection = "auto"

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        if self.path.is_dir():
            raise InputDataError(f"{self.path}: is a directory; give one molecule file "
                                 f"({', '.join(SUFFIXES)})")
        if not self.path.is_file():
            raise FileNotFoundError(f"input file not found: {self.path}")
        suffix = suffix_of(self.path)  # fail early on an unknown format
        if (self.id_col is None and suffix in TABLE_SUFFIXES
                and DEFAULT_ID_COLUMN in self._table_schema().names):
            object.__setattr__(self, "id_col", DEFAULT_ID_COLUMN)

    @property
    def kind(self) -> Literal["smiles", "molblock"]:
        """What the ``raw`` column holds."""
        return "molblock" if suffix_of(self.path).startswith(".sdf") else "smiles"

    def task_names(self) -> list[str]:
        """The task columns this source yields, in order."""
        if self.tasks is None or suffix_of(self.path) not in TABLE_SUFFIXES:
            if self.tasks not in (None, "auto"):
                raise InputDataError(f"{self.path}: .smi/.sdf inputs carry no label columns, "
                                     f"but tasks {list(self.tasks)} were asked for")
            return []
        schema = self._table_schema()
        self._require_columns(schema)
        if self.tasks == "auto":
            skipped = [f.name for f in schema if f.name not in self._key_columns()
                       and not _is_numeric(f.type)]
            if skipped:
                logger.info("%s: ignoring non-numeric columns %s", self.path, skipped)
            return [f.name for f in schema if f.name not in self._key_columns()
                    and _is_numeric(f.type)]
        missing = [task for task in self.tasks if task not in schema.names]
        if missing:
            raise InputDataError(f"{self.path}: task columns not found: {missing[:5]}"
                                 f"{' ...' if len(missing) > 5 else ''}")
        return list(self.tasks)

    def iter_batches(self, batch_rows: int = BATCH_ROWS) -> Iterator[pa.Table]:
        """Stream the input as tables of ``_row, raw, mol_id, <tasks...>``."""
        suffix = suffix_of(self.path)
        if suffix in TABLE_SUFFIXES:
            yield from self._iter_table(self.task_names(), batch_rows)
            return
        records = self._iter_smi() if suffix.startswith(".smi") else self._iter_sdf()
        try:
            yield from _chunks(records, batch_rows)
        except (OSError, EOFError, zlib.error) as error:
            raise _unreadable(self.path, error) from error

    # -- tables --------------------------------------------------------------------
    def _key_columns(self) -> set[str]:
        return {self.smiles_col, *([self.id_col] if self.id_col else [])}

    def _require_columns(self, schema: pa.Schema) -> None:
        for role, column in (("SMILES", self.smiles_col), ("id", self.id_col)):
            if column and column not in schema.names:
                raise InputDataError(f"{self.path}: no {role} column {column!r} "
                                     f"(columns: {', '.join(schema.names[:12])}"
                                     f"{' ...' if len(schema.names) > 12 else ''})")

    def _table_schema(self) -> pa.Schema:
        try:
            if suffix_of(self.path) == ".parquet":
                schema = pq.read_schema(self.path)
            else:  # type inference on the first block only decides which columns are numeric
                schema = pacsv.open_csv(self.path,
                                        read_options=pacsv.ReadOptions(block_size=1 << 20)).schema
            schema.names  # noqa: B018  (names are decoded when first read: a bad byte fails here)
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error, "near the start") from error
        return schema

    def _iter_table(self, tasks: list[str], batch_rows: int) -> Iterator[pa.Table]:
        # SMILES and ids are read as bytes and decoded row by row where needed
        # (see _text_cells), so one cell that is not UTF-8 rejects one row.
        types = {self.smiles_col: pa.binary(), **({self.id_col: pa.binary()} if self.id_col
                                                 else {}), **dict.fromkeys(tasks, pa.float64())}
        if suffix_of(self.path) == ".parquet":
            batches = pq.ParquetFile(self.path).iter_batches(batch_size=batch_rows,
                                                            columns=list(types))
        else:
            batches = pacsv.open_csv(
                self.path, read_options=pacsv.ReadOptions(block_size=1 << 22),
                convert_options=pacsv.ConvertOptions(column_types=types, include_columns=list(types),
                                                     strings_can_be_null=False))
        start = 0
        try:
            for batch in _rebatch(batches, batch_rows):
                yield self._source_table(batch, start, tasks)
                start += batch.num_rows
        except _READ_ERRORS as error:
            raise _unreadable(self.path, error, f"near data row {start}") from error
        if start == 0:  # no data rows: one empty batch, as for .smi and .sdf
            yield self._source_table(pa.schema(types).empty_table(), 0, tasks)

    def _source_table(self, batch: pa.Table, start: int, tasks: list[str]) -> pa.Table:
        """A table's rows as featurize_batch takes them: ``_row`` from ``start``,
        ``raw``, ``mol_id`` (given, or generated from the row) and the tasks as float."""
        rows = np.arange(start, start + batch.num_rows, dtype=np.int64)
        raw, raw_reasons = _text_cells(batch.column(self.smiles_col), f"column {self.smiles_col!r}")
        ids, id_reasons = (_text_cells(batch.column(self.id_col), f"column {self.id_col!r}")
                           if self.id_col else (generated_ids(rows), None))
        return pa.table({
            "_row": rows,
            "raw": raw,
            "mol_id": _empty_to_null(ids),
            "reason": _first_reasons(batch.num_rows, raw_reasons, id_reasons),
            **{task: batch.column(task).cast(pa.float64()) for task in tasks},
        })

    # -- .smi and .sdf ------------------------------------------------------------
    def _iter_smi(self) -> Iterator[_Record]:
        """One record per line with a field: SMILES, then the rest as the
        name. Lines are split as bytes, on ASCII whitespace only (the .smi
        separators), so a no-break space or a byte that is not UTF-8 stays
        inside its field and is rejected there, not used as a separator."""
        with _open_binary(self.path) as handle:
            for line in handle:
                fields = line.split(maxsplit=1)
                if not fields:
                    continue
                raw, raw_reason = _decode(fields[0], "SMILES field")
                name, name_reason = (_decode(fields[1].strip(), "name field") if len(fields) > 1
                                     else (None, None))
                yield _Record(raw, name, raw_reason or name_reason)

    def _iter_sdf(self) -> Iterator[_Record]:
        """Records split on ``$$$$`` as text (the raw text goes to the rejects
        file and travels to Ray workers; RDKit parses it there)."""
        with _open_binary(self.path) as handle:
            lines: list[bytes] = []
            for line in handle:
                if line.startswith(b"$$$$"):
                    yield self._sdf_record(lines)
                    lines = []
                else:
                    lines.append(line)
            if any(line.strip() for line in lines):
                yield self._sdf_record(lines)

    def _sdf_record(self, byte_lines: list[bytes]) -> _Record:
        """A record's mol block and id; a record that is not UTF-8 keeps its
        bytes in hex and gets the reason (its id is still read, with
        replacement characters, so the row can be found)."""
        _, reason = _decode(b"".join(byte_lines), "record")
        lines = [line.decode("utf-8", errors="replace") for line in byte_lines]
        end = next((i for i, line in enumerate(lines) if line.startswith("M  END")), len(lines) - 1)
        molblock = ("".join(lines[:end + 1]) if reason is None
                    else HEX_PREFIX + b"".join(byte_lines[:end + 1]).hex())
        if self.id_col is None:
            return _Record(molblock, None, reason)
        if self.id_col == "_Name":
            return _Record(molblock, lines[0].strip() if lines else "", reason)
        for i, line in enumerate(lines[end + 1:], start=end + 1):
            if line.startswith(">") and f"<{self.id_col}>" in line and i + 1 < len(lines):
                return _Record(molblock, lines[i + 1].strip(), reason)
        return _Record(molblock, "", reason)

    def identity(self) -> dict[str, object]:
        """What makes a re-run a no-op: the same bytes at the same path."""
        return {"path": str(self.path.resolve()), "size": self.path.stat().st_size,
                "sha256": file_sha256(self.path)}


class _Record(NamedTuple):
    """One .smi line or .sdf record: its text, its id (None: generate one;
    "": empty) and the reader's reason to reject it (None: fine)."""

    raw: str
    mol_id: str | None
    reason: str | None


def _chunks(records: Iterator[_Record], batch_rows: int) -> Iterator[pa.Table]:
    start = 0
    chunk: list[_Record] = []
    for record in records:
        chunk.append(record)
        if len(chunk) == batch_rows:
            yield _record_table(start, chunk)
            start += len(chunk)
            chunk = []
    if chunk or start == 0:
        yield _record_table(start, chunk)


def _record_table(start: int, records: list[_Record]) -> pa.Table:
    rows = np.arange(start, start + len(records), dtype=np.int64)
    generated = generated_ids(rows).to_pylist()
    return pa.table({
        "_row": rows,
        "raw": pa.array([record.raw for record in records], pa.string()),
        "mol_id": pa.array([(record.mol_id or None) if record.mol_id is not None else auto
                            for record, auto in zip(records, generated)], pa.string()),
        "reason": pa.array([record.reason for record in records], pa.string()),
    })


def _decode(data: bytes, what: str) -> tuple[str, str | None]:
    """``data`` as text and None; where it is not UTF-8, :data:`HEX_PREFIX`
    and its bytes in hex, and the reason naming ``what`` and the byte."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as error:
        return HEX_PREFIX + data.hex(), (f"not UTF-8 ({what}: byte 0x{data[error.start]:02x} "
                                         f"at offset {error.start})")


def _text_cells(cells: pa.ChunkedArray, what: str) -> tuple[pa.ChunkedArray | pa.Array,
                                                             list[str | None] | None]:
    """A table column as strings and, only where some cell is not UTF-8,
    one reason per cell (see :func:`_decode`). Text columns are validated
    in Arrow (one pass in C); cells are decoded one by one only in a batch
    that holds a bad one."""
    if not (patypes.is_string(cells.type) or patypes.is_large_string(cells.type)
            or patypes.is_binary(cells.type) or patypes.is_large_binary(cells.type)):
        return cells.cast(pa.string()), None  # numbers: ids such as PubChem CIDs
    data = cells.cast(pa.binary())  # a string column read from Parquet is not checked yet
    try:
        return data.cast(pa.string()), None
    except pa.ArrowInvalid:
        decoded = [(None, None) if value is None else _decode(value, what)
                   for value in data.to_pylist()]
        return (pa.array([text for text, _ in decoded], pa.string()),
                [reason for _, reason in decoded])


def _first_reasons(n_rows: int, *per_column: list[str | None] | None) -> pa.Array:
    """Per row, the first reader reason of the columns that have any."""
    given = [reasons for reasons in per_column if reasons is not None]
    if not given:
        return pa.nulls(n_rows, pa.string())
    return pa.array([next((reason for reason in row if reason), None) for row in zip(*given)],
                    pa.string())


#: What pyarrow and the decompressors raise on a file they cannot read.
_READ_ERRORS = (pa.ArrowInvalid, pa.ArrowTypeError, OSError, EOFError, zlib.error,
                UnicodeDecodeError)


def _unreadable(path: Path, error: Exception, where: str = "") -> InputDataError:
    """One line on a file that cannot be read: which file, where, what to do."""
    detail = " ".join(str(error).split()) or type(error).__name__
    at = f" {where}" if where else ""
    if isinstance(error, UnicodeDecodeError):
        return InputDataError(f"{path}: the header line is not UTF-8 (byte 0x"
                              f"{error.object[error.start]:02x} at offset {error.start}); save "
                              "the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)")
    if path.name.lower().endswith(".gz") and not isinstance(error, pa.ArrowInvalid | pa.ArrowTypeError):
        return InputDataError(f"{path}: the gzip data is cut short or damaged ({detail}); the "
                              f"file ends at byte {path.stat().st_size}; download or copy it "
                              "again (gzip -t checks a file)")
    if detail == "Empty CSV file":
        return InputDataError(f"{path}: empty file; a CSV needs a header line naming its columns")
    if detail.startswith("CSV parse error: "):
        return InputDataError(f"{path}: bad CSV line{at}: {detail.removeprefix('CSV parse error: ')}"
                              "; every line needs as many fields as the header (quote fields "
                              "that hold a comma)")
    if suffix_of(path) == ".parquet":
        return InputDataError(f"{path}: not a readable Parquet file ({detail}); write it again, "
                              "or name it by its real format")
    return InputDataError(f"{path}: cannot read the table{at}: {detail}")


def _rebatch(batches: Iterator[pa.RecordBatch], batch_rows: int) -> Iterator[pa.Table]:
    """Tables of exactly ``batch_rows`` rows (the last may be shorter), so
    batch boundaries do not depend on the reader's block size."""
    pending: list[pa.RecordBatch] = []
    pending_rows = 0
    for batch in batches:
        pending.append(batch)
        pending_rows += batch.num_rows
        if pending_rows < batch_rows:
            continue
        table = pa.Table.from_batches(pending)
        offset = 0
        while table.num_rows - offset >= batch_rows:
            yield table.slice(offset, batch_rows)
            offset += batch_rows
        rest = table.slice(offset)
        pending, pending_rows = rest.to_batches(), rest.num_rows
    if pending_rows:
        yield pa.Table.from_batches(pending)


def _empty_to_null(ids: pa.Array | pa.ChunkedArray) -> pa.ChunkedArray:
    """Blank ids become null (rejected later as "empty id")."""
    blank = pc.equal(pc.utf8_trim_whitespace(ids), "")
    return pc.if_else(blank, pa.scalar(None, pa.string()), ids)


def _is_numeric(data_type: pa.DataType) -> bool:
    return (patypes.is_integer(data_type) or patypes.is_floating(data_type)
            or patypes.is_boolean(data_type) or patypes.is_null(data_type))


def _open_binary(path: Path) -> IO[bytes]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    return opener(path, "rb")


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
