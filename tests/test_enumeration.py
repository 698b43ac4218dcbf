"""The reaction space behind the panel and the library: string-assembled
products must be exactly what RDKit's RunReactants makes from the reagents."""
from __future__ import annotations

import numpy as np
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors

from featurize.synthetic import building_blocks
from featurize.synthetic.enumeration import MAX_MOLECULAR_WEIGHT, default_space, react_once


def _canonical(smiles: str) -> str:
    mol = Chem.MolFromSmiles(smiles)
    assert mol is not None, f"assembled SMILES does not parse: {smiles}"
    return Chem.MolToSmiles(mol)


def _reference_product(route: building_blocks.Route, reagents: list[int]) -> str:
    """The slow way: run each reaction of the route with RunReactants, last
    component first, on the whole reagents (react_once raises on >1 site)."""
    components = route.components
    product = Chem.MolFromSmiles(components[-1].reagents[reagents[-1]])
    for k in range(len(components) - 2, -1, -1):
        handle = components[k].next_handle
        reagent = Chem.MolFromSmiles(components[k].reagents[reagents[k]])
        pair = (reagent, product) if handle.position == 0 else (product, reagent)
        product = react_once(handle.reaction, pair)
    return Chem.MolToSmiles(product)


def test_every_route_assembles_what_runreactants_makes() -> None:
    space = default_space()
    rng = np.random.default_rng(7)
    for r, route_space in enumerate(space.routes):
        picks = rng.choice(len(route_space.valid), size=min(4, len(route_space.valid)), replace=False)
        for global_index in space.offsets[r] + picks:
            located = space.locate(np.array([global_index]))
            reagents = located.reagents[0, : len(route_space.shape)].tolist()
            assembled = next(space.smiles(np.array([global_index])))
            assert _canonical(assembled) == _reference_product(route_space.route, reagents), \
                (route_space.route.name, assembled)


def test_products_are_drug_like_weight_and_weight_is_additive() -> None:
    space = default_space()
    indices = np.random.default_rng(3).choice(len(space), size=300, replace=False)
    located = space.locate(indices)
    for smiles, route, reagents in zip(space.smiles(indices), located.route, located.reagents):
        route_space = space.routes[route]
        expected = sum(route_space.weights[k][reagents[k]] for k in range(len(route_space.shape)))
        weight = Descriptors.MolWt(Chem.MolFromSmiles(smiles))
        assert weight == pytest.approx(expected, abs=0.01)
        assert weight <= MAX_MOLECULAR_WEIGHT + 0.01


def test_reagent_lists_hold_no_repeats() -> None:
    for name in ("ACIDS", "AMINES", "SULFONYL_CHLORIDES", "ISOCYANATES", "ALDEHYDES", "ARYL_BROMIDES",
                 "BORONIC_ACIDS", "BROMO_ACIDS", "BROMO_AMINES", "AMINO_ACIDS"):
        reagents = getattr(building_blocks, name)
        canonical = [_canonical(smiles) for smiles in reagents]
        assert len(set(canonical)) == len(canonical), name


def test_space_is_large_enough_for_a_million_molecule_library() -> None:
    space = default_space()
    assert len(space) >= 1_200_000
    assert len({route.route.name for route in space.routes}) == len(space.routes)
    with pytest.raises(IndexError):
        space.locate(np.array([len(space)]))
