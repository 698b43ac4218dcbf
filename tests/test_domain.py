"""The applicability domain (pipelines/serving/applicability_domain.py, pipelines/training/domain_cache.py)
against RDKit's own BulkTanimotoSimilarity on real molecules."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from rdkit import Chem, DataStructs

from featurize.fingerprints import fingerprint_matrix, morgan_generator
from featurize.spec import FingerprintSpec
from pipelines.serving.applicability_domain import TrainingDomain

SPEC = FingerprintSpec(radius=2, n_bits=1024)


@pytest.fixture(scope="module")
def molecules(nci_smiles: list[str]) -> list[Chem.Mol]:
    mols = [Chem.MolFromSmiles(text) for text in nci_smiles[:900]]
    return [mol for mol in mols if mol is not None and mol.GetNumAtoms()]


def rdkit_nearest(train: list[Chem.Mol], queries: list[Chem.Mol]) -> np.ndarray:
    """The reference: RDKit bit vectors and BulkTanimotoSimilarity."""
    generator = morgan_generator(SPEC.radius, SPEC.n_bits)
    train_fps = [generator.GetFingerprint(mol) for mol in train]
    return np.array([max(DataStructs.BulkTanimotoSimilarity(generator.GetFingerprint(mol), train_fps))
                     for mol in queries])


def similarity_of(domain: TrainingDomain, fingerprints: np.ndarray, row_of: dict[str, int],
                  queries: np.ndarray, mol_ids: list[str]) -> np.ndarray:
    """The Tanimoto similarity of each query to the neighbour it was given."""
    train_bits = np.unpackbits(fingerprints[[row_of[mol_id] for mol_id in mol_ids]], axis=1)
    query_bits = np.unpackbits(queries, axis=1)
    shared = (train_bits & query_bits).sum(axis=1)
    return shared / (train_bits | query_bits).sum(axis=1)


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["exact", "hnsw"])
def test_nearest_matches_rdkit_bulk_tanimoto(molecules: list[Chem.Mol], exact_max_rows: int) -> None:
    train, queries = molecules[:600], molecules[600:]
    fingerprints = fingerprint_matrix(train, SPEC)
    mol_ids = [f"train-{index}" for index in range(len(train))]
    domain = TrainingDomain.build(fingerprints, mol_ids, n_bits=SPEC.n_bits, exact_max_rows=exact_max_rows)
    assert domain.method == ("exact" if exact_max_rows else "approximate (HNSW)")
    query_fps = fingerprint_matrix(queries, SPEC)
    found = domain.nearest(query_fps)
    reference = rdkit_nearest(train, queries)
    given = similarity_of(domain, fingerprints, {m: i for i, m in enumerate(mol_ids)}, query_fps, found.mol_id)
    # The reported similarity is that of the reported neighbour, always.
    np.testing.assert_allclose(found.similarity, given, atol=1e-6)
    assert np.all(found.similarity <= reference + 1e-6)
    if exact_max_rows:
        np.testing.assert_allclose(found.similarity, reference, atol=1e-6)
    else:  # a few hundred molecules: the graph finds the nearest almost always
        assert np.mean(found.similarity >= reference - 1e-6) >= 0.95


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["exact", "hnsw"])
def test_training_molecules_are_found_and_round_trip(molecules: list[Chem.Mol], tmp_path: Path,
                                                     exact_max_rows: int) -> None:
    train = molecules[:300]
    fingerprints = fingerprint_matrix(train, SPEC)
    mol_ids = [f"train-{index}" for index in range(len(train))]
    domain = TrainingDomain.build(fingerprints, mol_ids, n_bits=SPEC.n_bits, exact_max_rows=exact_max_rows)
    loaded = TrainingDomain.load(domain.save(tmp_path / "domain"))
    assert loaded.method == domain.method and loaded.rows == len(train)
    back = loaded.nearest(fingerprints[:50])
    assert np.all(back.similarity == 1.0) and np.all(back.in_training_set)
    # The neighbour has the same bits (a duplicate fingerprint may be another molecule's).
    for row, mol_id in enumerate(back.mol_id):
        assert np.array_equal(fingerprints[int(mol_id.split("-")[1])], fingerprints[row])
    outside = loaded.nearest(fingerprint_matrix(molecules[300:400], SPEC))
    assert not outside.in_training_set[outside.similarity < 1.0].any()
    np.testing.assert_array_equal(outside.similarity, domain.nearest(
        fingerprint_matrix(molecules[300:400], SPEC)).similarity)


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["exact", "hnsw"])
def test_identical_is_in_training_set_without_the_search(molecules: list[Chem.Mol],
                                                         exact_max_rows: int) -> None:
    """What a screen keeps for every row: the hash lookup answers as the search does."""
    fingerprints = fingerprint_matrix(molecules[:300], SPEC)
    domain = TrainingDomain.build(fingerprints, [str(i) for i in range(300)], n_bits=SPEC.n_bits,
                                  exact_max_rows=exact_max_rows)
    queries = np.concatenate([fingerprints[250:], fingerprint_matrix(molecules[300:400], SPEC),
                              np.zeros((1, SPEC.n_bytes), np.uint8)])
    identical = domain.identical(queries)
    assert identical.tolist() == domain.nearest(queries).in_training_set.tolist()
    assert identical[:50].all() and not identical[-1]
    assert domain.identical(np.zeros((0, SPEC.n_bytes), np.uint8)).shape == (0,)


@pytest.mark.parametrize("exact_max_rows", [10_000, 0], ids=["exact", "hnsw"])
def test_queries_without_on_bits_and_bad_shapes(exact_max_rows: int) -> None:
    rng = np.random.default_rng(0)
    fingerprints = np.packbits(rng.random((50, SPEC.n_bits)) < 0.05, axis=1)
    fingerprints[7] = 0  # an empty training fingerprint: still like nothing
    domain = TrainingDomain.build(fingerprints, [str(i) for i in range(50)], n_bits=SPEC.n_bits,
                                  exact_max_rows=exact_max_rows)
    found = domain.nearest(np.zeros((3, SPEC.n_bytes), np.uint8))
    assert found.similarity.tolist() == [0.0, 0.0, 0.0] and not found.in_training_set.any()
    assert domain.nearest(np.zeros((0, SPEC.n_bytes), np.uint8)).mol_id == []
    with pytest.raises(ValueError, match=r"uint8\[M, 128\]"):
        domain.nearest(np.zeros((2, 64), np.uint8))
    with pytest.raises(ValueError, match="50 fingerprints but 49 mol_ids"):
        TrainingDomain.build(fingerprints, [str(i) for i in range(49)], n_bits=SPEC.n_bits)


def test_training_domain_is_built_once_per_dataset(panel_dataset: Path, tmp_path: Path) -> None:
    import shutil

    from featurize.dataset import read_dataset_info
    from featurize.reader import read_all
    from pipelines.training.domain_cache import cache_path, training_domain

    data = shutil.copytree(panel_dataset, tmp_path / "data")
    info = read_dataset_info(data)
    domain = training_domain(info)
    assert cache_path(info).is_dir() and domain.rows == info.split_counts["train"]
    train = read_all(info, split="train", columns=("mol_id",))
    assert domain.mol_ids == train.mol_id
    again = training_domain(info)
    assert again.mol_ids == domain.mol_ids and again.method == domain.method
    counts = dataclasses.replace(info, spec=dataclasses.replace(info.spec, counts=True))
    assert training_domain(counts) is None
    # Another version of the dataset (its manifest changed) gets its own domain.
    first = cache_path(info)
    manifest = json.loads((data / "manifest.json").read_text())
    (data / "manifest.json").write_text(json.dumps({**manifest, "note": "re-featurized"}))
    assert cache_path(read_dataset_info(data)) != first


def test_identity_rests_on_the_stored_bits_not_on_the_graph_or_the_hash(molecules: list[Chem.Mol]) -> None:
    from pipelines.serving.applicability_domain import fingerprint_hashes

    fingerprints = fingerprint_matrix(molecules[:300], SPEC)
    domain = TrainingDomain.build(fingerprints, [f"train-{i}" for i in range(300)], n_bits=SPEC.n_bits,
                                  exact_max_rows=0)
    hashes = fingerprint_hashes(fingerprints)
    distinct = len({row.tobytes() for row in fingerprints})
    assert len(set(hashes.tolist())) == distinct  # equal bits, equal hash; no collision here
    # A forged collision: another molecule's hash on row 0 must not make it "in the training set".
    outsider = fingerprint_matrix(molecules[400:401], SPEC)
    forged = TrainingDomain(SPEC.n_bits, domain.mol_ids, index=domain.index,
                            hashes=np.concatenate([fingerprint_hashes(outsider), hashes[1:]]))
    assert not forged.nearest(outsider).in_training_set[0]
    assert domain.nearest(fingerprints).in_training_set.all()  # every training molecule, graph or not
