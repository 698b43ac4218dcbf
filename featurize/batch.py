"""One source batch -> its featurized rows: standardize, fingerprint and
encode labels, keeping every row (accepted, or with its reject reason).

The one per-batch function of featurization, screening and the crash guard
(a child process re-runs it row by row), so it imports nothing of theirs."""
from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from typing import Literal

import numpy as np
import pyarrow as pa

from featurize.fingerprints import FingerprintRows
from featurize.spec import FingerprintSpec
from featurize.splits import scaffold_smiles
from featurize.standardize import DEFAULT_LIMITS, SizeLimits, standardize_molblock, standardize_smiles


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
