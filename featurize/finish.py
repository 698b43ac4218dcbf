"""Pass 2 (driver, cheap): from the small ``_row``/``mol_id``/``reason``/
``scaffold`` columns only, reject duplicate ids and assign splits; then
stream the staged rows once more, in source order, into the dataset writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurize.dataset import DatasetWriter
from featurize.options import FeaturizeOptions
from featurize.parquet_runs import merge_runs
from featurize.splits import random_split, scaffold_split, split_names


def finish_dataset(staged_files: list[Path], writer: DatasetWriter, options: FeaturizeOptions) -> int:
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
    duplicate = accepted & ~first_of_each_id(keys.filter(accepted), len(rows))
    keep = accepted & ~duplicate
    codes = split_codes(keys, keep, options)
    split_of_row = np.full(len(rows), -1, dtype=np.int8)
    if codes is not None:
        split_of_row[keep] = codes
    del keys

    for table in merge_runs(staged_files):
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


def first_of_each_id(keys: pa.Table, n_rows: int) -> np.ndarray:
    """bool[n_rows]: True at the first ``_row`` of each ``mol_id`` in ``keys``.
    Grouped in Arrow: a pandas ``duplicated`` over Python strings held ~200
    bytes per input row in the driver."""
    first = keys.group_by("mol_id", use_threads=False).aggregate([("_row", "min")])
    mask = np.zeros(n_rows, dtype=bool)
    mask[first["_row_min"].to_numpy()] = True
    return mask


def split_codes(keys: pa.Table, keep: np.ndarray, options: FeaturizeOptions) -> np.ndarray | None:
    if options.split == "random":
        return random_split(int(keep.sum()), options.fractions, options.seed)
    if options.split == "scaffold":
        scaffolds = keys["scaffold"].to_numpy(zero_copy_only=False)[keep]
        return scaffold_split(scaffolds, options.fractions)
    return None
