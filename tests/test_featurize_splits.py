"""Random and scaffold splits: deterministic, exact fractions, the scaffold
invariant, and DeepChem's ScaffoldSplitter rule."""
from __future__ import annotations

import numpy as np
import pytest

from featurize.splits import random_split, scaffold_smiles, scaffold_split
from featurize.standardize import standardize_smiles


@pytest.fixture(scope="module")
def nci_scaffolds(nci_smiles: list[str]) -> list[str]:
    mols = [standardize_smiles(s).mol for s in nci_smiles[:2000]]
    return [scaffold_smiles(mol) for mol in mols if mol is not None]


def test_random_split_is_seeded_and_sized() -> None:
    first = random_split(1000, (0.8, 0.1, 0.1), seed=3)
    assert np.array_equal(first, random_split(1000, (0.8, 0.1, 0.1), seed=3))
    assert not np.array_equal(first, random_split(1000, (0.8, 0.1, 0.1), seed=4))
    assert np.bincount(first).tolist() == [800, 100, 100]
    with pytest.raises(ValueError, match="summing to 1"):
        random_split(10, (0.8, 0.3, 0.1), seed=0)


def test_scaffold_split_puts_each_scaffold_in_one_split(nci_scaffolds: list[str]) -> None:
    codes = scaffold_split(nci_scaffolds, (0.8, 0.1, 0.1))
    splits_of: dict[str, set[int]] = {}
    for scaffold, code in zip(nci_scaffolds, codes):
        splits_of.setdefault(scaffold, set()).add(int(code))
    assert all(len(splits) == 1 for splits in splits_of.values())
    counts = np.bincount(codes, minlength=3) / len(codes)
    assert counts[0] <= 0.8 + 1e-9 and counts[0] > 0.7 and counts[1] > 0.05 and counts[2] > 0.05
    assert np.array_equal(codes, scaffold_split(nci_scaffolds, (0.8, 0.1, 0.1)))


def test_scaffold_split_follows_deepchem_rule() -> None:
    # sizes: c=3, a=2, then b/""/d of size 1 (ties: later first member first)
    scaffolds = ["a", "a", "b", "", "c", "c", "c", "d"]
    assert scaffold_split(scaffolds, (0.5, 0.25, 0.25)).tolist() == [1, 1, 2, 2, 0, 0, 0, 0]


def test_scaffold_of_acyclic_and_ring_molecules() -> None:
    assert scaffold_smiles(standardize_smiles("CCCCO").mol) == ""
    assert scaffold_smiles(standardize_smiles("Cc1ccccc1CCN").mol) == "c1ccccc1"
