"""RDKit standardization: check the text, parse, sanitize, keep the largest
fragment, and write the canonical SMILES. A row that cannot become a molecule
gets a reason instead of an exception, so it can be quarantined with the others.

Every SMILES that featurize, screening or the served model reads comes
through :func:`standardize_smiles`, so the text rules and the size limits
below hold everywhere:

* The text must be SMILES and nothing else (:func:`smiles_text_problem`).
  RDKit's parser stops at the first whitespace (what follows is a name) and
  reads RDKit extensions and SMARTS pieces (``[#6]``, ``~``), so ``CCÖ``,
  ``CC<newline>O`` or ``CCO<tab>CCN`` would become a shorter molecule and
  ``[#6]~[#7]`` a query "molecule": such texts are rejected, never read as
  a prefix. Leading and trailing whitespace (``str.strip``: any Unicode
  whitespace) is not part of the field and is removed first.
* The dummy atom ``*`` is rejected: it stands for an unknown atom or an
  attachment point (R groups, polymers), not a compound that was tested;
  PCBA has none.
* Size limits (:class:`SizeLimits`) are checked before sanitization and
  the canonical SMILES: RDKit's canonical ranking recurses over the atoms,
  and a 20,000-carbon chain overflows its stack (a segmentation fault that
  no ``except`` catches). Heavy atoms are counted on the unsanitized parse,
  which is linear in the text and safe at that size.

Writing the canonical SMILES costs about a third of a drug-like molecule's
standardization (RDKit ranks every atom). Training sets need it (the data
contract's ``smiles`` column, scaffolds, deduplication); scoring does not,
so ``canonical=False`` skips it and keeps the input text instead.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

from rdkit import Chem, rdBase


@dataclass(frozen=True)
class SizeLimits:
    """Largest inputs featurize hands to RDKit. ``max_heavy_atoms`` is far
    above any drug-like or PCBA molecule and far below where RDKit's
    canonical SMILES crashes (a chain of 20,000 carbons; 5,000 still pass).
    ``max_smiles_length`` only bounds the parse: 100,000 characters parse in
    about 0.1 s, and the heavy-atom limit rejects anything that large."""

    max_heavy_atoms: int = 1000
    max_smiles_length: int = 100_000

    def __post_init__(self) -> None:
        for name in ("max_heavy_atoms", "max_smiles_length"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


DEFAULT_LIMITS = SizeLimits()


class Standardized(NamedTuple):
    """Either (mol, canonical smiles, None) or (None, None, reason)."""

    mol: Chem.Mol | None
    smiles: str | None
    reason: str | None


# Plain SMILES: outside brackets the organic subset, bonds, ring closures,
# branches and dots; inside brackets element, isotope, chirality, H count,
# charge and atom class. One C-speed match clears almost every real SMILES.
_PLAIN_SMILES = re.compile(r"(?:[A-Za-z0-9()=#$:/\\.%+\-]|\[[A-Za-z0-9@+\-:]*\])*")
_SMILES_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
                             "()[]=#$:/\\.%+-@*")
# SMARTS pieces: bond and logic primitives anywhere; inside brackets '#'
# (atomic number) and '$' (recursive SMARTS); outside, '@' (ring bond).
_QUERY_ANYWHERE = frozenset("~;,&!?")
_QUERY_IN_BRACKETS = frozenset("#$")
_QUERY_OUTSIDE_BRACKETS = frozenset("@")

# RDKit's aromaticity model can perceive rings (of boron, for example) that
# its SMILES parser then cannot kekulize, so the canonical SMILES of such a
# molecule would not read back. Reading every SMILES back costs 60% of
# standardization; this match costs about 3% and picks out the molecules
# that can fail: aromatic atoms other than C, N, O and S.
_UNUSUAL_AROMATIC = Chem.MolFromSmarts("[a;!#6;!#7;!#8;!#16]")


def _first_line(error: Exception) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def smiles_text_problem(text: str) -> str | None:
    """Why ``text`` (already stripped) is not plain SMILES text, naming the
    first offending character and its 0-based position; None if it is, or
    if only the parser can tell (an unclosed bracket, a bad element)."""
    if _PLAIN_SMILES.fullmatch(text):
        return None
    in_brackets = False
    for position, char in enumerate(text):
        if not in_brackets and _is_dative_arrow(text, position):
            continue
        problem = _character_problem(char, in_brackets)
        if problem:
            return "not a SMILES: " + problem.format(char=repr(char), position=position)
        if char in "[]":
            in_brackets = char == "["
    return None


def _is_dative_arrow(text: str, position: int) -> bool:
    """``->`` or ``<-``: a dative bond, which RDKit reads and writes
    (``[NH3]->[Cu+2]``); a lone ``>`` or ``<`` is a reaction arrow or stray text."""
    char = text[position]
    return (char == ">" and position > 0 and text[position - 1] == "-") or \
        (char == "<" and text[position + 1:position + 2] == "-")


def _character_problem(char: str, in_brackets: bool) -> str | None:
    """A template (``{char}``, ``{position}``) naming what ``char`` is, or None."""
    if not char.isascii():
        return "non-ASCII character {char} at position {position}"
    if char.isspace():
        return "whitespace {char} at position {position}"
    if not char.isprintable():
        return "control character {char} at position {position}"
    if char == "*":
        return "dummy atom {char} at position {position} (a placeholder, not a compound)"
    if char in _QUERY_ANYWHERE or char in (_QUERY_IN_BRACKETS if in_brackets
                                           else _QUERY_OUTSIDE_BRACKETS):
        return "query feature {char} at position {position} (SMARTS, not a molecule)"
    if char not in _SMILES_ALPHABET:
        return "character {char} at position {position} is not used in SMILES"
    return None


def standardize_smiles(raw: str | None, *, canonical: bool = True,
                       limits: SizeLimits = DEFAULT_LIMITS) -> Standardized:
    """Standardize one SMILES string (see :func:`standardize_mol`) after the
    text and length checks of this module; with ``canonical=False`` the
    returned SMILES is ``raw`` stripped."""
    text = raw.strip() if raw is not None else ""
    if not text:
        return Standardized(None, None, "empty SMILES")
    if len(text) > limits.max_smiles_length:
        return Standardized(None, None, f"too long ({len(text)} characters > "
                                        f"{limits.max_smiles_length})")
    problem = smiles_text_problem(text)
    if problem:
        return Standardized(None, None, problem)
    with rdBase.BlockLogs():  # RDKit would print one stderr line per bad row
        mol = Chem.MolFromSmiles(text, sanitize=False)
        if mol is None:
            return Standardized(None, None, "unparsable SMILES")
        # Only a '.' separates fragments in SMILES: without one, skip the search.
        standardized = standardize_mol(mol, canonical=canonical, single_fragment="." not in text,
                                       limits=limits)
    if canonical or standardized.mol is None:
        return standardized
    return standardized._replace(smiles=text)


def standardize_molblock(raw: str | None, *, limits: SizeLimits = DEFAULT_LIMITS) -> Standardized:
    """Standardize one SDF record's mol block (see :func:`standardize_mol`;
    the heavy-atom limit applies, the SMILES length limit does not)."""
    if raw is None or not raw.strip():
        return Standardized(None, None, "empty mol block")
    with rdBase.BlockLogs():
        mol = Chem.MolFromMolBlock(raw, sanitize=False)
        if mol is None:
            return Standardized(None, None, "unparsable mol block")
        return standardize_mol(mol, limits=limits)


def standardize_mol(mol: Chem.Mol, *, canonical: bool = True, single_fragment: bool = False,
                    limits: SizeLimits = DEFAULT_LIMITS) -> Standardized:
    """Check ``mol``'s size, sanitize it (in place), keep its largest
    fragment (salts and solvents are not the active species; ties go to the
    fragment written first) and return it with its canonical SMILES (None if
    not ``canonical``). ``single_fragment``: the caller knows there is one
    fragment, so the search is skipped. Callers block RDKit's logging around
    the call (one ``BlockLogs`` per molecule, not one per step)."""
    heavy_atoms = mol.GetNumHeavyAtoms()  # the whole input: sanitizing it costs as much
    if heavy_atoms > limits.max_heavy_atoms:
        return Standardized(None, None, f"too large ({heavy_atoms} heavy atoms > "
                                        f"{limits.max_heavy_atoms})")
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
    if not canonical:
        return Standardized(mol, None, None)
    smiles = Chem.MolToSmiles(mol)
    if mol.HasSubstructMatch(_UNUSUAL_AROMATIC) and Chem.MolFromSmiles(smiles) is None:
        return Standardized(None, None, f"canonical SMILES {smiles} does not read back "
                                        "(RDKit cannot kekulize its aromatic rings)")
    return Standardized(mol, smiles, None)

