"""RDKit standardization: parse, sanitize, keep the largest fragment, and
write the canonical SMILES. A row that cannot become a molecule gets a reason
instead of an exception, so it can be quarantined with the others.

Writing the canonical SMILES costs about a third of a drug-like molecule's
standardization (RDKit ranks every atom). Training sets need it (the data
contract's ``smiles`` column, scaffolds, deduplication); scoring does not,
so ``canonical=False`` skips it and keeps the input text instead.
"""
from __future__ import annotations

from typing import NamedTuple

from rdkit import Chem, rdBase


class Standardized(NamedTuple):
    """Either (mol, canonical smiles, None) or (None, None, reason)."""

    mol: Chem.Mol | None
    smiles: str | None
    reason: str | None


def standardize_smiles(raw: str | None, *, canonical: bool = True) -> Standardized:
    """Standardize one SMILES string (see :func:`standardize_mol`); with
    ``canonical=False`` the returned SMILES is ``raw`` stripped."""
    text = raw.strip() if raw is not None else ""
    if not text:
        return Standardized(None, None, "empty SMILES")
    with rdBase.BlockLogs():  # RDKit would print one stderr line per bad row
        mol = Chem.MolFromSmiles(text, sanitize=False)
        if mol is None:
            return Standardized(None, None, "unparsable SMILES")
        # Only a '.' separates fragments in SMILES: without one, skip the search.
        standardized = standardize_mol(mol, canonical=canonical, single_fragment="." not in text)
    if canonical or standardized.mol is None:
        return standardized
    return standardized._replace(smiles=text)


def standardize_molblock(raw: str | None) -> Standardized:
    """Standardize one SDF record's mol block (see :func:`standardize_mol`)."""
    if raw is None or not raw.strip():
        return Standardized(None, None, "empty mol block")
    with rdBase.BlockLogs():
        mol = Chem.MolFromMolBlock(raw, sanitize=False)
        if mol is None:
            return Standardized(None, None, "unparsable mol block")
        return standardize_mol(mol)


def standardize_mol(mol: Chem.Mol, *, canonical: bool = True,
                    single_fragment: bool = False) -> Standardized:
    """Sanitize ``mol`` (in place), keep its largest fragment (salts and
    solvents are not the active species; ties go to the fragment written
    first) and return it with its canonical SMILES (None if not
    ``canonical``). ``single_fragment``: the caller knows there is one
    fragment, so the search is skipped. Callers block RDKit's logging around
    the call (one ``BlockLogs`` per molecule, not one per step)."""
    try:
        Chem.SanitizeMol(mol)
    except Exception as error:  # RDKit raises several unrelated types here
        return Standardized(None, None, f"sanitization failed: {_first_line(error)}")
    if mol.GetNumAtoms() == 0:
        return Standardized(None, None, "no atoms")
    # Fragment indices first: building fragment Mols costs as much as parsing
    # the SMILES, and most molecules are one fragment.
    if not single_fragment and len(Chem.GetMolFrags(mol)) > 1:
        fragments = Chem.GetMolFrags(mol, asMols=True)
        mol = max(fragments, key=lambda fragment: fragment.GetNumHeavyAtoms())
    return Standardized(mol, Chem.MolToSmiles(mol) if canonical else None, None)


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]
