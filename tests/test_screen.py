"""Screening parts that need no Ray or MLflow: hit ranking against a brute
force reference, the row ledger, library resolution and the spec check, and
the featurize stage against the training featurization."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurize.batch import featurize_batch
from featurize.errors import InputDataError, SpecMismatchError
from featurize.pipeline import featurize_file
from featurize.sources.readers import LibrarySource
from featurize.spec import FingerprintSpec
from pipelines.errors import UserError
from pipelines.screening import ScreeningConfig
from pipelines.screening.hits import TopK, rank_hits
from pipelines.screening.library_source import check_library_spec, resolve_library
from pipelines.screening.outputs import (
    HITS_FILE,
    MULTI_ASSAY_FILE,
    StagedOutput,
    check_out_dir,
    scores_schema,
)
from pipelines.screening.score_parts import ScoreParts
from pipelines.screening.scoring import FEATURIZE_SECONDS, RowLedger, featurize_block

ASSAYS = ["PCBA-1", "PCBA-2", "PCBA-3"]


# -- hits ------------------------------------------------------------------------------
def _reference_top_k(frame: pd.DataFrame, assay: str, k: int) -> list[int]:
    return frame.sort_values([assay, "row"], ascending=[False, True])["row"].head(k).tolist()


def test_top_k_matches_a_full_sort_with_ties() -> None:
    rng = np.random.default_rng(0)
    # Rounded scores make many ties, which must break by row, whatever the batching.
    scores = rng.random((5_000, 3)).round(2).astype(np.float32)
    rows = rng.permutation(5_000).astype(np.int64)
    frame = pd.DataFrame(scores, columns=ASSAYS).assign(row=rows)
    top = TopK(37, 3)
    for start in range(0, 5_000, 611):
        top.update(scores[start:start + 611], rows[start:start + 611])
    for index, assay in enumerate(ASSAYS):
        assert top.rows[index].tolist() == _reference_top_k(frame, assay, 37)
        assert np.all(np.diff(top.scores[index]) <= 0)


def _write_scores(directory: Path, frame: pd.DataFrame, rows_per_shard: int) -> list[Path]:
    """Score parts of ``frame`` under ``directory`` (a screening's scores/ folder)."""
    parts = ScoreParts(directory.parent, scores_schema(ASSAYS), rows_per_part=rows_per_shard)
    for start in range(0, len(frame), 250):
        parts.write(pa.Table.from_pandas(frame.iloc[start:start + 250], preserve_index=False))
    parts.close()
    return parts.score_files


def test_rank_hits_against_pandas(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    n = 2_000
    frame = pd.DataFrame(rng.random((n, 3)).astype(np.float32), columns=ASSAYS)
    frame.insert(0, "smiles", [f"C{'C' * (i % 7)}O" for i in range(n)])
    frame.insert(0, "mol_id", [f"M{i}" for i in range(n)])
    frame.insert(0, "row", rng.permutation(n).astype(np.int64))  # Ray delivers blocks in any order
    files = _write_scores(tmp_path / "scores", frame, rows_per_shard=700)
    assert len(files) == 3

    summary = rank_hits(files, ASSAYS, tmp_path, top_k=10, threshold=0.8, min_active_assays=2)

    hits = pd.read_parquet(tmp_path / HITS_FILE)
    assert summary.hits == len(hits) == 30
    for assay in ASSAYS:
        ranked = hits[hits.assay == assay]
        assert ranked["rank"].tolist() == list(range(1, 11))
        expected = frame.set_index("row").loc[_reference_top_k(frame, assay, 10)]
        assert ranked["row"].tolist() == expected.index.tolist()
        assert ranked["mol_id"].tolist() == expected["mol_id"].tolist()
        assert ranked["smiles"].tolist() == expected["smiles"].tolist()
        np.testing.assert_array_equal(ranked["score"].to_numpy(), expected[assay].to_numpy())
    multi = pd.read_parquet(tmp_path / MULTI_ASSAY_FILE)
    active = frame[ASSAYS].to_numpy() >= 0.8
    expected_rows = frame["row"][active.sum(axis=1) >= 2]
    assert summary.multi_assay_hits == len(multi) == len(expected_rows)
    assert sorted(multi["row"]) == sorted(expected_rows)
    first = multi.iloc[0]
    source = frame.set_index("row").loc[first["row"]]
    assert list(first["active_assays"]) == [a for a in ASSAYS if source[a] >= 0.8]
    assert first["max_score"] == source[ASSAYS].max()


def test_multi_assay_view_defaults_to_top_k_membership(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    n = 300
    frame = pd.DataFrame(rng.random((n, 3)).astype(np.float32) * 0.1, columns=ASSAYS)  # all below 0.5
    frame.insert(0, "smiles", [f"C{'C' * (i % 5)}N" for i in range(n)])
    frame.insert(0, "mol_id", [f"M{i}" for i in range(n)])
    frame.insert(0, "row", rng.permutation(n).astype(np.int64))
    frame.loc[frame.index[:20], ASSAYS] += 0.2  # 20 molecules near the top of every assay
    files = _write_scores(tmp_path / "scores", frame, rows_per_shard=120)

    summary = rank_hits(files, ASSAYS, tmp_path, top_k=25, threshold=None, min_active_assays=2)

    by_row = frame.set_index("row")
    tops = {assay: set(_reference_top_k(frame, assay, 25)) for assay in ASSAYS}
    expected = []
    for row in by_row.index:
        active = [assay for assay in ASSAYS if row in tops[assay]]
        if len(active) >= 2:
            expected.append((-len(active), -by_row.loc[row, active].max(), row, active))
    expected.sort(key=lambda item: item[:3])
    multi = pd.read_parquet(tmp_path / MULTI_ASSAY_FILE)
    assert summary.multi_assay_hits == len(multi) == len(expected) >= 20
    assert multi["row"].tolist() == [item[2] for item in expected]
    assert [list(assays) for assays in multi["active_assays"]] == [item[3] for item in expected]
    assert multi["n_active_assays"].tolist() == [-item[0] for item in expected]
    np.testing.assert_array_equal(multi["max_score"].to_numpy(), [-item[1] for item in expected])
    assert multi["mol_id"].tolist() == by_row.loc[multi["row"], "mol_id"].tolist()


def _spread_by_smiles(smiles: list[str]) -> np.ndarray:
    """A made-up spread per (molecule, assay): a function of the SMILES'
    length and the assay, so every call agrees with every other."""
    return np.array([[(len(text) * (index + 1)) % 7 / 100 for index in range(len(ASSAYS))]
                     for text in smiles], np.float32)


@pytest.mark.parametrize("threshold", [0.8, None])
def test_hits_carry_the_spread_and_drop_disagreement_over_the_limit(tmp_path: Path,
                                                                     threshold: float | None) -> None:
    from pipelines.screening.hits import HitSpread

    rng = np.random.default_rng(3)
    n = 600
    frame = pd.DataFrame(rng.random((n, 3)).astype(np.float32), columns=ASSAYS)
    frame.insert(0, "smiles", [f"C{'C' * (i % 9)}O" for i in range(n)])
    frame.insert(0, "mol_id", [f"M{i}" for i in range(n)])
    frame.insert(0, "row", np.arange(n, dtype=np.int64))
    files = _write_scores(tmp_path / "scores", frame, rows_per_shard=250)
    calls: list[int] = []

    def spread(smiles: list[str]) -> np.ndarray:
        calls.append(len(smiles))
        return _spread_by_smiles(smiles)

    (tmp_path / "all").mkdir()
    (tmp_path / "agreed").mkdir()
    rank_hits(files, ASSAYS, tmp_path / "all", top_k=20, threshold=threshold, min_active_assays=2,
              spread=HitSpread(spread, len(ASSAYS)))
    assert sum(calls) <= 9  # once per distinct SMILES, however many hits and views
    summary = rank_hits(files, ASSAYS, tmp_path / "agreed", top_k=20, threshold=threshold, min_active_assays=2,
                        spread=HitSpread(_spread_by_smiles, len(ASSAYS), limit=0.03))

    every, agreed = (pd.read_parquet(tmp_path / name / HITS_FILE) for name in ("all", "agreed"))
    column = {assay: index for index, assay in enumerate(ASSAYS)}
    expected = [_spread_by_smiles([text])[0, column[assay]] for text, assay in zip(every.smiles, every.assay)]
    np.testing.assert_array_equal(every["spread"].to_numpy(), np.array(expected, np.float32))
    kept = every[every["spread"] <= 0.03]
    assert 0 < len(kept) < len(every) and summary.dropped_for_spread == len(every) - len(kept)
    pd.testing.assert_frame_equal(agreed.reset_index(drop=True), kept.reset_index(drop=True))
    multi = pd.read_parquet(tmp_path / "agreed" / MULTI_ASSAY_FILE)
    assert len(multi) > 0
    for record in multi.itertuples():
        spreads = _spread_by_smiles([record.smiles])[0]
        assert all(spreads[column[assay]] <= 0.03 for assay in record.active_assays)
        assert record.max_spread == max(spreads[column[assay]] for assay in record.active_assays)


@pytest.mark.parametrize("threshold", [0.5, None])
def test_rank_hits_on_an_empty_screen(tmp_path: Path, threshold: float | None) -> None:
    empty = pd.DataFrame({"row": pd.Series([], dtype="int64"), "mol_id": [], "smiles": [],
                          **{a: pd.Series([], dtype="float32") for a in ASSAYS}})
    files = _write_scores(tmp_path / "scores", empty, rows_per_shard=10)
    summary = rank_hits(files, ASSAYS, tmp_path, top_k=5, threshold=threshold, min_active_assays=1)
    assert (summary.hits, summary.multi_assay_hits) == (0, 0)
    assert pq.read_table(tmp_path / HITS_FILE).num_rows == 0


# -- accounting -------------------------------------------------------------------------
def test_row_ledger_accepts_any_order_and_catches_losses_and_repeats() -> None:
    rows = np.random.default_rng(2).permutation(10_000)
    ledger = RowLedger()
    for chunk in np.array_split(rows, 7):
        ledger.add(chunk)
    assert ledger.check(10_000) == 10_000

    for broken in (np.delete(rows, 17),                     # a row lost
                   np.append(rows, 5),                      # a row twice
                   np.where(rows == 3, 4, rows)):           # one lost, one repeated
        ledger = RowLedger()
        ledger.add(broken)
        with pytest.raises(RuntimeError, match="accounting error"):
            ledger.check(None)
    ledger = RowLedger()
    ledger.add(rows[rows < 9_000])  # the tail of a file that has 10,000 rows
    with pytest.raises(RuntimeError, match="10000 rows"):
        ledger.check(10_000)


# -- library and spec --------------------------------------------------------------------
@pytest.fixture()
def smiles_csv(tmp_path: Path, nci_smiles: list[str]) -> Path:
    path = tmp_path / "library.csv"
    pd.DataFrame({"smiles": nci_smiles[:200] + ["not a smiles", ""]}).to_csv(path, index=False)
    return path


def test_raw_and_featurized_libraries_are_told_apart(tmp_path: Path, smiles_csv: Path) -> None:
    raw = resolve_library(smiles_csv)
    assert (raw.kind, raw.featurized) == ("smiles", False)
    spec = FingerprintSpec(radius=2, n_bits=1024)
    featurize_file(smiles_csv, tmp_path / "fp", spec=spec, backend="local", progress=False)
    for path in (tmp_path / "fp", next((tmp_path / "fp" / "features").glob("*.parquet"))):
        library = resolve_library(path)
        assert library.featurized and library.spec == spec and library.rows == 200
        assert sum(batch.num_rows for batch in library.iter_batches(64)) == 200
        rows = np.concatenate([b["_row"].to_numpy() for b in library.iter_batches(64)])
        assert rows.tolist() == list(range(200))


def test_a_library_made_with_another_spec_is_refused(tmp_path: Path, smiles_csv: Path) -> None:
    featurize_file(smiles_csv, tmp_path / "fp", spec=FingerprintSpec(n_bits=1024),
                   backend="local", progress=False)
    library = resolve_library(tmp_path / "fp")
    with pytest.raises(SpecMismatchError, match=r"n_bits.*model uses .*2048.*library .*1024"):
        check_library_spec(library, FingerprintSpec(n_bits=2048))
    check_library_spec(library, FingerprintSpec(n_bits=1024))  # same spec: fine
    check_library_spec(resolve_library(smiles_csv), FingerprintSpec(n_bits=2048))  # raw: featurized to fit
    with pytest.raises(InputDataError, match="not a fingerprint dataset"):
        (tmp_path / "empty").mkdir()
        resolve_library(tmp_path / "empty")


def test_featurize_stage_is_the_training_featurization(smiles_csv: Path) -> None:
    spec = FingerprintSpec(n_bits=1024)
    batch = next(LibrarySource(smiles_csv, tasks=None).iter_batches())
    screened = featurize_block(batch, spec=spec, kind="smiles")
    trained = featurize_batch(batch, spec=spec, tasks=[], kind="smiles", with_scaffold=False)
    accepted = screened["reason"].is_null().to_numpy(zero_copy_only=False)
    assert accepted.sum() == 200 and screened.num_rows == 202
    assert screened["fp"].equals(trained["fp"])
    # Scores carry the library's own SMILES, not canonical ones (a third of the cost)
    library_smiles = [text.strip() for text in batch["raw"].to_pylist()[:200]]
    assert screened["smiles"].to_pylist()[:200] == library_smiles
    assert library_smiles != trained["smiles"].to_pylist()[:200]
    # raw text travels on only for rejects (the only file that holds it)
    assert screened["raw"].is_null().to_numpy(zero_copy_only=False).tolist() == accepted.tolist()
    assert screened[FEATURIZE_SECONDS].to_numpy().sum() > 0


def test_sdf_records_are_screened_with_canonical_smiles(tmp_path: Path, nci_smiles: list[str]) -> None:
    from rdkit import Chem

    path = tmp_path / "library.sdf"
    with Chem.SDWriter(str(path)) as writer:
        for text in nci_smiles[:30]:
            writer.write(Chem.MolFromSmiles(text))
    spec = FingerprintSpec(n_bits=1024)
    batch = next(LibrarySource(path, tasks=None).iter_batches())
    screened = featurize_block(batch, spec=spec, kind="molblock")
    trained = featurize_batch(batch, spec=spec, tasks=[], kind="molblock", with_scaffold=False)
    assert screened.num_rows == 30 and screened["reason"].null_count == 30
    assert screened["fp"].equals(trained["fp"]) and screened["smiles"].equals(trained["smiles"])
    assert screened["smiles"].to_pylist() == [Chem.MolToSmiles(Chem.MolFromSmiles(text))
                                              for text in nci_smiles[:30]]


def test_options_are_checked_before_any_work(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="top-k"):
        ScreeningConfig("models:/m@champion", tmp_path, tmp_path / "out", top_k=0)
    with pytest.raises(UserError, match="threshold"):
        ScreeningConfig("models:/m@champion", tmp_path, tmp_path / "out", threshold=1.5)
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "notes.txt").write_text("someone's work")
    with pytest.raises(UserError, match="is not empty"):
        check_out_dir(tmp_path / "taken", {}, overwrite=True)


def test_raw_scores_are_a_flag_of_their_own_screening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """--raw-scores reaches the config and changes the screening's identity,
    so a calibrated screening's output is never taken for a raw one."""
    from pipelines.cli import build_parser
    from pipelines.jobs import screen
    from pipelines.screening.run_screen import screening_identity

    seen: list[ScreeningConfig] = []
    monkeypatch.setattr("pipelines.screening.screen_library", seen.append)
    monkeypatch.setattr(screen, "format_result", lambda result: "")
    argv = ["screen", "--model", "models:/m@champion", "--library", str(tmp_path), "--out", str(tmp_path / "o")]
    for extra in ([], ["--raw-scores"]):
        args = build_parser().parse_args([*argv, *extra])
        assert args.run(args) == 0
    calibrated, raw = seen
    assert not calibrated.raw_scores and raw.raw_scores
    identities = [screening_identity(config, "sha", {"name": "lib"}, ["A"]) for config in seen]
    assert identities[0] != identities[1]
    assert {key for key in identities[0] if identities[0][key] != identities[1][key]} == {"raw_scores"}
    # The identity is what a finished output folder is matched against.
    staged = StagedOutput(tmp_path / "done", identities[0])
    staged.commit({"identity": identities[0], "result": {}})
    assert check_out_dir(tmp_path / "done", identities[0], overwrite=False) is not None
    with pytest.raises(UserError, match="another model, library or"):
        check_out_dir(tmp_path / "done", identities[1], overwrite=False)
