"""An unlabeled screening library generated from a seed, streamed.

The 1M-molecule screening benchmark needs a library without network access.
:func:`generate_library` draws products of the built-in reaction space
(featurize/synthetic/enumeration.py) in a seeded random order, without repeats, and
yields their SMILES as it goes. Products are assembled from synthon templates
without any RDKit work, so a million SMILES take seconds; they are valid but
not canonical (the featurizer canonicalizes them, sanitizing each molecule
once). Its random stream differs from the panel's, so the same seed gives a
different selection than :func:`featurize.synthetic.panel.generate_panel`; the two
draw from one space, so a large library contains panel molecules, as a
real screening collection contains the compounds a model was trained on.
"""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from rdkit import Chem

from featurize.synthetic.enumeration import ProductSpace, default_space

LIBRARY_STREAM = 100  # the panel uses streams 0-4 of the same seed
CHUNK = 65_536


def generate_library(n_molecules: int, seed: int = 0, *, canonical: bool = False,
                     space: ProductSpace | None = None) -> Iterator[str]:
    """Yield ``n_molecules`` distinct product SMILES in a seeded random order.

    ``canonical=True`` writes RDKit canonical SMILES instead (about 100x
    slower: one parse per molecule).
    """
    space = space or default_space()
    if not 0 <= n_molecules <= len(space):
        raise ValueError(f"n_molecules must be in [0, {len(space):,}] (the product space), "
                         f"got {n_molecules}")
    order = np.random.default_rng([seed, LIBRARY_STREAM]).permutation(len(space))[:n_molecules]
    for start in range(0, n_molecules, CHUNK):
        for smiles in space.smiles(order[start:start + CHUNK]):
            yield Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) if canonical else smiles
