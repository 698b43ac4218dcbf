"""Reaction-based enumeration of a drug-like product space, fast enough for
millions of molecules.

Running ``RunReactants`` and sanitizing for every product costs a few hundred
microseconds a molecule. Instead, each reaction of featurize/synthetic/building_blocks.py
is run with RDKit once per reagent (against a small probe partner), and the
product is cut at the bond the reaction made: what is left is the reagent's
*synthon*, the reagent as it appears in any product, with a dummy atom where
the partner attaches (the way make-on-demand spaces such as Enamine REAL are
stored). Each synthon is written once as a SMILES template that starts at its
attachment atom and has a ``{}`` slot where its own child attaches, with ring
closure labels moved to a range of its own (``%10``-``%19`` for the second
component and so on) so nested templates never clash. A product is then plain
string assembly: ``prefix + child + suffix``, with no RDKit work at all. The
result is a valid, non-canonical SMILES; tests check, route by route, that its
canonical form equals what RunReactants makes from the same reagents.

A product's molecular weight is the sum of its synthons' weights (a dummy
weighs nothing and each attachment atom has already lost its hydrogen), so
the Lipinski cut (MW <= 500) is applied to the whole space with numpy before
anything is drawn.
"""
from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import cache, cached_property, lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import Descriptors, rdChemReactions

from featurize.synthetic.building_blocks import REACTIONS, ROUTES, Handle, Route

logger = logging.getLogger(__name__)

#: Lipinski's molecular-weight limit for drug-like molecules.
MAX_MOLECULAR_WEIGHT = 500.0

# A small real partner for each reactant position of each reaction (the
# probe's part of the product is cut away again, so any partner works).
_PROBES: dict[str, tuple[str, str]] = {
    "amide": ("CC(=O)O", "CN"),
    "sulfonamide": ("CS(=O)(=O)Cl", "CN"),
    "urea": ("CN=C=O", "CN"),
    "reductive_amination": ("CC=O", "CN"),
    "suzuki": ("Brc1ccccc1", "OB(O)c1ccccc1"),
}
_TO_PARENT, _TO_CHILD = 1, 2  # dummy-atom isotopes marking the two attachment points
_DUMMY_TOKEN = {_TO_PARENT: "[1*]", _TO_CHILD: "[2*]"}
# SMILES tokens: bracket atoms, two-digit ring labels, anything else one char
# at a time (two-letter organic atoms need no special case: no digit follows
# a letter inside them, and only ring-label digits are rewritten).
_TOKEN = re.compile(r"\[[^\]]*\]|%\d\d|.")
_BOND_SYMBOLS = {"-", "=", "#", ":", "/", "\\"}


class ChemistryError(ValueError):
    """A built-in reagent or route does not behave as the chemistry says."""


@cache
def reaction(name: str) -> rdChemReactions.ChemicalReaction:
    """The named reaction of :data:`~featurize.synthetic.building_blocks.REACTIONS`, initialized."""
    rxn = rdChemReactions.ReactionFromSmarts(REACTIONS[name])
    rxn.Initialize()
    return rxn


def react_once(name: str, reactants: Sequence[Chem.Mol]) -> Chem.Mol:
    """Run reaction ``name`` and return its single product (sanitized).

    Raises :class:`ChemistryError` when the reactants react at more than one
    site or not at all (symmetric matches of the same site count once).
    """
    products = {}
    for (product,) in reaction(name).RunReactants(tuple(reactants)):
        Chem.SanitizeMol(product)
        products.setdefault(Chem.MolToSmiles(product), product)
    if len(products) != 1:
        names = " + ".join(Chem.MolToSmiles(mol) for mol in reactants)
        raise ChemistryError(f"{name}: {names} gives {len(products)} products, expected exactly 1")
    return next(iter(products.values()))


def _attach_dummy(mol: Chem.Mol, handle: Handle, isotope: int) -> Chem.Mol:
    """React ``mol`` through ``handle`` with a probe, then replace the probe by
    one dummy atom (``isotope`` marks which attachment point it is)."""
    probe = Chem.MolFromSmiles(_PROBES[handle.reaction][1 - handle.position])
    reactants = (mol, probe) if handle.position == 0 else (probe, mol)
    product = react_once(handle.reaction, reactants)
    side = [atom.GetIntProp("react_idx") == handle.position for atom in product.GetAtoms()]
    new_bonds = [bond for bond in product.GetBonds()
                 if side[bond.GetBeginAtomIdx()] != side[bond.GetEndAtomIdx()]]
    if len(new_bonds) != 1:
        raise ChemistryError(f"{handle.reaction}: expected one new bond, found {len(new_bonds)}")
    bond = new_bonds[0]
    partner = bond.GetBeginAtomIdx() if not side[bond.GetBeginAtomIdx()] else bond.GetEndAtomIdx()
    editable = Chem.RWMol(product)
    dummy = editable.GetAtomWithIdx(partner)
    dummy.SetAtomicNum(0)
    dummy.SetIsotope(isotope)
    dummy.SetFormalCharge(0)
    dummy.SetIsAromatic(False)
    dummy.SetNoImplicit(True)
    dummy.SetNumExplicitHs(0)
    editable.GetBondBetweenAtoms(bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()).SetBondType(
        Chem.BondType.SINGLE)
    for index in sorted((i for i, mine in enumerate(side) if not mine and i != partner), reverse=True):
        editable.RemoveAtom(index)
    synthon = editable.GetMol()
    Chem.SanitizeMol(synthon)
    return synthon


