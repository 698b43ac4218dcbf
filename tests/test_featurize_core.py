"""Spec, standardization, fingerprints and tensor unpacking against RDKit and
numpy's own reference implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from rdkit import Chem, rdBase
from rdkit.Chem import rdFingerprintGenerator

from featurize.errors import SpecMismatchError
from featurize.fingerprints import fingerprint_matrix, pack_bits, unpack_bits
from featurize.spec import FingerprintSpec
from featurize.standardize import SizeLimits, smiles_text_problem, standardize_molblock, standardize_smiles
from featurize.tensors import labels_to_tensors, unpack_fingerprints


def test_spec_json_round_trip_and_width() -> None:
    for spec in (FingerprintSpec(), FingerprintSpec(radius=3, n_bits=1000, counts=True),
                 FingerprintSpec(kind="imported", n_bits=1024, source="deepchem ECFP4")):
        assert FingerprintSpec.from_json(spec.to_json()) == spec
    assert FingerprintSpec().n_bytes == 256
    assert FingerprintSpec(n_bits=1001).n_bytes == 126
    assert FingerprintSpec(n_bits=64, counts=True).n_bytes == 64


def test_spec_mismatch_names_both_specs() -> None:
    model, data = FingerprintSpec(), FingerprintSpec(n_bits=1024)
    with pytest.raises(SpecMismatchError, match="n_bits") as error:
        model.check_compatible(data, what="library", expected="model")
    assert "2048 bits" in str(error.value) and "1024 bits" in str(error.value)
    model.check_compatible(FingerprintSpec(rdkit_version="2020.09.1"))  # warns only


@pytest.mark.parametrize(("raw", "reason"), [
    ("", "empty SMILES"), ("   ", "empty SMILES"), (None, "empty SMILES"),
    ("C1CC(", "unparsable SMILES"), ("Xyz", "unparsable SMILES"),
    ("CN(=O)(=O)=O", "sanitization failed: Explicit valence"),
    ("c1cccc1", "sanitization failed: Can't kekulize"),
])
def test_bad_smiles_get_reasons(raw: str | None, reason: str) -> None:
    for canonical in (True, False):
        result = standardize_smiles(raw, canonical=canonical)
        assert result.mol is None and result.smiles is None
        assert result.reason.startswith(reason)


def test_a_molecule_whose_canonical_smiles_does_not_read_back_is_rejected() -> None:
    """A boron ring that RDKit perceives as aromatic but cannot kekulize
    again (found by the fuzz test): its canonical SMILES would be a row
    that no later step can read, so it is rejected, naming the SMILES."""
    raw = "Bb0=BB(=BC(=B0)B0(B(N0)))"
    result = standardize_smiles(raw)
    assert result.mol is None and result.smiles is None
    written = result.reason.split()[2]
    assert result.reason == (f"canonical SMILES {written} does not read back "
                             "(RDKit cannot kekulize its aromatic rings)")
    with rdBase.BlockLogs():
        assert Chem.MolFromSmiles(written) is None and Chem.MolFromSmiles(raw) is not None
    # Unusual aromatic rings that do read back are kept (selenophene, phosphinine).
    for raw in ("c1cc[se]c1", "c1ccpcc1"):
        kept = standardize_smiles(raw)
        assert kept.reason is None and standardize_smiles(kept.smiles).smiles == kept.smiles


@pytest.mark.parametrize(("raw", "reason"), [
    ("CCÖ", "not a SMILES: non-ASCII character 'Ö' at position 2"),
    ("CC\nO", "not a SMILES: whitespace '\\n' at position 2"),
    ("CCO\tCCN", "not a SMILES: whitespace '\\t' at position 3"),
    ("c1ccccc1 |$;;;;;$|", "not a SMILES: whitespace ' ' at position 8"),  # CXSMILES
    ("CC\u200bO", "not a SMILES: non-ASCII character '\\u200b' at position 2"),
    ("C\x00C", "not a SMILES: control character '\\x00' at position 1"),
    ("[#6]~[#7]", "not a SMILES: query feature '#' at position 1 (SMARTS, not a molecule)"),
    ("C~N", "not a SMILES: query feature '~' at position 1 (SMARTS, not a molecule)"),
    ("[C;H2]O", "not a SMILES: query feature ';' at position 2 (SMARTS, not a molecule)"),
    ("C@C", "not a SMILES: query feature '@' at position 1 (SMARTS, not a molecule)"),
    ("[$(CC)]C", "not a SMILES: query feature '$' at position 1 (SMARTS, not a molecule)"),
    ("C*", "not a SMILES: dummy atom '*' at position 1 (a placeholder, not a compound)"),
    ("[*:1]CC", "not a SMILES: dummy atom '*' at position 1 (a placeholder, not a compound)"),
    ("CC>>O", "not a SMILES: character '>' at position 2 is not used in SMILES"),
    ("CC<O", "not a SMILES: character '<' at position 2 is not used in SMILES"),
    ("C>-C", "not a SMILES: character '>' at position 1 is not used in SMILES"),
])
def test_text_that_is_not_plain_smiles_is_never_read_as_a_prefix(raw: str, reason: str) -> None:
    for canonical in (True, False):
        assert standardize_smiles(raw, canonical=canonical) == (None, None, reason)


def test_the_field_is_stripped_and_plain_smiles_pass_the_text_check(nci_smiles: list[str]) -> None:
    assert standardize_smiles(" \tCCO\u00a0\r\n").smiles == "CCO"  # str.strip: any whitespace
    for raw in ("C$C", "[13CH3][C@@H](N)C(=O)[O-]", "C%12CC%12", "F/C=C\\F", "[CH3:1]O",
                "[NH4+].[Cl-]", "[Fe+3]", "[NH3]->[Cu+2]", "[Cu+2]<-[NH3]"):
        assert smiles_text_problem(raw) is None, raw
    # A dative bond as RDKit writes it reads back (a fuzzed SMILES once did not).
    written = Chem.MolToSmiles(Chem.MolFromSmiles("B0[N][Au]0([O]=C(B)0)[N](B)([N]0)"))
    assert "<-" in written and standardize_smiles(written).reason is None
    # No real molecule RDKit reads is turned away by the text check.
    readable = [s for s in nci_smiles if Chem.MolFromSmiles(s) is not None]
    assert len(readable) > 4000
    assert [s for s in readable if smiles_text_problem(s)] == []


def test_size_limits_reject_before_rdkit_crashes() -> None:
    # RDKit's canonical SMILES of this chain overflows the stack (a segfault);
    # reaching the assertion at all shows it is rejected before that step.
    chain = "C" * 20_000
    for canonical in (True, False):
        assert standardize_smiles(chain, canonical=canonical).reason == \
            "too large (20000 heavy atoms > 1000)"
    small = SizeLimits(max_heavy_atoms=5, max_smiles_length=8)
    assert standardize_smiles("CCCCC", limits=small).smiles == "CCCCC"
    assert standardize_smiles("CCCCCC", limits=small).reason == "too large (6 heavy atoms > 5)"
    assert standardize_smiles("[2H]C([2H])[2H]", limits=small).reason == \
        "too long (15 characters > 8)"
    molblock = Chem.MolToMolBlock(Chem.MolFromSmiles("CCCCCC"))
    assert standardize_molblock(molblock, limits=small).reason == "too large (6 heavy atoms > 5)"
    assert standardize_molblock(molblock).reason is None
    with pytest.raises(ValueError, match="max_heavy_atoms must be a positive integer"):
        SizeLimits(max_heavy_atoms=0)


def test_standardize_keeps_largest_fragment_canonical() -> None:
    result = standardize_smiles("[Na+].[O-]C(=O)c1ccccc1.O")
    assert result.reason is None
    assert result.smiles == Chem.MolToSmiles(Chem.MolFromSmiles("[O-]C(=O)c1ccccc1"))
    assert standardize_smiles("OCC").smiles == standardize_smiles("C(O)C").smiles == "CCO"


def test_non_canonical_standardization_keeps_the_input_text() -> None:
    raw = " [Na+].[O-]C(=O)c1ccccc1.O "
    fast, full = standardize_smiles(raw, canonical=False), standardize_smiles(raw)
    assert fast.smiles == raw.strip() and fast.reason is None
    assert Chem.MolToSmiles(fast.mol) == full.smiles  # the same molecule: largest fragment


@pytest.mark.parametrize("counts", [False, True])
@pytest.mark.parametrize(("radius", "n_bits"), [(2, 2048), (3, 1001)])
def test_fingerprints_equal_rdkit_reference(nci_smiles: list[str], counts: bool,
                                            radius: int, n_bits: int) -> None:
    spec = FingerprintSpec(radius=radius, n_bits=n_bits, counts=counts)
    standardized = [standardize_smiles(s) for s in nci_smiles[:300]]
    mols = [item.mol for item in standardized if item.mol is not None]
    stored = fingerprint_matrix(mols, spec)
    assert stored.shape == (len(mols), spec.n_bytes) and stored.dtype == np.uint8
    assert stored.flags.writeable  # torch.from_numpy warns on read-only arrays
    assert fingerprint_matrix([], spec).shape == (0, spec.n_bytes)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    for row, item in zip(stored, (i for i in standardized if i.mol is not None)):
        reference_mol = Chem.MolFromSmiles(item.smiles)  # from the stored canonical SMILES
        if counts:
            expected = np.minimum(generator.GetCountFingerprintAsNumPy(reference_mol), 255)
            np.testing.assert_array_equal(row, expected)
        else:
            expected_on = list(generator.GetFingerprint(reference_mol).GetOnBits())
            got = unpack_bits(row[None], n_bits)[0]
            assert np.flatnonzero(got).tolist() == expected_on


def test_pack_unpack_matches_numpy() -> None:
    bits = np.random.default_rng(0).integers(0, 2, (7, 1001), dtype=np.uint8)
    packed = pack_bits(bits)
    np.testing.assert_array_equal(unpack_bits(packed, 1001), bits)
    # the torch unpacker agrees with np.unpackbits in the same bit order
    unpacked = unpack_fingerprints(torch.from_numpy(packed), 1001)
    assert unpacked.dtype == torch.float32 and unpacked.shape == (7, 1001)
    np.testing.assert_array_equal(unpacked.numpy(),
                                  np.unpackbits(packed, axis=1, count=1001, bitorder="little"))


def test_unpack_counts_and_spec_checks() -> None:
    counts = np.array([[0, 3, 255]], dtype=np.uint8)
    out = unpack_fingerprints(torch.from_numpy(counts), FingerprintSpec(n_bits=3, counts=True))
    assert out.tolist() == [[0.0, 3.0, 255.0]]
    with pytest.raises(ValueError, match="needs 256"):
        unpack_fingerprints(torch.zeros(2, 128, dtype=torch.uint8), FingerprintSpec())


def test_labels_to_tensors_masks_missing() -> None:
    labels, mask = labels_to_tensors(np.array([[1, 0, -1], [-1, -1, 1]], dtype=np.int8))
    assert labels.dtype == torch.float32 and mask.dtype == torch.bool
    assert labels.tolist() == [[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]
    assert mask.tolist() == [[True, True, False], [False, False, True]]
