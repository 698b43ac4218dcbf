"""Import fingerprints made elsewhere: DeepChem-style aligned arrays.

DeepChem exports a featurized dataset as three aligned arrays: features
(one 0/1 fingerprint row per molecule), labels y and weights w, where a
weight of 0 marks a label that was never measured (its y, usually 0, means
nothing). The MMoEEx reference split of PCBA-128 ships exactly that, as gzip
CSVs with a header row of column indexes (../shared/data/pcba-subset).

:func:`import_deepchem_arrays` streams such files, in chunks, into the same
fingerprint dataset featurize_file writes (featurize/dataset.py): bits packed
into ``fp``, labels as int8 with -1 where the weight is 0, generated mol_ids
(the arrays carry none), no SMILES, and a seeded random split. The spec is
``kind="imported"`` with the foreign description as its ``source``, so a
model trained on imported fingerprints refuses RDKit-made ones and back.
"""
from __future__ import annotations

import gzip
import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv
from tqdm.auto import tqdm

from featurize.dataset import REJECTS_SCHEMA, DatasetWriter, find_finished
from featurize.errors import InputDataError
from featurize.fingerprints import pack_bits
from featurize.pipeline import FeaturizeSummary
from featurize.spec import FingerprintSpec
from featurize.splits import check_fractions, random_split, split_names

logger = logging.getLogger(__name__)

PathLike = str | os.PathLike[str]
Parts = PathLike | Sequence[PathLike]
DEFAULT_CHUNK_ROWS = 8192
SPLITS = ("random", "none")


@dataclass(frozen=True)
class _Part:
    """One aligned (features, labels, weights) triple and its mol_id prefix."""

    features: Path
    labels: Path
    weights: Path
    name: str


def import_deepchem_arrays(features: Parts, labels: Parts, weights: Parts,
                           tasks: PathLike | Sequence[str], out_dir: PathLike, foreign_spec: str,
                           split: str = "random", fractions: Sequence[float] = (0.8, 0.1, 0.1),
                           seed: int = 0, *, radius: int = 2, max_rows: int | None = None,
                           chunk_rows: int = DEFAULT_CHUNK_ROWS, overwrite: bool = False,
                           progress: bool = True) -> FeaturizeSummary:
    """Convert aligned feature/label/weight arrays into a fingerprint dataset.

    ``features``, ``labels``, ``weights``: one file each, or lists of files
    (parts, concatenated in order; the i-th files of the three lists are
    aligned). Files are ``.csv``/``.csv.gz`` with a header row (DeepChem's
    ``to_csv``), or ``.npy``. ``tasks``: the task names, or a file of them
    (``.csv``: one column with a header line, as DeepChem writes it; other
    files: one name per line). ``foreign_spec`` says how the fingerprints
    were made (for example "deepchem CircularFingerprint(size=1024, radius=2)")
    and is stored as the spec's ``source``; ``radius`` is the radius it used.
    mol_ids are made from the part's file name: ``pcba_val_features.csv.gz``
    gives ``pcba-val-000001``... ``split``: "random" (seeded, ``fractions``
    train/valid/test) or "none"; a scaffold split needs SMILES, which such
    arrays do not have. ``max_rows``: import only the first rows (tests,
    quick looks). Re-running with the same inputs and options is a no-op.
    """
    started = time.perf_counter()
    if split not in SPLITS:
        hint = " (the arrays carry no SMILES to take scaffolds from)" if split == "scaffold" else ""
        raise InputDataError(f"split must be one of {SPLITS} for imported arrays, got {split!r}{hint}")
    fractions = check_fractions(fractions)
    parts = _parts(features, labels, weights)
    task_list = _task_names(tasks)
    n_bits = _width(parts[0].features)
    spec = FingerprintSpec(kind="imported", radius=radius, n_bits=n_bits, counts=False,
                           source=foreign_spec)
    identity = {"arrays": [{key: _file_identity(path) for key, path in asdict(part).items()
                            if key != "name"} for part in parts]}
    options = {"spec": spec.to_json(), "tasks": task_list, "split": split,
               "fractions": list(fractions), "seed": seed, "max_rows": max_rows}
    finished = find_finished(out_dir, identity, options, overwrite=overwrite)
    if finished is not None:
        logger.info("%s already holds this import (same arrays and options): nothing to do", out_dir)
        return FeaturizeSummary.from_info(finished, elapsed_s=time.perf_counter() - started,
                                          skipped_existing=True, backend="none")

    rows_per_part = [_aligned_rows(part) for part in parts]
    total_rows = sum(rows_per_part) if max_rows is None else min(sum(rows_per_part), max_rows)
    splits = split_names(random_split(total_rows, fractions, seed)) if split == "random" else None
    written = 0
    with DatasetWriter(out_dir, spec, task_list, with_split=splits is not None) as writer, \
            tqdm(total=total_rows, unit="mol", desc="import arrays", disable=not progress) as bar:
        for part, part_rows in zip(parts, rows_per_part):
            if written >= total_rows:
                break
            take = min(part_rows, total_rows - written)
            for start, bits, y, w in _aligned_chunks(part, task_list, n_bits, take, chunk_rows):
                table = _features_table(part.name, start, bits, _labels_from(y, w, part, start), task_list)
                if splits is not None:
                    table = table.append_column("split", pa.array(splits[written:written + len(bits)]))
                writer.write_features(table)
                written += len(bits)
                bar.update(len(bits))
        writer.write_rejects(REJECTS_SCHEMA.empty_table())
        info = writer.commit(input_rows=written, input_identity=identity, options=options,
                             overwrite=overwrite)
    logger.info("imported %d molecules x %d tasks from %d part(s) into %s",
                written, len(task_list), len(parts), out_dir)
    return FeaturizeSummary.from_info(info, elapsed_s=time.perf_counter() - started,
                                      skipped_existing=False, backend="local")


