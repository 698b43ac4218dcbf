"""Hypothesis fuzzing of the SMILES path: random text and damaged real
SMILES (inserted characters and bytes, truncation, unicode). Nothing may
escape as an exception, every row is accepted or has a reason, an accepted
row never came from text with whitespace or non-ASCII inside, and its
canonical SMILES reads back as the same molecule. The default run is small;
the slow marker runs many more examples."""
from __future__ import annotations

import os
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rdkit import RDConfig

from featurize.batch import featurize_batch
from featurize.spec import FingerprintSpec
from featurize.standardize import standardize_smiles

REAL_SMILES = [line.split()[0] for line in
               (Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi").read_text().splitlines()[:400]
               if line.strip()]
SMILES_CHARACTERS = "CNOSPFIBrcnos()[]=#$:/\\.%+-@*0123456789Hl~;,&!>| \t\n"


@st.composite
def damaged_smiles(draw: st.DrawFn) -> str:
    """A real SMILES with a few insertions, deletions or a truncation."""
    text = draw(st.sampled_from(REAL_SMILES))
    for _ in range(draw(st.integers(1, 3))):
        position = draw(st.integers(0, len(text)))
        edit = draw(st.sampled_from(["insert", "delete", "truncate", "bytes"]))
        if edit == "insert":
            piece = draw(st.text(st.sampled_from(SMILES_CHARACTERS) | st.characters(),
                                 min_size=1, max_size=3))
            text = text[:position] + piece + text[position:]
        elif edit == "delete":
            text = text[:position] + text[position + 1:]
        elif edit == "truncate":
            text = text[:position]
        else:  # bytes read as Latin-1, as a wrongly decoded file would give them
            text = text[:position] + draw(st.binary(min_size=1, max_size=3)).decode("latin-1") \
                + text[position:]
    return text


TEXTS = st.text(max_size=60) | st.text(st.sampled_from(SMILES_CHARACTERS), max_size=60) \
    | damaged_smiles()


def check_one(text: str) -> None:
    for canonical in (True, False):
        result = standardize_smiles(text, canonical=canonical)
        if result.reason is not None:
            assert result.mol is None and result.smiles is None and result.reason.strip()
            continue
        stripped = text.strip()
        assert stripped.isascii() and not any(c.isspace() or not c.isprintable() for c in stripped)
        if canonical:
            again = standardize_smiles(result.smiles)
            assert again.reason is None and again.smiles == result.smiles
        else:
            assert result.smiles == stripped


def check_batch(texts: list[str]) -> None:
    n = len(texts)
    table = featurize_batch(
        pa.table({"_row": list(range(n)), "raw": pa.array(texts, pa.string()),
                  "mol_id": [f"m{i}" for i in range(n)]}),
        spec=FingerprintSpec(n_bits=64), tasks=[], kind="smiles", with_scaffold=True)
    assert table.num_rows == n
    for smiles, reason in zip(table["smiles"].to_pylist(), table["reason"].to_pylist()):
        assert (smiles is None) != (reason is None)


# Both runs draw a fixed set of examples (derandomize), so a CI result is
# reproducible and a submission is never refused for an example no earlier
# run drew; FUZZ_EXPLORE=1 makes the slow run draw new ones each time (how
# the aromatic-boron SMILES that RDKit cannot read back was found).
FAST = settings(max_examples=150, deadline=None, database=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(FAST, max_examples=5000, derandomize=not os.environ.get("FUZZ_EXPLORE"))


@FAST
@given(TEXTS)
def test_fuzzed_smiles_are_accepted_or_rejected_with_a_reason(text: str) -> None:
    check_one(text)


@FAST
@given(st.lists(TEXTS, max_size=12))
def test_fuzzed_batches_account_for_every_row(texts: list[str]) -> None:
    check_batch(texts)


@pytest.mark.slow
@SLOW
@given(TEXTS)
def test_fuzzed_smiles_many_examples(text: str) -> None:
    check_one(text)
