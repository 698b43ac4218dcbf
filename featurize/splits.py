"""Seeded random and Bemis-Murcko scaffold splits.

Splits are assigned from one small column per accepted molecule (its
scaffold, or nothing for a random split), so they work for datasets larger
than RAM: the heavy columns (fingerprints, labels) are never held at once.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from rdkit import Chem
from rdkit.Chem.Scaffolds import MurckoScaffold

from featurize.dataset import SPLITS

SPLIT_METHODS = ("none", "random", "scaffold")
DEFAULT_FRACTIONS = (0.8, 0.1, 0.1)


def scaffold_smiles(mol: Chem.Mol) -> str:
    """Bemis-Murcko scaffold (ring systems and linkers, side chains removed),
    without chirality as DeepChem's ScaffoldSplitter; "" for acyclic molecules."""
    return MurckoScaffold.MurckoScaffoldSmiles(mol=mol, includeChirality=False)


def check_fractions(fractions: Sequence[float]) -> tuple[float, float, float]:
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        raise ValueError(f"split fractions must be three non-negative numbers (train valid "
                         f"test) summing to 1, got {list(fractions)}")
    return tuple(float(f) for f in fractions)  # type: ignore[return-value]


def random_split(n_rows: int, fractions: Sequence[float], seed: int) -> np.ndarray:
    """int8 split codes (index into SPLITS) for ``n_rows`` rows: a seeded
    permutation cut at the fractions (DeepChem RandomSplitter's cut points)."""
    train, valid, _ = check_fractions(fractions)
    order = np.random.default_rng(seed).permutation(n_rows)
    codes = np.empty(n_rows, dtype=np.int8)
    train_end, valid_end = int(train * n_rows), int((train + valid) * n_rows)
    codes[order[:train_end]] = 0
    codes[order[train_end:valid_end]] = 1
    codes[order[valid_end:]] = 2
    return codes


def scaffold_split(scaffolds: Sequence[str] | np.ndarray, fractions: Sequence[float]) -> np.ndarray:
    """int8 split codes, DeepChem ScaffoldSplitter's rule: scaffold sets sorted
    by size (largest first; ties: the set whose first member comes later goes
    first, as DeepChem's reverse sort does), each whole set into train while it
    fits under the train cut, then valid, then test. Every scaffold lands in
    exactly one split; the big common scaffolds train, the rare ones test."""
    train, valid, _ = check_fractions(fractions)
    scaffolds = np.asarray(scaffolds, dtype=object)
    n_rows = len(scaffolds)
    unique, first_index, inverse, sizes = np.unique(
        scaffolds.astype(str), return_index=True, return_inverse=True, return_counts=True)
    order = np.lexsort((first_index, sizes))[::-1]  # size desc, then first index desc
    set_codes = np.empty(len(unique), dtype=np.int8)
    train_cut, valid_cut = train * n_rows, (train + valid) * n_rows
    n_train = n_valid = 0
    for set_index in order:
        size = sizes[set_index]
        if n_train + size <= train_cut:
            set_codes[set_index], n_train = 0, n_train + size
        elif n_train + n_valid + size <= valid_cut:
            set_codes[set_index], n_valid = 1, n_valid + size
        else:
            set_codes[set_index] = 2
    return set_codes[inverse]


def split_names(codes: np.ndarray) -> np.ndarray:
    """int8 codes -> split name strings."""
    return np.asarray(SPLITS, dtype=object)[codes]
