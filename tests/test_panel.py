"""The offline PCBA-shaped panel and the generated screening library."""
from __future__ import annotations

from itertools import combinations, islice
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from rdkit import Chem
from rdkit.Chem import Descriptors, rdFingerprintGenerator
from rdkit.Chem.Scaffolds import MurckoScaffold

from featurize.synthetic.library import generate_library
from featurize.synthetic.panel import generate_panel, task_families, task_names, write_panel_csv

N_PANEL = 2000  # the panel_csv fixture's good rows
N_BAD = 5


def _labels(frame: pd.DataFrame) -> np.ndarray:
    return frame[[c for c in frame.columns if c.startswith("PANEL-")]].to_numpy(dtype=float, na_value=np.nan)


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    paths = [tmp_path / name for name in ("a.csv", "b.csv", "c.csv")]
    for path, seed in zip(paths, (0, 0, 1)):
        write_panel_csv(path, 300, n_tasks=16, seed=seed)
    assert paths[0].read_bytes() == paths[1].read_bytes()
    assert paths[0].read_bytes() != paths[2].read_bytes()


def test_a_panel_is_the_prefix_of_a_larger_one() -> None:
    small = generate_panel(150, n_tasks=16, seed=4)
    large = generate_panel(400, n_tasks=16, seed=4)
    pd.testing.assert_frame_equal(small, large.iloc[:150])


def test_panel_csv_shape_labels_and_missing_share(panel_csv: Path) -> None:
    frame = pd.read_csv(panel_csv)
    assert list(frame.columns) == ["smiles", "mol_id", *task_names(128)]
    assert len(frame) == N_PANEL + N_BAD
    labels = _labels(frame)
    assert set(np.unique(labels[~np.isnan(labels)])) == {0.0, 1.0}
    present = ~np.isnan(labels)
    assert 0.3 < 1 - present.mean() < 0.5  # PCBA-like share of missing labels
    rates = np.nansum(labels, axis=0) / present.sum(axis=0)
    assert 0.005 < rates.mean() < 0.05
    assert rates.max() < 0.1 and (rates > 0).sum() >= 120  # rare actives, almost every task has some


def test_panel_molecules_are_valid_unique_drug_like_and_varied(panel_csv: Path) -> None:
    frame = pd.read_csv(panel_csv, keep_default_na=False)
    good = frame[frame["mol_id"].str.startswith("panel-0")].drop_duplicates("mol_id", keep="first")
    mols = [Chem.MolFromSmiles(smiles) for smiles in good["smiles"]]
    assert len(mols) == N_PANEL and all(mol is not None for mol in mols)
    assert len({Chem.MolToSmiles(mol) for mol in mols}) == N_PANEL
    assert max(Descriptors.MolWt(mol) for mol in mols) <= 500.01
    scaffolds = {MurckoScaffold.MurckoScaffoldSmiles(mol=mol) for mol in mols}
    assert len(scaffolds) > N_PANEL // 4


def test_bad_rows_are_what_the_quarantine_expects(panel_csv: Path) -> None:
    frame = pd.read_csv(panel_csv, keep_default_na=False)
    unparsable = [smiles for smiles in frame["smiles"] if smiles and Chem.MolFromSmiles(smiles) is None]
    assert len(unparsable) == 3
    assert (frame["smiles"] == "").sum() == 1
    assert frame["mol_id"].duplicated().sum() == 1
    repeated = frame[frame["mol_id"].duplicated(keep=False)]
    assert repeated["smiles"].nunique() == 2  # same id, two different valid molecules


@pytest.mark.slow
def test_featurizing_the_panel_quarantines_every_bad_row(panel_dataset: Path) -> None:
    from featurize.dataset import read_dataset_info

    info = read_dataset_info(panel_dataset)
    assert (info.input_rows, info.accepted, info.rejected) == (N_PANEL + N_BAD, N_PANEL, N_BAD)
    assert info.tasks == task_names(128)


