"""Screening for real: a model registered in a real MLflow registry, pulled
back by name@alias, scoring on the shared local Ray through Ray Data.
Scores must equal the registered pyfunc's own predictions; every library row
must land in the scores or the rejects; a re-run is a no-op. Hits carry
structural alerts, their pictures land in the output and in the model's
training run."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from featurize.pipeline import featurize_file
from featurize.spec import FingerprintSpec
from pipelines.screening.alerts import structural_alerts
from pipelines.screening.scoring import in_similarity_sample
from pipelines.serving.applicability_domain import DOMAIN_COLUMNS

pytestmark = [pytest.mark.slow, pytest.mark.ray]

SPEC = FingerprintSpec(radius=2, n_bits=1024)
TASKS = [f"PCBA-{aid}" for aid in (686978, 686979, 720504, 1030)]
MODEL = "models:/pcba-screen-test@champion"
ENSEMBLE = "models:/pcba-screen-test@ensemble"


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory, nci_smiles: list[str]) -> Iterator[str]:
    """A real SQLite MLflow registry with a small (untrained) MMoEEx as champion,
    carrying an HNSW training domain of NCI molecules 1000-1599 (the library's
    rows 1000-1499 are training molecules), and a deep ensemble of 3 such
    networks (perturbed, so they disagree) as @ensemble, without a domain."""
    import torch

    from featurize.fingerprints import fingerprint_matrix
    from featurize.standardize import standardize_smiles
    from models.config import ModelConfig
    from models.ensemble import Ensemble, member_config
    from models.factory import build_model
    from pipelines.platform import tracking
    from pipelines.serving.applicability_domain import TrainingDomain
    from pipelines.serving.bundle import ModelBundle
    from pipelines.serving.registry import log_scoring_model, register_model

    root = tmp_path_factory.mktemp("registry")
    uri = f"sqlite:///{root / 'mlflow.db'}"
    with pytest.MonkeyPatch.context() as patch:
        # mlflow's SQL registry store resolves the logged model through the
        # process-wide tracking URI, so it must name the same store.
        patch.setenv("MLFLOW_TRACKING_URI", uri)
        config = ModelConfig(n_features=SPEC.n_bits, n_tasks=len(TASKS), n_experts=4,
                             expert_hidden=(32,), tower_hidden=8, seed=3)
        model = build_model(config).eval()
        train = fingerprint_matrix([standardize_smiles(s).mol for s in nci_smiles[1000:1600]], SPEC)
        domain = TrainingDomain.build(train, [f"train-{i}" for i in range(len(train))],
                                      n_bits=SPEC.n_bits, exact_max_rows=0)
        run_id, _ = tracking.start_run(uri, "screen-tests", "untrained-champion")
        log_scoring_model(uri, run_id, ModelBundle(model, SPEC, TASKS, domain=domain))
        tracking.finish_run(uri, run_id)
        register_model(run_id, "pcba-screen-test", alias="champion", tracking_uri=uri)
        members = [build_model(member_config(config, index)) for index in range(3)]
        with torch.no_grad():
            for member in members:
                for param in member.parameters():
                    param.add_(0.2 * torch.randn_like(param))
        run_id, _ = tracking.start_run(uri, "screen-tests", "untrained-ensemble")
        log_scoring_model(uri, run_id, ModelBundle(Ensemble([member.eval() for member in members]), SPEC, TASKS))
        tracking.finish_run(uri, run_id)
        register_model(run_id, "pcba-screen-test", alias="ensemble", tracking_uri=uri)
        yield uri


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory, nci_smiles: list[str]) -> Path:
    path = tmp_path_factory.mktemp("library") / "library.csv"
    bad = ["not a smiles", "", "C1CC", "[Na+].[Cl-]"]  # the salt survives as its largest fragment
    smiles = nci_smiles[:1500] + bad
    pd.DataFrame({"smiles": smiles, "name": [f"NCI-{i}" for i in range(len(smiles))]}).to_csv(path, index=False)
    return path


def _screen(library: Path, out: Path, uri: str, **options):
    from pipelines.screening import Resources, ScreeningConfig, screen_library

    return screen_library(ScreeningConfig(
        options.pop("model", MODEL), library, out, tracking_uri=uri, top_k=7, id_col=options.pop("id_col", "name"),
        resources=Resources(num_actors=2, batch_size=500), progress=False, **options))


def test_screen_scores_every_row_like_the_registered_pyfunc(
        ray_local: None, registry: str, library: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc

    result = _screen(library, tmp_path / "out", registry)

    frame = pd.read_csv(library, keep_default_na=False)
    scores = pd.read_parquet(tmp_path / "out" / "scores").sort_values("row")
    rejects = pd.read_parquet(tmp_path / "out" / "rejects.parquet")
    assert result.library_rows == len(frame) == result.scored + result.rejected
    assert sorted([*scores["row"], *rejects["row"]]) == list(range(len(frame)))
    assert set(rejects["raw"]) == {"not a smiles", "", "C1CC"}
    assert rejects["reason"].str.len().min() > 0
    assert scores["mol_id"].tolist() == frame["name"][scores["row"]].tolist()
    assert scores["smiles"].tolist() == frame["smiles"][scores["row"]].tolist()

    # The reference: the registered model through plain MLflow, SMILES in.
    pyfunc = mlflow.pyfunc.load_model(MODEL)  # MLFLOW_TRACKING_URI is the registry's
    expected = pyfunc.predict(frame.loc[scores["row"], ["smiles"]].reset_index(drop=True))
    np.testing.assert_allclose(scores[TASKS].to_numpy(), expected[TASKS].to_numpy(np.float32), atol=1e-6)
    # --domain hits (the default): in_training_set on every row, the nearest
    # training molecule on the seeded sample only, as the pyfunc finds it.
    assert scores["in_training_set"].tolist() == expected["in_training_set"].tolist()
    sampled = in_similarity_sample(scores["row"].to_numpy())
    assert scores["nn_similarity"].notna().tolist() == sampled.tolist() and 50 < sampled.sum() < 150
    np.testing.assert_array_equal(scores["nn_similarity"][sampled],
                                  expected["nn_similarity"][sampled].astype(np.float32))
    assert scores["nn_mol_id"][sampled].tolist() == expected["nn_mol_id"][sampled].tolist()
    training = scores["row"].between(1000, 1499)
    assert scores.loc[training, "in_training_set"].all()
    assert result.in_training_set == int(scores["in_training_set"].sum()) >= 500
    assert "a seeded sample of 1 row in 16" in result.similarity_histogram.splitlines()[0]
    assert result.similarity_histogram.splitlines()[-1].startswith("0.9-1.0 |")

    hits = pd.read_parquet(tmp_path / "out" / "hits.parquet")
    assert len(hits) == result.hits == 7 * len(TASKS)
    for task in TASKS:
        best = scores.sort_values([task, "row"], ascending=[False, True]).head(7)
        assert hits[hits.assay == task]["row"].tolist() == best["row"].tolist()
    assert [list(names) for names in hits["alerts"]] == structural_alerts(hits["smiles"].tolist())
    assert result.hits_with_alerts == int((hits["alerts"].str.len() > 0).sum())
    # Every hit has its nearest training molecule, searched after the pass.
    by_smiles = expected.set_index(frame.loc[scores["row"], "smiles"].to_numpy())
    by_smiles = by_smiles[~by_smiles.index.duplicated()]
    np.testing.assert_array_equal(hits["nn_similarity"],
                                  by_smiles.loc[hits["smiles"], "nn_similarity"].astype(np.float32))
    assert hits["in_training_set"].tolist() == by_smiles.loc[hits["smiles"], "in_training_set"].tolist()
    multi = pd.read_parquet(tmp_path / "out" / "multi_assay_hits.parquet")
    assert {"alerts", *DOMAIN_COLUMNS} <= set(multi.columns) and multi["nn_similarity"].notna().all()
    _check_pictures(tmp_path / "out", result, ["hits.png", "similarity.png"], registry)

    again = _screen(library, tmp_path / "out", registry)
    assert again.skipped_existing and again.scored == result.scored

    # --domain all: every row searched, the same hits with the same columns.
    every = _screen(library, tmp_path / "all", registry, domain="all")
    all_scores = pd.read_parquet(tmp_path / "all" / "scores").sort_values("row")
    np.testing.assert_array_equal(all_scores["nn_similarity"], expected["nn_similarity"].astype(np.float32))
    assert all_scores["nn_mol_id"].tolist() == expected["nn_mol_id"].tolist()
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "all" / "hits.parquet"), hits)
    assert every.in_training_set == result.in_training_set
    assert "sample" not in every.similarity_histogram.splitlines()[0]


def test_an_ensembles_hits_carry_the_spread_the_pyfunc_serves(
        ray_local: None, registry: str, library: Path, tmp_path: Path) -> None:
    import mlflow.pyfunc

    from pipelines.errors import UserError
    from pipelines.serving.bundle import spread_column

    result = _screen(library, tmp_path / "out", registry, model=ENSEMBLE)
    scores = pd.read_parquet(tmp_path / "out" / "scores").sort_values("row")
    frame = pd.read_csv(library, keep_default_na=False)
    expected = mlflow.pyfunc.load_model(ENSEMBLE).predict(
        frame.loc[scores["row"], ["smiles"]].reset_index(drop=True), params={"uncertainty": True})
    np.testing.assert_allclose(scores[TASKS].to_numpy(), expected[TASKS].to_numpy(np.float32), atol=1e-6)
    assert not any("spread" in column for column in scores.columns)  # score files: one column an assay

    hits = pd.read_parquet(tmp_path / "out" / "hits.parquet")
    by_smiles = expected.set_index(frame.loc[scores["row"], "smiles"].to_numpy())
    by_smiles = by_smiles[~by_smiles.index.duplicated()]
    served = [by_smiles.loc[smiles, spread_column(assay)] for smiles, assay in zip(hits["smiles"], hits["assay"])]
    np.testing.assert_allclose(hits["spread"], np.array(served, np.float32), rtol=1e-5, atol=1e-7)
    multi = pd.read_parquet(tmp_path / "out" / "multi_assay_hits.parquet")
    assert multi["max_spread"].notna().all() and result.dropped_for_spread == 0

    limit = float(np.median(hits["spread"]))
    agreed = _screen(library, tmp_path / "agreed", registry, model=ENSEMBLE, max_spread=limit)
    kept = pd.read_parquet(tmp_path / "agreed" / "hits.parquet")
    pd.testing.assert_frame_equal(kept, hits[hits["spread"] <= limit].reset_index(drop=True))
    assert agreed.dropped_for_spread == len(hits) - len(kept) > 0
    with pytest.raises(UserError, match="needs an ensemble"):
        _screen(library, tmp_path / "single", registry, max_spread=0.05)


def _check_pictures(out: Path, result, names: list[str], registry: str) -> None:
    from PIL import Image

    from pipelines.platform.tracking import client

    assert list(result.pictures) == names
    for name in names:
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] >= 600 and image.size[1] >= 300
    mlflow_client = client(registry)
    run_id = mlflow_client.get_model_version_by_alias("pcba-screen-test", "champion").run_id
    assert result.pictures_logged_to.startswith(f"runs:/{run_id}/screenings/out-")
    folder = result.pictures_logged_to.split("/", 2)[2]
    logged = sorted(info.path for info in mlflow_client.list_artifacts(run_id, folder))
    assert logged == sorted(f"{folder}/{name}" for name in names)


def test_featurized_library_scores_the_same_and_spec_is_checked(
        ray_local: None, registry: str, library: Path, tmp_path: Path,
        capsys: pytest.CaptureFixture[str]) -> None:
    from featurize.reader import read_all
    from pipelines.cli import main
    from pipelines.serving.pyfunc_model import load_scorer

    featurize_file(library, tmp_path / "fp", spec=SPEC, id_col="name", backend="local", progress=False)
    result = _screen(tmp_path / "fp", tmp_path / "out", registry, assays=(TASKS[2], TASKS[0]),
                     exclude_alerts=True)
    assert result.rejected == 0 and result.scored == 1501
    hits = pd.read_parquet(tmp_path / "out" / "hits.parquet")
    assert len(hits) == 14 and (hits["alerts"].str.len() == 0).all()
    multi = pd.read_parquet(tmp_path / "out" / "multi_assay_hits.parquet")
    assert (multi["alerts"].str.len() == 0).all()
    assert result.excluded_for_alerts > 0  # NCI molecules: about two thirds are flagged
    _check_pictures(tmp_path / "out", result, [f"hits-{TASKS[2]}.png", f"hits-{TASKS[0]}.png",
                                               "similarity.png"], registry)
    scores = pd.read_parquet(tmp_path / "out" / "scores").set_index("mol_id")
    assert list(scores.columns) == ["row", "smiles", TASKS[2], TASKS[0], *DOMAIN_COLUMNS]
    features = read_all(tmp_path / "fp", columns=["mol_id"])
    expected = load_scorer(MODEL, device="cpu").score_packed(features.fp)[:, [2, 0]]
    np.testing.assert_allclose(scores.loc[features.mol_id, [TASKS[2], TASKS[0]]].to_numpy(),
                               expected, atol=1e-6)

    featurize_file(library, tmp_path / "fp2048", spec=FingerprintSpec(n_bits=2048), id_col="name",
                   backend="local", progress=False)
    code = main(["screen", "--model", MODEL, "--library", str(tmp_path / "fp2048"),
                 "--out", str(tmp_path / "refused"), "--tracking-uri", registry, "--no-progress"])
    assert code == 2 and not (tmp_path / "refused").exists()
    message = capsys.readouterr().err.strip().splitlines()[-1]  # after MLflow's own log lines
    assert message.startswith("error: fingerprint spec mismatch (n_bits differ)")
    assert "fp2048" in message and "re-featurize" in message


#: The killed-screen test: rows per committed part, and library rows (enough
#: for the pass to outlast the first part by several seconds on 2 CPUs).
PART_ROWS, KILL_LIBRARY_ROWS = 2_000, 40_000


def test_a_killed_screen_resumes_from_its_committed_parts(
        ray_local: None, registry: str, tmp_path: Path) -> None:
    """`python -m pipelines screen` (its own local Ray) is SIGKILLed once it
    has committed a part; the same screening run again keeps those rows,
    scores only the rest, and publishes what an uninterrupted run gives:
    the same rows once each, the same scores, rejects and hit lists."""
    import os
    import shutil
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    import processes

    from featurize.synthetic.library import generate_library

    library = tmp_path / "library.csv"
    smiles = list(generate_library(KILL_LIBRARY_ROWS, seed=5))
    smiles[::997] = ["not a smiles"] * len(smiles[::997])  # rejects in several parts
    pd.DataFrame({"smiles": smiles, "name": [f"L{i}" for i in range(len(smiles))]}).to_csv(library, index=False)
    out = tmp_path / "resumed"
    ray_tmp = Path(tempfile.mkdtemp(prefix="raytmp-", dir="/tmp"))  # the driver's own Ray, apart
    env = {**{key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"},
           "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "RAY_TMPDIR": str(ray_tmp)}
    command = [sys.executable, "-m", "pipelines", "screen", "--model", MODEL, "--library", str(library),
               "--out", str(out), "--tracking-uri", registry, "--top-k", "7", "--id-col", "name",
               "--rows-per-part", str(PART_ROWS), "--num-cpus", "2", "--no-progress"]
    started: set[processes.Process] = set()
    try:
        with open(tmp_path / "driver.log", "wb") as log:
            driver = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                                      start_new_session=True)
        deadline = time.monotonic() + 300
        while not list(tmp_path.glob(".resumed.partial-*/scores/part-*.parquet")):
            assert driver.poll() is None, (tmp_path / "driver.log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no part committed in time"
            time.sleep(0.05)
        started |= processes.session_processes(driver.pid)
        driver.send_signal(signal.SIGKILL)  # the driver, by its id; then what it started
        driver.wait()
        processes.kill(processes.wait_until_gone(started, 10))
    finally:
        processes.kill(started)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert not out.exists()

    resumed = _screen(library, out, registry, rows_per_part=PART_ROWS)
    whole = _screen(library, tmp_path / "whole", registry, rows_per_part=PART_ROWS)
    assert PART_ROWS <= resumed.resumed_rows < KILL_LIBRARY_ROWS and whole.resumed_rows == 0
    assert (resumed.library_rows, resumed.scored, resumed.rejected) == \
        (whole.library_rows, whole.scored, whole.rejected) == (KILL_LIBRARY_ROWS, whole.scored, 41)
    for name in ("scores", "rejects.parquet"):
        got = pd.read_parquet(out / name).sort_values("row", ignore_index=True)
        pd.testing.assert_frame_equal(got, pd.read_parquet(tmp_path / "whole" / name).sort_values(
            "row", ignore_index=True))
    for name in ("hits.parquet", "multi_assay_hits.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(out / name), pd.read_parquet(tmp_path / "whole" / name))
    assert not list(tmp_path.glob(".resumed.*"))  # published: no staged folder left


def test_alerts_split_into_ray_tasks_come_back_in_order(ray_local: None, nci_smiles: list[str]) -> None:
    """A batch several tasks long (MIN_CHUNK each) matches as one process does."""
    from featurize.standardize import standardize_smiles
    from pipelines.screening.alerts import MIN_CHUNK, match_in_process, match_on_ray

    canonical = [smiles for smiles in (standardize_smiles(text).smiles for text in nci_smiles[:1200])
                 if smiles][:3 * MIN_CHUNK + 7]
    assert match_on_ray(canonical) == match_in_process(canonical)