def part_name(features_path: PathLike) -> str:
    """mol_id prefix of a part: the file name without extensions and without
    its "features"/"X" word, "_" as "-" (``pcba_val_features.csv.gz`` -> ``pcba-val``)."""
    stem = Path(features_path).name.split(".")[0]
    words = [word for word in re.split(r"[_\-]+", stem) if word and word.lower() not in {"features", "x"}]
    return "-".join(words) or "imported"


def _as_list(paths: Parts) -> list[Path]:
    if isinstance(paths, (str, os.PathLike)):
        return [Path(paths)]
    return [Path(path) for path in paths]


def _parts(features: Parts, labels: Parts, weights: Parts) -> list[_Part]:
    lists = {"features": _as_list(features), "labels": _as_list(labels), "weights": _as_list(weights)}
    counts = {key: len(value) for key, value in lists.items()}
    if len(set(counts.values())) != 1 or not counts["features"]:
        raise InputDataError(f"features, labels and weights must list the same number of files, "
                             f"got {counts}")
    for path in (path for paths in lists.values() for path in paths):
        if not path.is_file():
            raise InputDataError(f"array file not found: {path}")
    parts = [_Part(f, y, w, part_name(f)) for f, y, w in zip(*lists.values())]
    names = [part.name for part in parts]
    if len(set(names)) != len(names):
        raise InputDataError(f"feature files give the same mol_id prefix twice: {names}; rename them")
    return parts


def _task_names(tasks: PathLike | Sequence[str]) -> list[str]:
    if isinstance(tasks, (str, os.PathLike)):
        path = Path(tasks)
        if not path.is_file():
            raise InputDataError(f"task list not found: {path}")
        lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
        names = lines[1:] if path.suffix == ".csv" else lines  # DeepChem's to_csv writes a header
    else:
        names = [str(name) for name in tasks]
    if not names or len(set(names)) != len(names):
        raise InputDataError(f"task names must be non-empty and unique, got {len(names)} names "
                             f"({len(names) - len(set(names))} repeated) from {tasks}")
    return names


def _is_npy(path: Path) -> bool:
    return path.name.endswith(".npy")


def _open_text(path: Path):
    return gzip.open(path, "rt") if path.name.endswith(".gz") else open(path)