@cache
def synthon(smiles: str, to_parent: Handle | None, to_child: Handle | None) -> Chem.Mol:
    """The reagent ``smiles`` as it appears in products: a dummy ``[1*]`` where
    its parent attaches (through ``to_parent``), ``[2*]`` where its child does."""
    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise ChemistryError(f"built-in reagent {smiles!r} does not parse")
    try:
        if to_parent is not None:
            mol = _attach_dummy(mol, to_parent, _TO_PARENT)
        if to_child is not None:
            mol = _attach_dummy(mol, to_child, _TO_CHILD)
    except ChemistryError as error:
        raise ChemistryError(f"reagent {smiles}: {error}") from None
    return mol


def synthon_tokens(mol: Chem.Mol, first: bool) -> list[str]:
    """Tokens of a synthon's SMILES, ready to nest into a product.

    The first component of a route starts anywhere but at a dummy. Later ones
    start at their attachment atom: the SMILES is rooted at the parent dummy,
    which is then dropped, so the parent's atom takes its place in the atom
    order and stereo tags keep their meaning. An aromatic attachment atom gets
    an explicit single bond ("-c1..."), so a biaryl bond is never read as
    aromatic by toolkits stricter than RDKit.
    """
    dummies = {atom.GetIsotope(): atom for atom in mol.GetAtoms() if atom.GetAtomicNum() == 0}
    if first:
        root = next(atom.GetIdx() for atom in mol.GetAtoms() if atom.GetAtomicNum() != 0)
        return _TOKEN.findall(Chem.MolToSmiles(mol, rootedAtAtom=root))
    parent_dummy = dummies[_TO_PARENT]
    tokens = _TOKEN.findall(Chem.MolToSmiles(mol, rootedAtAtom=parent_dummy.GetIdx()))
    if tokens[0] != _DUMMY_TOKEN[_TO_PARENT]:
        raise ChemistryError(f"synthon SMILES {''.join(tokens)} does not start at its dummy")
    tokens = tokens[1:]
    if tokens[0] in _BOND_SYMBOLS:
        if tokens[0] != "-":
            raise ChemistryError(f"synthon {''.join(tokens)} attaches by a {tokens[0]!r} bond")
        tokens = tokens[1:]
    if parent_dummy.GetNeighbors()[0].GetIsAromatic():
        tokens = ["-", *tokens]
    return tokens


def ring_labels(tokens: Sequence[str]) -> set[int]:
    """Ring-closure labels used in a token list."""
    return {int(token.lstrip("%")) for token in tokens if token.isdigit() or token.startswith("%")}


def template(tokens: Sequence[str], label_offset: int) -> tuple[str, str]:
    """``(prefix, suffix)`` around the child dummy (the product is
    ``prefix + child + suffix``), ring labels shifted by ``label_offset`` so
    that nested components never close each other's rings."""
    shifted = []
    for token in tokens:
        if token.isdigit() or token.startswith("%"):
            label = int(token.lstrip("%")) + label_offset
            token = str(label) if label < 10 else f"%{label}"
        shifted.append(token)
    text = "".join(shifted)
    prefix, _, suffix = text.partition(_DUMMY_TOKEN[_TO_CHILD])
    return prefix, suffix


@dataclass(frozen=True)
class RouteSpace:
    """The drug-like products of one route, as flat indices into its reagent grid."""

    route: Route
    templates: tuple[tuple[tuple[str, str], ...], ...]  # [component][reagent] -> (prefix, suffix)
    weights: tuple[np.ndarray, ...]                       # [component] -> float64[n_reagents]
    synthons: tuple[tuple[Chem.Mol, ...], ...]            # [component][reagent]
    valid: np.ndarray                                     # int64 flat indices, MW <= limit

    @cached_property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(component.reagents) for component in self.route.components)

    def reagent_indices(self, local: np.ndarray) -> np.ndarray:
        """int64[n, n_components]: the reagent of each component for local product indices."""
        return np.stack(np.unravel_index(self.valid[local], self.shape), axis=1)

    def assemble(self, reagents: Sequence[int]) -> str:
        """The product SMILES (valid, not canonical) of one reagent combination."""
        text = ""
        for component in range(len(reagents) - 1, -1, -1):
            prefix, suffix = self.templates[component][reagents[component]]
            text = prefix + text + suffix
        return text


