"""Structural alerts, --exclude-alerts and the hit pictures, without Ray:
real RDKit catalogs, real Parquet score files, a real MLflow SQLite store.
Rankings are checked against a brute-force sort of the whole library."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image
from rdkit import Chem, rdBase
from rdkit.Chem import FilterCatalog

from featurize.standardize import standardize_smiles
from pipelines.screening import alerts as alerts_module
from pipelines.screening.alerts import UNCHECKED_PREFIX, AlertCache, structural_alerts
from pipelines.screening.hits import TopK, rank_hits
from pipelines.screening.outputs import HITS_FILE, MULTI_ASSAY_FILE, scores_schema
from pipelines.screening.pictures import (
    CELL_PIXELS,
    MOLS_PER_ROW,
    PICTURE_MOLS,
    draw_hit_pictures,
    hit_legend,
    picture_name,
    similarity_histogram_png,
    similarity_histogram_text,
)
from pipelines.screening.score_parts import ScoreParts

ASSAYS = ["PCBA-1", "PCBA-2", "PCBA-3"]
BENZYLIDENE_RHODANINE = "O=C1NC(=S)SC1=Cc1ccccc1"  # PAINS ene_rhod_A


# -- alerts ------------------------------------------------------------------------------
def test_a_pains_molecule_is_flagged_and_a_plain_one_is_not() -> None:
    rhodanine, indole, unparsable = structural_alerts(
        [BENZYLIDENE_RHODANINE, "c1ccc2[nH]ccc2c1", "C1CC"])
    assert "PAINS_A:ene_rhod_A(235)" in rhodanine and "NIH:rhodanine" in rhodanine
    catalogs = [name.split(":")[0] for name in rhodanine]
    assert catalogs == sorted(catalogs, key=["PAINS_A", "Brenk", "NIH"].index)  # stable order
    assert indole == []
    assert len(unparsable) == 1 and unparsable[0].startswith(UNCHECKED_PREFIX)
    # The scored molecule is checked: a counter-ion does not hide or add an alert.
    assert structural_alerts([f"{BENZYLIDENE_RHODANINE}.[Na+].[Cl-]"])[0] == rhodanine


@pytest.fixture(scope="module")
def nci_canonical(nci_smiles: list[str]) -> list[str]:
    """1,500 standardized NCI molecules and a PAINS one (what the matcher is given)."""
    return [standardize_smiles(text).smiles for text in [*nci_smiles[:1500], BENZYLIDENE_RHODANINE]
            if standardize_smiles(text).smiles]


def test_the_prefiltered_matcher_finds_what_rdkit_finds(nci_smiles: list[str], nci_canonical: list[str]) -> None:
    """Against RDKit's own run of the whole catalog on every molecule: the
    pattern-fingerprint screen skips only entries that cannot match."""
    matcher = alerts_module.AlertMatcher()
    assert (matcher.entry_words.any(axis=1)).mean() > 0.95  # the screen applies to the catalog
    with rdBase.BlockLogs():
        reference = [alerts_module._alert_names(list(entries)) for entries in
                     FilterCatalog.RunFilterCatalog(alerts_module.alert_catalog(), nci_canonical,
                                                    numThreads=1)]
    assert matcher.alerts(nci_canonical) == reference
    # Given the library's own SMILES, it checks the same standardized molecules.
    raw = nci_smiles[:1500]
    from_raw = matcher.alerts(raw)
    standardizes = [standardize_smiles(text).smiles is not None for text in raw]
    assert [names for names, ok in zip(from_raw, standardizes) if ok] == reference[:-1]
    assert all(names[0].startswith(UNCHECKED_PREFIX) for names, ok in zip(from_raw, standardizes) if not ok)
    assert sum(map(bool, reference)) > len(reference) / 3  # NCI carries many alerts




def test_an_entry_the_parser_does_not_know_is_checked_on_every_molecule() -> None:
    class Unknown:
        def Serialize(self) -> bytes:  # noqa: N802 (RDKit's name)
            return b"22 serialization::archive 20 1 1\n0 0 1 4 1 1\n1 0 0 3 odd 0 0"

    assert alerts_module.entry_query(Unknown()) is None
    real = alerts_module.alert_catalog().GetEntryWithIdx(0)
    assert Chem.MolToSmarts(alerts_module.entry_query(real)).startswith("[#6]")


def test_each_distinct_molecule_is_matched_once() -> None:
    matched: list[str] = []

    def counting(canonical: list[str]) -> list[list[str]]:
        matched.extend(canonical)
        return alerts_module.match_in_process(canonical)

    cache = AlertCache(counting)
    first = cache.alerts(["CCO", BENZYLIDENE_RHODANINE, "CCO"])
    second = cache.alerts([BENZYLIDENE_RHODANINE, "CCN"])
    assert len(matched) == 3  # CCO, the rhodanine, CCN
    assert first[1] == second[0] and first[0] == [] and cache.flagged(["CCN", BENZYLIDENE_RHODANINE]).tolist() \
        == [False, True]


# -- ranking -----------------------------------------------------------------------------
def test_top_k_pages_read_the_ranking_in_order_with_ties() -> None:
    rng = np.random.default_rng(3)
    scores = rng.random((3_000, 2)).round(1).astype(np.float32)  # 11 values: ties everywhere
    rows = rng.permutation(3_000).astype(np.int64)
    after, pages = None, [[], []]
    for k in (50, 100, 200, 400):
        page = TopK(k, 2, after)
        for start in range(0, 3_000, 333):
            page.update(scores[start:start + 333], rows[start:start + 333])
        for assay in range(2):
            pages[assay] += page.rows[assay].tolist()
        after = (np.array([s[-1] for s in page.scores]), np.array([r[-1] for r in page.rows]))
    for assay in range(2):
        expected = np.lexsort((rows, -scores[:, assay]))[:750]
        assert pages[assay] == rows[expected].tolist()


@pytest.fixture(scope="module")
def alert_cache() -> AlertCache:
    """One cache for the ranking tests: each molecule is matched once."""
    return AlertCache()


@pytest.fixture(scope="module")
def flagged_library(nci_smiles: list[str], alert_cache: AlertCache) -> pd.DataFrame:
    """600 scored molecules, about two thirds of them flagged (NCI compounds
    carry many Brenk alerts), the flagged ones pushed to the top of PCBA-1
    so the unflagged top K lies several pages down."""
    rng = np.random.default_rng(7)
    n = 600
    smiles = nci_smiles[:n - 10] + [BENZYLIDENE_RHODANINE] * 10  # duplicates of one molecule
    frame = pd.DataFrame(rng.random((n, 3)).round(3).astype(np.float32), columns=ASSAYS)  # ties
    frame.insert(0, "smiles", smiles)
    frame.insert(0, "mol_id", [f"M{i}" for i in range(n)])
    frame.insert(0, "row", rng.permutation(n).astype(np.int64))
    frame["alerts"] = alert_cache.alerts(smiles)
    flagged = frame["alerts"].str.len() > 0
    assert 0.5 < flagged.mean() < 0.8
    frame.loc[flagged, "PCBA-1"] += 1.0
    return frame


def _write(directory: Path, frame: pd.DataFrame) -> list[Path]:
    parts = ScoreParts(directory.parent, scores_schema(ASSAYS), rows_per_part=250)
    for start in range(0, len(frame), 100):
        parts.write(pa.Table.from_pandas(frame.iloc[start:start + 100].drop(columns="alerts"),
                                         preserve_index=False))
    parts.close()
    return parts.score_files


def _reference(frame: pd.DataFrame, assay: str, k: int, unflagged_only: bool) -> pd.DataFrame:
    if unflagged_only:
        frame = frame[frame["alerts"].str.len() == 0]
    return frame.sort_values([assay, "row"], ascending=[False, True]).head(k)


@pytest.mark.parametrize("exclude_alerts", [False, True])
def test_hits_carry_alerts_and_exclusion_takes_the_next_unflagged(
        tmp_path: Path, flagged_library: pd.DataFrame, alert_cache: AlertCache,
        exclude_alerts: bool) -> None:
    files = _write(tmp_path / "scores", flagged_library)
    top_k = 40  # the first page holds 80 candidates: PCBA-1 needs 5 more pages

    summary = rank_hits(files, ASSAYS, tmp_path, top_k=top_k, threshold=None, min_active_assays=2,
                        exclude_alerts=exclude_alerts, alerts=alert_cache)

    hits = pd.read_parquet(tmp_path / HITS_FILE)
    by_row = flagged_library.set_index("row")
    assert [list(names) for names in hits["alerts"]] == by_row.loc[hits["row"], "alerts"].tolist()
    for assay in ASSAYS:
        expected = _reference(flagged_library, assay, top_k, exclude_alerts)
        ranked = hits[hits.assay == assay]
        assert ranked["row"].tolist() == expected["row"].tolist()
        assert ranked["rank"].tolist() == list(range(1, top_k + 1))
    assert summary.hits_with_alerts == int((hits["alerts"].str.len() > 0).sum())
    if exclude_alerts:
        assert summary.hits_with_alerts == 0
        # Flagged molecules ranked above each assay's last hit are the ones left out.
        left_out = set()
        for assay in ASSAYS:
            last = _reference(flagged_library, assay, top_k, True).iloc[-1]
            above = flagged_library[(flagged_library[assay] > last[assay])
                                    | ((flagged_library[assay] == last[assay])
                                       & (flagged_library["row"] < last["row"]))]
            left_out |= set(above.loc[above["alerts"].str.len() > 0, "row"])
        assert summary.excluded_for_alerts == len(left_out) > top_k
    else:
        assert hits[hits.assay == "PCBA-1"]["alerts"].str.len().min() > 0  # all flagged on top
    multi = pd.read_parquet(tmp_path / MULTI_ASSAY_FILE)
    assert len(multi) == summary.multi_assay_hits > 0
    assert [list(names) for names in multi["alerts"]] == by_row.loc[multi["row"], "alerts"].tolist()
    assert (multi["alerts"].str.len() == 0).all() == exclude_alerts


def test_exclusion_with_a_threshold_and_an_exhausted_library(
        tmp_path: Path, flagged_library: pd.DataFrame, alert_cache: AlertCache) -> None:
    small = flagged_library.iloc[:60]
    unflagged = int((small["alerts"].str.len() == 0).sum())
    files = _write(tmp_path / "scores", small)

    rank_hits(files, ASSAYS, tmp_path, top_k=50, threshold=0.5, min_active_assays=2,
              exclude_alerts=True, alerts=alert_cache)

    hits = pd.read_parquet(tmp_path / HITS_FILE)
    assert 0 < unflagged < 50
    for assay in ASSAYS:  # fewer clean molecules than K: every one of them, in order
        assert hits[hits.assay == assay]["row"].tolist() == \
            _reference(small, assay, 50, unflagged_only=True)["row"].tolist()
    multi = pd.read_parquet(tmp_path / MULTI_ASSAY_FILE)
    clean = small[small["alerts"].str.len() == 0]
    expected = clean[(clean[ASSAYS].to_numpy() >= 0.5).sum(axis=1) >= 2]
    assert sorted(multi["row"]) == sorted(expected["row"]) and len(expected) > 0
    assert (multi["alerts"].str.len() == 0).all()


# -- pictures ----------------------------------------------------------------------------
def test_hit_pictures_open_with_pil(tmp_path: Path, flagged_library: pd.DataFrame,
                                   alert_cache: AlertCache) -> None:
    files = _write(tmp_path / "scores", flagged_library)
    rank_hits(files, ASSAYS, tmp_path, top_k=30, threshold=None, min_active_assays=2,
              alerts=alert_cache)
    hits = pq.read_table(tmp_path / HITS_FILE)

    written = draw_hit_pictures(hits, tmp_path)
    assert written == [tmp_path / "hits.png"]
    rows = PICTURE_MOLS // MOLS_PER_ROW
    with Image.open(written[0]) as image:
        assert image.format == "PNG"
        assert image.size == (MOLS_PER_ROW * CELL_PIXELS[0], rows * CELL_PIXELS[1])
        assert len(set(image.convert("L").getdata())) > 2  # something was drawn

    per_assay = draw_hit_pictures(hits, tmp_path, per_assay=["PCBA-2", "PCBA-3"])
    assert per_assay == [tmp_path / "hits-PCBA-2.png", tmp_path / "hits-PCBA-3.png"]
    for path in per_assay:
        with Image.open(path) as image:
            assert image.size[0] == MOLS_PER_ROW * CELL_PIXELS[0]
    assert picture_name("AID 1/2") == "hits-AID_1_2.png"
    assert draw_hit_pictures(hits.slice(0, 0), tmp_path / "none") == []


def test_legend_shows_similarity_only_when_the_hits_have_it() -> None:
    hit = {"assay": "PCBA-1", "rank": 3, "row": 17, "mol_id": "M17", "smiles": "CCO",
           "score": np.float32(0.8731), "alerts": np.array(["PAINS_A:ene_rhod_A(235)", "NIH:rhodanine"])}
    assert hit_legend(hit, show_assay=False) == "#3 M17\nscore 0.873\nPAINS_A:ene_rhod_A(235) +1"
    with_similarity = hit_legend({**hit, "nn_similarity": 0.4149, "mol_id": None, "alerts": []},
                                 show_assay=True)
    assert with_similarity == "row 17 (PCBA-1)\nscore 0.873  sim 0.41\nno alerts"
    assert "sim n/a" in hit_legend({**hit, "nn_similarity": float("nan")}, show_assay=False)


def test_similarity_histograms_on_known_values(tmp_path: Path) -> None:
    values = np.array([0.05, 0.15, 0.12, 0.19, 0.5, 1.0, 0.999, np.nan])
    text = similarity_histogram_text(values, width=10)
    lines = text.splitlines()
    assert lines[0] == "similarity to the training set (n=7, 1 missing)"
    assert len(lines) == 11
    assert lines[1] == "0.0-0.1 |###       | 1"
    assert lines[2] == "0.1-0.2 |##########| 3"
    assert lines[6] == "0.5-0.6 |###       | 1"  # a value on an edge goes to the bin above it
    assert lines[10] == "0.9-1.0 |#######   | 2"  # 1.0 is in the last bin
    assert all(line.endswith("| 0") for index, line in enumerate(lines[1:], 1)
               if index not in (1, 2, 6, 10))
    with pytest.raises(ValueError, match=r"\[0, 1\].*1\.5"):
        similarity_histogram_text(np.array([0.2, 1.5]))

    path = similarity_histogram_png(values, tmp_path / "similarity.png")
    with Image.open(path) as image:
        assert image.format == "PNG" and image.size == (660, 396)
    empty = similarity_histogram_text(np.array([]))
    assert empty.splitlines()[0].endswith("(n=0)") and empty.count("| 0") == 10


# -- MLflow ------------------------------------------------------------------------------
def test_pictures_go_to_the_run_that_logged_the_model(mlflow_uri: str, tmp_path: Path) -> None:
    from pipelines.platform import tracking
    from pipelines.screening.model import source_run_id
    from pipelines.screening.run_screen import log_pictures

    mlflow_client = tracking.client(mlflow_uri)
    run_id, _ = tracking.start_run(mlflow_uri, "screen-tests", "training")
    experiment_id = mlflow_client.get_run(run_id).info.experiment_id
    model = mlflow_client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    mlflow_client.create_registered_model("pcba-alerts")
    with tracking.use_tracking_uri(mlflow_uri):
        mlflow_client.create_model_version("pcba-alerts", f"models:/{model.model_id}",
                                           run_id=run_id, model_id=model.model_id)
        mlflow_client.create_model_version("pcba-alerts", f"models:/{model.model_id}",
                                           model_id=model.model_id)  # registered without a run
    mlflow_client.set_registered_model_alias("pcba-alerts", "champion", "1")

    for uri in ("models:/pcba-alerts@champion", "models:/pcba-alerts/1", "models:/pcba-alerts/2",
                f"models:/{model.model_id}", f"runs:/{run_id}/model"):
        assert source_run_id(uri, mlflow_uri) == run_id, uri
    assert source_run_id(str(tmp_path / "model"), mlflow_uri) is None

    picture = tmp_path / "hits.png"
    picture.write_bytes(b"\x89PNG placeholder")
    where = log_pictures([picture], "models:/pcba-alerts@champion", mlflow_uri, "screenings/lib-abc")
    assert where == f"runs:/{run_id}/screenings/lib-abc"
    logged = [info.path for info in mlflow_client.list_artifacts(run_id, "screenings/lib-abc")]
    assert logged == ["screenings/lib-abc/hits.png"]
    assert log_pictures([picture], "models:/pcba-alerts@no-such-alias", mlflow_uri, "x") is None
    assert log_pictures([picture], str(tmp_path), mlflow_uri, "x") is None