def _count_rows(path: Path) -> int:
    """Rows of an array file (a CSV's header line not counted)."""
    if _is_npy(path):
        return int(np.load(path, mmap_mode="r").shape[0])
    opener = gzip.open if path.name.endswith(".gz") else open
    lines, last = 0, b"\n"
    with opener(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            lines += block.count(b"\n")
            last = block[-1:]
    lines += last != b"\n"  # a last line without its newline
    return max(lines - 1, 0)


def _aligned_rows(part: _Part) -> int:
    """Rows of a part, from its (small) label and weight files; the features
    file is checked against it while it streams, so it is read only once."""
    counts = {str(path): _count_rows(path) for path in (part.labels, part.weights)}
    if len(set(counts.values())) != 1:
        raise InputDataError(f"labels and weights are not aligned: rows {counts}")
    return next(iter(counts.values()))


def _width(path: Path) -> int:
    if _is_npy(path):
        array = np.load(path, mmap_mode="r")
        return int(array.shape[1]) if array.ndim == 2 else 1
    with _open_text(path) as handle:
        return len(handle.readline().split(","))


def _file_identity(path: Path) -> dict[str, object]:
    stat = path.stat()
    return {"path": str(path.resolve()), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def _chunks(path: Path, dtype: type, rows: int, chunk_rows: int) -> Iterator[np.ndarray]:
    """2-D chunks of exactly ``chunk_rows`` rows (the last may be shorter)
    covering the first ``rows`` rows of an array file."""
    if _is_npy(path):
        array = np.load(path, mmap_mode="r")
        array = array.reshape(len(array), -1)
        for start in range(0, rows, chunk_rows):
            yield np.asarray(array[start:min(start + chunk_rows, rows)], dtype=dtype)
        return
    pending: list[np.ndarray] = []
    pending_rows = emitted = 0
    for block in _csv_blocks(path, dtype):
        pending.append(block[: rows - emitted - pending_rows])
        pending_rows += len(pending[-1])
        while pending_rows >= chunk_rows or (pending_rows and emitted + pending_rows == rows):
            buffered = np.concatenate(pending) if len(pending) > 1 else pending[0]
            take = min(chunk_rows, len(buffered))
            yield buffered[:take]
            emitted += take
            pending, pending_rows = [buffered[take:]], len(buffered) - take
        if emitted == rows:
            return
    if pending_rows:  # a short file: the caller reports the misalignment
        yield np.concatenate(pending)


def _csv_blocks(path: Path, dtype: type) -> Iterator[np.ndarray]:
    """Blocks of a CSV (header line skipped) parsed by Arrow's multithreaded
    reader straight into ``dtype`` (the 90 million bits of the real PCBA
    subset in a few seconds)."""
    with _open_text(path) as handle:
        width = len(handle.readline().split(","))
    names = [f"c{i}" for i in range(width)]
    arrow_type = pa.from_numpy_dtype(np.dtype(dtype))
    reader = pa_csv.open_csv(
        path, read_options=pa_csv.ReadOptions(skip_rows=1, column_names=names, block_size=1 << 22),
        convert_options=pa_csv.ConvertOptions(column_types=dict.fromkeys(names, arrow_type)))
    try:
        for batch in reader:
            if batch.num_rows:
                yield np.asarray(batch.to_tensor(row_major=True))
    except pa.ArrowInvalid as error:
        raise InputDataError(f"{path}: {str(error).splitlines()[0]} (expected {np.dtype(dtype).name} "
                             "values)") from None


def _aligned_chunks(part: _Part, tasks: Sequence[str], n_bits: int, rows: int,
                    chunk_rows: int) -> Iterator[tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """(first row, bits uint8, labels float, weights float) chunks, checked for shape and values."""
    # Features parse as float: exports write bits as "1" or as "1.0".
    readers = (_chunks(part.features, np.float32, rows, chunk_rows),
               _chunks(part.labels, np.float64, rows, chunk_rows),
               _chunks(part.weights, np.float64, rows, chunk_rows))
    start = 0
    for bits, y, w in zip(*readers, strict=False):
        if not len(bits) == len(y) == len(w):
            raise InputDataError(f"{part.name}: features, labels and weights are not aligned "
                                 f"(chunk at row {start} has {len(bits)}, {len(y)}, {len(w)} rows)")
        if bits.shape[1] != n_bits:
            raise InputDataError(f"{part.features}: {bits.shape[1]} feature columns, expected {n_bits}")
        for path, array in ((part.labels, y), (part.weights, w)):
            if array.shape[1] != len(tasks):
                raise InputDataError(f"{path}: {array.shape[1]} columns but {len(tasks)} task names")
        packed_bits = bits.astype(np.uint8)
        not_bits = (packed_bits != bits) | (packed_bits > 1)
        if not_bits.any():
            row = start + int(np.flatnonzero(not_bits.any(axis=1))[0])
            raise InputDataError(f"{part.features}: row {row} holds values other than 0/1; "
                                 "only bit fingerprints can be imported")
        yield start, packed_bits, y, w
        start += len(bits)
    if start != rows:
        raise InputDataError(f"{part.name}: features, labels and weights are not aligned "
                             f"(expected {rows} rows, read {start})")


def _labels_from(y: np.ndarray, w: np.ndarray, part: _Part, start: int) -> np.ndarray:
    """int8 labels: y where the weight is positive, -1 (missing) where it is 0."""
    present = w > 0
    if (w < 0).any() or np.isnan(w).any():
        raise InputDataError(f"{part.weights}: negative or empty weights near row {start}")
    bad = present & ~np.isin(y, (0.0, 1.0))
    if bad.any():
        row = start + int(np.flatnonzero(bad.any(axis=1))[0])
        raise InputDataError(f"{part.labels}: row {row} has a label other than 0/1 where its weight is > 0")
    return np.where(present, y, -1).astype(np.int8)


def _features_table(name: str, start: int, bits: np.ndarray, labels: np.ndarray,
                    tasks: Sequence[str]) -> pa.Table:
    packed = pack_bits(bits)
    fp = pa.FixedSizeBinaryArray.from_buffers(pa.binary(packed.shape[1]), len(packed),
                                              [None, pa.py_buffer(packed.tobytes())])
    columns = {
        "mol_id": pa.array([f"{name}-{start + i + 1:06d}" for i in range(len(bits))], pa.string()),
        "smiles": pa.nulls(len(bits), pa.string()),
        "fp": fp,
    }
    columns.update({task: pa.array(labels[:, k]) for k, task in enumerate(tasks)})
    return pa.table(columns)
