"""A small labelled fingerprint dataset for the training and registry tests,
made by featurize's own pipeline from real NCI molecules, with labels that a
model can learn (each task is "has this substructure", with label noise and
missing entries)."""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
from rdkit import Chem

from featurize.pipeline import featurize_file
from featurize.spec import FingerprintSpec

#: (task name, SMARTS) pairs; labels are the substructure match, 10 % flipped.
TASK_PATTERNS = (("has_N", "[#7]"), ("has_O", "[#8]"), ("has_S", "[#16]"),
                 ("has_Cl", "[Cl]"), ("aromatic", "a"), ("carbonyl", "C=O"))
SPEC = FingerprintSpec(radius=2, n_bits=256)


def write_labelled_csv(smiles: Sequence[str], path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    patterns = [(name, Chem.MolFromSmarts(smarts)) for name, smarts in TASK_PATTERNS]
    rows = []
    for index, text in enumerate(smiles):
        mol = Chem.MolFromSmiles(text)
        row: dict[str, object] = {"smiles": text, "mol_id": f"nci-{index}"}
        for name, pattern in patterns:
            label = float(mol is not None and mol.HasSubstructMatch(pattern))
            if rng.random() < 0.1:
                label = 1.0 - label
            row[name] = np.nan if rng.random() < 0.3 else label
        rows.append(row)
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def make_dataset(smiles: Sequence[str], out_dir: Path, n_molecules: int = 600) -> Path:
    """Featurize ``n_molecules`` labelled molecules with a random split."""
    csv = write_labelled_csv(smiles[:n_molecules], out_dir.parent / f"{out_dir.name}.csv")
    featurize_file(csv, out_dir, spec=SPEC, id_col="mol_id", split="random", backend="local",
                   progress=False, rows_per_shard=250)
    return out_dir