def _route_space(route: Route, max_weight: float) -> RouteSpace:
    components = route.components
    templates, weights, synthons = [], [], []
    label_offset = 0  # ring labels of component k start after those of components < k
    for slot, component in enumerate(components):
        to_parent = None
        if slot > 0:
            parent_handle = components[slot - 1].next_handle
            to_parent = Handle(parent_handle.reaction, 1 - parent_handle.position)
        mols = tuple(synthon(smiles, to_parent, component.next_handle) for smiles in component.reagents)
        tokens = [synthon_tokens(mol, first=slot == 0) for mol in mols]
        synthons.append(mols)
        templates.append(tuple(template(mol_tokens, label_offset) for mol_tokens in tokens))
        weights.append(np.array([Descriptors.MolWt(mol) for mol in mols]))
        label_offset += max(max(ring_labels(mol_tokens), default=0) for mol_tokens in tokens)
    if label_offset > 99:
        raise ChemistryError(f"route {route.name} needs more than 99 ring labels")
    total_weight = weights[0]
    for component_weights in weights[1:]:
        total_weight = np.add.outer(total_weight, component_weights)
    valid = np.flatnonzero(total_weight.ravel() <= max_weight)
    return RouteSpace(route, tuple(templates), tuple(weights), tuple(synthons), valid)


@dataclass(frozen=True)
class ProductIndex:
    """Products picked from a :class:`ProductSpace`: route and reagents of each."""

    route: np.ndarray     # int64[n]: index into ProductSpace.routes
    reagents: np.ndarray  # int64[n, max components]; -1 past a route's last component


class ProductSpace:
    """Every drug-like product of every route, addressable by one global index.

    Global index i belongs to the route r with offsets[r] <= i < offsets[r+1].
    Building the space runs each reaction once per reagent (about a second).
    """

    def __init__(self, routes: Sequence[Route] = ROUTES, max_weight: float = MAX_MOLECULAR_WEIGHT):
        self.routes = tuple(_route_space(route, max_weight) for route in routes)
        sizes = [len(route.valid) for route in self.routes]
        self.offsets = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.max_components = max(len(route.shape) for route in self.routes)
        logger.debug("product space: %d products over %d routes", len(self), len(self.routes))

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def locate(self, indices: np.ndarray) -> ProductIndex:
        """Route and reagent indices of global product indices."""
        indices = np.asarray(indices, dtype=np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"product index out of range [0, {len(self)})")
        route = np.searchsorted(self.offsets, indices, side="right") - 1
        reagents = np.full((len(indices), self.max_components), -1, dtype=np.int64)
        for r, space in enumerate(self.routes):
            rows = np.flatnonzero(route == r)
            if rows.size:
                reagents[rows, : len(space.shape)] = space.reagent_indices(indices[rows] - self.offsets[r])
        return ProductIndex(route, reagents)

    def smiles(self, indices: np.ndarray) -> Iterator[str]:
        """Product SMILES (valid, non-canonical) of global indices, in order."""
        located = self.locate(indices)
        for route, reagents in zip(located.route.tolist(), located.reagents.tolist()):
            space = self.routes[route]
            yield space.assemble(reagents[: len(space.shape)])

    @cached_property
    def reaction_counts(self) -> np.ndarray:
        """int64[n_routes, n_reactions]: bonds each route makes with each reaction
        (columns in the order of :data:`~featurize.synthetic.building_blocks.REACTIONS`)."""
        names = list(REACTIONS)
        counts = np.zeros((len(self.routes), len(names)), dtype=np.int64)
        for r, space in enumerate(self.routes):
            for component in space.route.components[:-1]:
                counts[r, names.index(component.next_handle.reaction)] += 1
        return counts

    def substructure_counts(self, patterns: Sequence[Chem.Mol], located: ProductIndex) -> np.ndarray:
        """float64[n, n_patterns]: matches of each SMARTS pattern, summed over each
        product's synthons (dummy atoms match no element, so a motif counts
        when it lies within one reagent, attachment atom included)."""
        result = np.zeros((len(located.route), len(patterns)))
        for r, space in enumerate(self.routes):
            rows = np.flatnonzero(located.route == r)
            if not rows.size:
                continue
            for component, mols in enumerate(space.synthons):
                table = _count_table(mols, tuple(patterns))
                result[rows] += table[located.reagents[rows, component]]
        return result


@lru_cache(maxsize=256)
def _count_table(mols: tuple[Chem.Mol, ...], patterns: tuple[Chem.Mol, ...]) -> np.ndarray:
    return np.array([[len(mol.GetSubstructMatches(pattern)) for pattern in patterns] for mol in mols],
                    dtype=np.float64)


@lru_cache(maxsize=1)
def default_space() -> ProductSpace:
    """The built-in product space (built once per process)."""
    return ProductSpace()