def _mean_coactivity(labels: np.ndarray, families: np.ndarray) -> tuple[float, float]:
    """Mean Jaccard overlap of active sets for task pairs in one family / in two."""
    same, other = [], []
    for a, b in combinations(range(labels.shape[1]), 2):
        union = np.logical_or(labels[:, a] == 1, labels[:, b] == 1).sum()
        overlap = np.logical_and(labels[:, a] == 1, labels[:, b] == 1).sum() / max(union, 1)
        (same if families[a] == families[b] else other).append(overlap)
    return float(np.mean(same)), float(np.mean(other))


def test_relatedness_controls_how_much_a_family_shares_actives() -> None:
    n_tasks = 24
    families = task_families(n_tasks)
    related = _labels(generate_panel(3000, n_tasks, seed=5, relatedness=1.0, missing=0.0))
    unrelated = _labels(generate_panel(3000, n_tasks, seed=5, relatedness=0.0, missing=0.0))
    assert not np.isnan(related).any()  # missing=0 drops no label
    related_same, related_other = _mean_coactivity(related, families)
    unrelated_same, unrelated_other = _mean_coactivity(unrelated, families)
    assert related_same > 3 * related_other
    assert related_same > 3 * unrelated_same
    assert unrelated_same < 2 * unrelated_other + 0.02


def test_rules_are_learnable_from_ecfp() -> None:
    """A logistic regression on ECFP4 bits beats the active-rate baseline
    (AP of a random ranking = the active share) clearly on held-out molecules."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score

    frame = generate_panel(3000, n_tasks=32, seed=11)
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    features = np.stack([generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(s)) for s in frame["smiles"]])
    labels = _labels(frame)
    held_out = np.random.default_rng(0).random(len(frame)) < 0.3
    rates = np.nansum(labels, axis=0) / (~np.isnan(labels)).sum(axis=0)
    for task in np.argsort(-rates)[:3]:
        y = labels[:, task]
        train, test = ~np.isnan(y) & ~held_out, ~np.isnan(y) & held_out
        model = LogisticRegression(C=0.1, max_iter=2000).fit(features[train], y[train])
        average_precision = average_precision_score(y[test], model.predict_proba(features[test])[:, 1])
        assert average_precision > 3 * y[test].mean(), (task, average_precision, y[test].mean())


def test_panel_arguments_are_checked() -> None:
    with pytest.raises(ValueError, match="relatedness"):
        generate_panel(10, relatedness=1.5)
    with pytest.raises(ValueError, match="n_molecules"):
        generate_panel(0)


def test_library_streams_distinct_valid_molecules_deterministically() -> None:
    first = list(generate_library(1500, seed=2))
    assert first == list(generate_library(1500, seed=2))
    assert list(islice(generate_library(1500, seed=3), 50)) != first[:50]
    canonical = {Chem.MolToSmiles(Chem.MolFromSmiles(smiles)) for smiles in first}
    assert len(canonical) == 1500
    assert next(generate_library(1, seed=2, canonical=True)) == Chem.MolToSmiles(Chem.MolFromSmiles(first[0]))
    with pytest.raises(ValueError, match="product space"):
        next(generate_library(10**9))


def test_panel_job_writes_the_csv_and_a_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pipelines.cli import main

    out = tmp_path / "panel.csv"
    assert main(["panel", "--out", str(out), "--molecules", "60", "--tasks", "8", "--seed", "1"]) == 0
    printed = capsys.readouterr().out
    assert "bad rows injected" in printed and "missing labels" in printed
    assert len(pd.read_csv(out)) == 60 + N_BAD
    library = tmp_path / "library.csv"
    assert main(["panel", "--out", str(library), "--molecules", "40", "--library"]) == 0
    assert pd.read_csv(library).columns.tolist() == ["smiles", "mol_id"]
    assert main(["panel", "--out", str(out), "--relatedness", "1.5"]) == 2
    assert "relatedness must be in [0, 1]" in capsys.readouterr().err
