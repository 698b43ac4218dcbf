"""The scoring model in MLflow: logged as a SMILES-in pyfunc, registered
with an alias, loaded back by any MLflow client with the same predictions
as the in-memory model; bad SMILES give no score and a reason, never a
crash; served over HTTP, the response is strict JSON. A bundle with a
calibration scores calibrated probabilities by default and raw ones on
request; one without (saved before calibration existed) scores raw."""
from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from featurize.fingerprints import fingerprint_matrix
from featurize.spec import FingerprintSpec
from featurize.standardize import standardize_smiles
from models.config import ModelConfig
from models.factory import build_model
from pipelines.serving.applicability_domain import (
    DOMAIN_COLUMNS,
    IN_TRAINING_SET_COLUMN,
    NN_MOL_ID_COLUMN,
    NN_SIMILARITY_COLUMN,
    TrainingDomain,
)
from pipelines.serving.bundle import ModelBundle
from pipelines.serving.calibration import (
    CALIBRATION_FILE,
    Calibration,
    IdentityMap,
    IsotonicMap,
    PlattMap,
    TaskCalibration,
)
from pipelines.serving.pyfunc_model import ERROR_COLUMN
from pipelines.serving.scorer import Scorer

TASKS = ["PCBA-1030", "PCBA-1379", "PCBA-1452"]
SPEC = FingerprintSpec(radius=2, n_bits=128)
BAD = ["not a smiles", "", "C1CC"]
#: One map of each kind, in TASKS order.
CALIBRATION = Calibration(tasks=TASKS, maps=[
    TaskCalibration(PlattMap(a=1.0, b=-3.0), n_labels=500, n_positives=20),
    TaskCalibration(IsotonicMap(x=(0.3, 0.5, 0.7), y=(0.01, 0.05, 0.4)), n_labels=900, n_positives=150),
    TaskCalibration(IdentityMap(reason="all 40 labels inactive"), n_labels=40, n_positives=0),
])


@pytest.fixture()
def bundle() -> ModelBundle:
    model = build_model(ModelConfig(architecture="mmoeex", n_features=SPEC.n_bits, n_tasks=len(TASKS),
                                    n_experts=3, expert_hidden=(16,), tower_hidden=4, alpha=0.5, seed=7))
    with torch.no_grad():  # not the init: make sure weights really travel
        for param in model.parameters():
            param.add_(0.05 * torch.randn_like(param))
    return ModelBundle(model=model.eval(), spec=SPEC, tasks=TASKS)


def test_scorer_matches_the_model_and_reports_bad_smiles(bundle: ModelBundle,
                                                         nci_smiles: list[str]) -> None:
    scorer = Scorer(bundle, device="cpu")
    smiles = nci_smiles[:20] + BAD
    scores = scorer.score_smiles(smiles)
    probs, errors = scores.probabilities, scores.errors
    assert scores.neighbours is None  # saved without its training domain
    assert probs.shape == (len(smiles), len(TASKS)) and probs.dtype == np.float32
    assert errors[:20] == [None] * 20 and all(errors[20:])
    assert np.isnan(probs[20:]).all() and not np.isnan(probs[:20]).any()
    # Reference: featurize's own code, the model's forward, a sigmoid.
    mols = [standardize_smiles(text).mol for text in nci_smiles[:20]]
    with torch.no_grad():
        expected = torch.sigmoid(bundle.model(reference_bits(nci_smiles[:20]))).numpy()
    np.testing.assert_allclose(probs[:20], expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(scorer.score_packed(fingerprint_matrix(mols, SPEC)), probs[:20])
    with pytest.raises(ValueError, match="uint8\\[N, 16\\]"):
        scorer.score_packed(np.zeros((2, 8), np.uint8))


def test_bundle_round_trip(bundle: ModelBundle, tmp_path: Path) -> None:
    loaded = ModelBundle.load(bundle.save(tmp_path / "bundle"))
    assert loaded.spec == SPEC and loaded.tasks == TASKS and loaded.domain is None
    for key, value in bundle.model.state_dict().items():
        assert torch.equal(value, loaded.model.state_dict()[key]), key


def with_domain(bundle: ModelBundle, smiles: list[str]) -> ModelBundle:
    """``bundle`` carrying the training domain of ``smiles`` (ids train-0 ...)."""
    mols = [standardize_smiles(text).mol for text in smiles]
    fingerprints = fingerprint_matrix(mols, SPEC)
    domain = TrainingDomain.build(fingerprints, [f"train-{i}" for i in range(len(mols))], n_bits=SPEC.n_bits)
    return dataclasses.replace(bundle, domain=domain)


def test_scores_carry_the_nearest_training_molecule(bundle: ModelBundle, nci_smiles: list[str],
                                                    tmp_path: Path) -> None:
    train = nci_smiles[:40]
    loaded = ModelBundle.load(with_domain(bundle, train).save(tmp_path / "bundle"))
    assert loaded.domain is not None and loaded.domain.rows == 40
    smiles = [train[3], *nci_smiles[200:205], *BAD]
    scores = Scorer(loaded, device="cpu").score_smiles(smiles)
    found = scores.neighbours
    assert found.similarity[0] == 1.0 and found.in_training_set[0]
    assert found.mol_id[0] == "train-3" or np.array_equal(  # or a molecule with the same bits
        *fingerprint_matrix([standardize_smiles(s).mol for s in (train[3], train[int(found.mol_id[0][6:])])], SPEC))
    assert np.all((found.similarity[1:6] >= 0) & (found.similarity[1:6] <= 1))
    assert np.isnan(found.similarity[6:]).all() and found.mol_id[6:] == [None] * len(BAD)
    with pytest.raises(ValueError, match="training domain has 256-bit"):
        ModelBundle(model=bundle.model, spec=SPEC, tasks=TASKS, domain=TrainingDomain.build(
            np.zeros((2, 32), np.uint8), ["a", "b"], n_bits=256))
def test_bundles_with_and_without_calibration_load_and_score(bundle: ModelBundle, tmp_path: Path,
                                                            nci_smiles: list[str]) -> None:
    smiles = nci_smiles[:40] + BAD
    plain_dir = bundle.save(tmp_path / "plain")
    assert not (plain_dir / CALIBRATION_FILE).exists()
    assert ModelBundle.load(plain_dir).calibration is None
    plain = Scorer.from_bundle(plain_dir, "cpu").score_smiles(smiles)
    raw, errors = plain.probabilities, plain.errors
    calibrated_dir = dataclasses.replace(bundle, calibration=CALIBRATION).save(tmp_path / "calibrated")
    assert ModelBundle.load(calibrated_dir).calibration == CALIBRATION

    scorer = Scorer.from_bundle(calibrated_dir, "cpu")
    assert scorer.calibrates() and not scorer.calibrates(raw_scores=True)
    scored = scorer.score_smiles(smiles)
    calibrated, calibrated_errors = scored.probabilities, scored.errors
    assert calibrated_errors == errors and np.isnan(calibrated[40:]).all()
    ok = raw[:40].astype(np.float64)
    np.testing.assert_allclose(calibrated[:40, 0], 1 / (1 + (1 - ok[:, 0]) / ok[:, 0] * np.exp(3.0)),
                               rtol=1e-5)
    np.testing.assert_allclose(calibrated[:40, 1], np.interp(ok[:, 1], (0.3, 0.5, 0.7), (0.01, 0.05, 0.4)),
                               rtol=1e-5)
    np.testing.assert_array_equal(calibrated[:40, 2], raw[:40, 2])
    assert not np.allclose(calibrated[:40, :2], raw[:40, :2])
    # Raw scores stay available, per call or for the whole scorer.
    np.testing.assert_array_equal(scorer.score_smiles(smiles, raw_scores=True).probabilities, raw)
    raw_scorer = Scorer.from_bundle(calibrated_dir, "cpu", raw_scores=True)
    fp, _ = raw_scorer.featurize_smiles(smiles)
    np.testing.assert_array_equal(raw_scorer.score_packed(fp), raw[:40])
    np.testing.assert_array_equal(raw_scorer.score_packed(fp, raw_scores=False), calibrated[:40])
    with pytest.raises(ValueError, match="calibration's tasks"):
        dataclasses.replace(bundle, calibration=dataclasses.replace(CALIBRATION, tasks=TASKS[::-1]))


def test_the_pyfunc_serves_calibrated_scores_and_raw_ones_on_request(
        bundle: ModelBundle, mlflow_uri: str, nci_smiles: list[str]) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from pipelines.platform.tracking import ensure_experiment
    from pipelines.serving.registry import log_scoring_model

    calibrated_bundle = dataclasses.replace(bundle, calibration=CALIBRATION)
    run_id = MlflowClient(tracking_uri=mlflow_uri).create_run(
        ensure_experiment(mlflow_uri, "tests")).info.run_id
    pyfunc = mlflow.pyfunc.load_model(log_scoring_model(mlflow_uri, run_id, calibrated_bundle))
    assert [param.name for param in pyfunc.metadata.get_params_schema().params] == ["raw_scores", "uncertainty"]
    smiles = nci_smiles[:25] + BAD
    scorer = Scorer(calibrated_bundle, device="cpu")
    frame = pyfunc.predict(pd.DataFrame({"smiles": smiles}))
    raw_frame = pyfunc.predict(pd.DataFrame({"smiles": smiles}), params={"raw_scores": True})
    np.testing.assert_array_equal(frame[TASKS][:25].to_numpy(np.float32),
                                  scorer.score_smiles(smiles).probabilities[:25])
    np.testing.assert_array_equal(raw_frame[TASKS][:25].to_numpy(np.float32),
                                  scorer.score_smiles(smiles, raw_scores=True).probabilities[:25])
    assert raw_frame[ERROR_COLUMN].notna().sum() == len(BAD)
    # Numbers for Python: a float column per task, a bad row's scores missing.
    assert {str(frame[task].dtype) for task in TASKS} == {"Float32"}
    assert frame[TASKS].iloc[25:].isna().all().all() and frame[TASKS].iloc[:25].notna().all().all()
    assert frame[TASKS[0]].nlargest(3).index.max() < 25


@pytest.mark.slow
def test_registry_round_trip_via_alias_and_mlflow_cli(bundle: ModelBundle, mlflow_uri: str,
                                                      nci_smiles: list[str], tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from pipelines.platform.tracking import ensure_experiment, log_metrics, log_params
    from pipelines.screening.model import fetch_model
    from pipelines.serving.pyfunc_model import load_scorer
    from pipelines.serving.registry import get_alias_version, log_scoring_model, register_model

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = client.create_run(ensure_experiment(mlflow_uri, "tests"),
                               tags={"git_commit": "abc123"}).info.run_id
    log_params(mlflow_uri, run_id, {"data.metadata_hash": "feedbeef", "data.rows": 600})
    log_metrics(mlflow_uri, run_id, {"test_mean_ap": 0.4321})
    # An explicit tracking URI wins over the process's default store.
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    bundle = with_domain(bundle, nci_smiles[:100])
    log_scoring_model(mlflow_uri, run_id, bundle)

    assert get_alias_version("pcba-test", "champion", tracking_uri=mlflow_uri) is None
    version = register_model(run_id, "pcba-test", alias="champion", tracking_uri=mlflow_uri)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)
    champion = get_alias_version("pcba-test", "champion", tracking_uri=mlflow_uri)
    assert int(champion.version) == version == 1 and champion.run_id == run_id
    assert champion.tags["data.metadata_hash"] == "feedbeef"
    assert champion.tags["test_mean_ap"] == "0.4321" and champion.tags["git_commit"] == "abc123"
    assert get_alias_version("pcba-test", "staging", tracking_uri=mlflow_uri) is None

    smiles = nci_smiles[90:130] + BAD  # ten training molecules, thirty others, bad rows
    expected_scores = Scorer(bundle, device="cpu").score_smiles(smiles)
    expected, expected_errors = expected_scores.probabilities, expected_scores.errors
    pyfunc = mlflow.pyfunc.load_model("models:/pcba-test@champion")
    frame = pyfunc.predict(pd.DataFrame({"smiles": smiles}))
    assert list(frame.columns) == [*TASKS, *DOMAIN_COLUMNS, ERROR_COLUMN]
    np.testing.assert_array_equal(frame[TASKS].to_numpy(np.float32), expected)
    assert [None if pd.isna(error) else error for error in frame[ERROR_COLUMN]] == expected_errors
    assert frame[NN_SIMILARITY_COLUMN].iloc[:10].tolist() == [1.0] * 10
    assert frame[IN_TRAINING_SET_COLUMN].iloc[:10].tolist() == [True] * 10
    found_ids = expected_scores.neighbours.mol_id
    assert frame[NN_MOL_ID_COLUMN].iloc[:-len(BAD)].tolist() == found_ids[:-len(BAD)]
    assert frame[NN_MOL_ID_COLUMN].iloc[-len(BAD):].isna().all() and found_ids[-len(BAD):] == [None] * len(BAD)
    assert frame[NN_SIMILARITY_COLUMN].iloc[-len(BAD):].isna().all()
    scorer = load_scorer("models:/pcba-test@champion", device="cpu")
    assert scorer.tasks == TASKS and scorer.spec == SPEC
    # Screening finds the model through its --tracking-uri alone, whatever the
    # process's default store (MLflow resolves models:/ with the global URI).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'elsewhere.db'}")
    fetched = fetch_model("models:/pcba-test@champion", mlflow_uri)
    assert fetched.tasks == TASKS and fetched.spec == SPEC
    assert os.environ["MLFLOW_TRACKING_URI"].endswith("elsewhere.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_uri)

    # Any MLflow client, no code of ours on its side: the mlflow CLI.
    input_csv = tmp_path / "smiles.csv"
    pd.DataFrame({"smiles": smiles}).to_csv(input_csv, index=False)
    output = tmp_path / "predictions.json"
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri}
    subprocess.run([str(Path(sys.executable).with_name("mlflow")), "models", "predict",
                    "-m", "models:/pcba-test@champion", "-i", str(input_csv), "-t", "csv",
                    "-o", str(output), "--env-manager", "local"],
                   check=True, env=env, cwd=tmp_path, timeout=300, capture_output=True)
    predictions = pd.read_json(output, orient="split") if output.read_text().startswith('{"columns"') \
        else pd.DataFrame(pd.read_json(output)["predictions"].tolist())
    np.testing.assert_allclose(predictions[TASKS].to_numpy(np.float32), expected, rtol=1e-6)
    assert predictions[ERROR_COLUMN].notna().sum() == len(BAD)


def test_a_model_saved_by_the_earlier_code_layout_still_loads_and_scores(tmp_path: Path) -> None:
    """tests/data holds a pyfunc logged by commit 2355ed5, whose entry file
    imports ``pipelines.pyfunc_model`` (before serving/ existed), with the
    scores that code gave. This process has imported today's ``pipelines``,
    so the old import path must resolve in it."""
    import json
    import tarfile

    import mlflow.pyfunc

    from pipelines.serving.pyfunc_model import load_scorer

    data = Path(__file__).with_name("data")
    with tarfile.open(data / "legacy_pyfunc_model.tar.gz") as archive:
        archive.extractall(tmp_path, filter="data")
    model_dir = tmp_path / "pyfunc_model"
    assert "from pipelines.pyfunc_model import" in (model_dir / "pyfunc_entry.py").read_text()
    expected = json.loads((data / "legacy_pyfunc_scores.json").read_text())
    frame = mlflow.pyfunc.load_model(str(model_dir)).predict(pd.DataFrame({"smiles": expected["smiles"]}))
    scores = np.array([[np.nan if value is None else value for value in row] for row in expected["scores"]])
    np.testing.assert_allclose(frame[expected["tasks"]].to_numpy(np.float64), scores, rtol=1e-6)
    assert frame[ERROR_COLUMN].notna().tolist() == [error is not None for error in expected["errors"]]
    assert load_scorer(str(model_dir), device="cpu").tasks == expected["tasks"]


def test_a_model_carries_exactly_the_code_scoring_imports(tmp_path: Path, nci_smiles: list[str]) -> None:
    """The code logged with a model is the modules its scoring imports,
    nothing more (no synthetic data, jobs, training or Ray code) and nothing
    less: a process with only that copy on its path loads a saved bundle,
    scores SMILES, and has then imported every bundled module and no other
    of ours."""
    from pipelines.serving.code_bundle import bundle_code

    code = tmp_path / "code"
    roots = bundle_code(Path(__file__).resolve().parents[1], code)
    assert [root.name for root in roots] == ["featurize", "models", "pipelines"]
    assert not (code / "featurize" / "synthetic").exists() and not (code / "pipelines" / "training").exists()
    bundled = sorted(".".join(path.relative_to(code).with_suffix("").parts).removesuffix(".__init__")
                     for path in code.rglob("*.py"))
    model = build_model(ModelConfig(architecture="mmoeex", n_features=SPEC.n_bits, n_tasks=len(TASKS),
                                    n_experts=2, expert_hidden=(8,), alpha=0.5))
    bundle_dir = ModelBundle(model=model.eval(), spec=SPEC, tasks=TASKS).save(tmp_path / "bundle")
    # MLflow copies each code path into the model's code/ folder and puts
    # that folder first on sys.path at load time; -I keeps this checkout off it.
    probe = ("import sys; sys.path.insert(0, sys.argv[1]); import pipelines.serving.pyfunc_entry; "
             "from pipelines.serving.scorer import Scorer; "
             "scores = Scorer.from_bundle(sys.argv[2], 'cpu').score_smiles(sys.argv[3:]); "
             "assert scores.probabilities.shape == (len(sys.argv) - 3, 3), scores.probabilities.shape; "
             "ours = sorted(name for name, module in sys.modules.items() "
             "if name.split('.')[0] in ('featurize', 'models', 'pipelines', 'tuning')); "
             "assert all(sys.modules[name].__file__.startswith(sys.argv[1]) for name in ours); "
             "print(' '.join(ours))")
    imported = subprocess.run([sys.executable, "-I", "-c", probe, str(code), str(bundle_dir), *nci_smiles[:5]],
                              cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120).stdout.split()
    assert imported == bundled


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _strict_json(text: str):
    """json.loads that refuses NaN and Infinity, as JSON.parse does."""
    def refuse(constant: str):
        raise ValueError(f"not JSON: {constant}")

    return json.loads(text, parse_constant=refuse)


@contextlib.contextmanager
def _served(model_uri: str, mlflow_uri: str, cwd: Path) -> Iterator[str]:
    """`mlflow models serve` of ``model_uri`` on a loopback port, up and
    answering /ping; yields its base URL and stops it (by our own id) after."""
    import signal
    import time
    import urllib.request

    port = _free_port()
    bin_dir = str(Path(sys.executable).parent)  # MLflow starts uvicorn by name
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_uri, "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    server = subprocess.Popen([str(Path(bin_dir) / "mlflow"), "models", "serve", "-m", model_uri,
                               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)],
                              env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                              start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                with urllib.request.urlopen(f"{base}/ping", timeout=5) as response:
                    if response.status == 200:
                        break
            except OSError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("mlflow models serve did not come up") from None
                time.sleep(1)
        yield base
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and the workers it started, by our id
        server.wait(timeout=60)


def _invoke(base: str, smiles: list[str]) -> list[dict]:
    """POST ``smiles`` to /invocations; the rows of the strictly parsed answer."""
    import urllib.request

    body = json.dumps({"dataframe_split": {"columns": ["smiles"], "data": [[s] for s in smiles]}})
    request = urllib.request.Request(f"{base}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=300) as response:
        assert response.status == 200
        return _strict_json(response.read().decode())["predictions"]


@pytest.mark.slow
def test_mlflow_models_serve_answers_strict_json_and_python_gets_numbers(
        bundle: ModelBundle, mlflow_uri: str, nci_smiles: list[str], tmp_path: Path) -> None:
    """One logged model, two clients. In Python (``mlflow.pyfunc``) the
    scores are numbers a notebook sorts (``nlargest``), bad rows NA; over
    HTTP (`mlflow models serve` on a loopback port) good and bad rows, and
    10,000 SMILES in one request, come back as strict JSON with the same
    scores (null for a bad row, an error)."""
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from pipelines.platform.tracking import ensure_experiment
    from pipelines.serving.registry import log_scoring_model

    client = MlflowClient(tracking_uri=mlflow_uri)
    run_id = client.create_run(ensure_experiment(mlflow_uri, "tests")).info.run_id
    model_uri = log_scoring_model(mlflow_uri, run_id, with_domain(bundle, nci_smiles[:5]))
    smiles = nci_smiles[:5] + BAD + nci_smiles[5:40]
    good = [row for row in range(len(smiles)) if not 5 <= row < 5 + len(BAD)]

    frame = mlflow.pyfunc.load_model(model_uri).predict(pd.DataFrame({"smiles": smiles}))
    assert frame.select_dtypes("number").columns.tolist() == [*TASKS, NN_SIMILARITY_COLUMN]
    assert {str(frame[column].dtype) for column in [*TASKS, NN_SIMILARITY_COLUMN]} == {"Float32"}
    assert (frame[IN_TRAINING_SET_COLUMN].dtype, frame[NN_MOL_ID_COLUMN].dtype,
            frame[ERROR_COLUMN].dtype) == ("boolean", "string", "string")
    expected = Scorer(with_domain(bundle, nci_smiles[:5]), device="cpu").score_smiles(smiles).probabilities
    top = frame[TASKS[1]].nlargest(10)  # the first thing a chemist's notebook does
    assert top.index.isin(good).all()
    np.testing.assert_array_equal(top.to_numpy(np.float32), np.sort(expected[good, 1])[::-1][:10])
    assert frame.loc[~frame.index.isin(good), [*TASKS, *DOMAIN_COLUMNS]].isna().all().all()
    assert frame[ERROR_COLUMN].notna().tolist() == [row not in good for row in range(len(smiles))]

    with _served(model_uri, mlflow_uri, tmp_path) as base:
        rows = _invoke(base, smiles)
        assert [row[ERROR_COLUMN] is None for row in rows] == [row in good for row in range(len(smiles))]
        served = np.array([[np.nan if row[task] is None else row[task] for task in TASKS] for row in rows],
                          np.float32)
        np.testing.assert_array_equal(served, frame[TASKS].to_numpy(np.float32))  # NaN where NA
        assert all(0 < rows[row][task] < 1 for row in good for task in TASKS)
        assert [row[IN_TRAINING_SET_COLUMN] for row in rows[:8]] == [True] * 5 + [None] * len(BAD)
        assert [row[NN_SIMILARITY_COLUMN] for row in rows[5:8]] == [None] * len(BAD)
        many = (nci_smiles * 3)[:9_990] + BAD * 4
        big = _invoke(base, many[:10_000])
        assert len(big) == 10_000 and sum(row[ERROR_COLUMN] is not None for row in big) >= len(BAD)


#: The load test: clients at once, requests each, SMILES per request.
CLIENTS, REQUESTS, BATCH = 8, 10, 100


@pytest.mark.slow
def test_the_served_model_under_concurrent_load(bundle: ModelBundle, mlflow_uri: str,
                                               nci_smiles: list[str], tmp_path: Path) -> None:
    """8 clients x 10 requests of 100 SMILES, bad rows mixed in at seeded
    places: no request fails, every answer parses strictly, every row comes
    back once, in order, scored or with its error, with the scores the
    model gives that SMILES alone."""
    from concurrent.futures import ThreadPoolExecutor

    from mlflow import MlflowClient

    from pipelines.platform.tracking import ensure_experiment
    from pipelines.serving.registry import log_scoring_model

    run_id = MlflowClient(tracking_uri=mlflow_uri).create_run(ensure_experiment(mlflow_uri, "tests")).info.run_id
    model_uri = log_scoring_model(mlflow_uri, run_id, bundle)
    rng = np.random.default_rng(0)
    requests = []
    for _ in range(CLIENTS * REQUESTS):
        batch = list(rng.choice(nci_smiles, BATCH))
        for place in rng.choice(BATCH, 3, replace=False):
            batch[place] = BAD[place % len(BAD)]
        requests.append(batch)
    everything = sorted({text for batch in requests for text in batch})
    alone = Scorer(bundle, device="cpu").score_smiles(everything)
    reference = dict(zip(everything, zip(alone.probabilities, alone.errors)))
    assert sum(error is not None for error in alone.errors) > len(BAD)  # NCI has a few RDKit refuses

    with _served(model_uri, mlflow_uri, tmp_path) as base:
        def client_session(client: int) -> list[list[dict]]:
            return [_invoke(base, requests[client * REQUESTS + n]) for n in range(REQUESTS)]

        with ThreadPoolExecutor(CLIENTS) as pool:
            answers = [answer for session in pool.map(client_session, range(CLIENTS)) for answer in session]

    assert len(answers) == len(requests)
    for batch, rows in zip(requests, answers):
        assert len(rows) == len(batch)
        for text, row in zip(batch, rows):
            probabilities, error = reference[text]
            assert row[ERROR_COLUMN] == error
            if error is None:
                np.testing.assert_allclose([row[task] for task in TASKS], probabilities, rtol=1e-6)
            else:
                assert all(row[task] is None for task in TASKS)


@pytest.fixture()
def ensemble_bundle() -> ModelBundle:
    """Three members of the default shape family (stacked forward), each
    with its own perturbed weights, and a calibration of their mean."""
    from models.ensemble import Ensemble, member_config

    config = ModelConfig(architecture="mmoeex", n_features=SPEC.n_bits, n_tasks=len(TASKS), n_experts=3,
                         expert_hidden=(16,), tower_hidden=0, alpha=0.5, seed=7)
    members = [build_model(member_config(config, index)) for index in range(3)]
    with torch.no_grad():
        for member in members:
            for param in member.parameters():
                param.add_(0.3 * torch.randn_like(param))
    return ModelBundle(model=Ensemble([member.eval() for member in members]), spec=SPEC, tasks=TASKS,
                       calibration=CALIBRATION)


def test_an_ensemble_scores_its_members_mean_and_serves_their_spread(
        ensemble_bundle: ModelBundle, mlflow_uri: str, nci_smiles: list[str], tmp_path: Path) -> None:
    import mlflow.pyfunc
    from mlflow import MlflowClient

    from pipelines.platform.tracking import ensure_experiment
    from pipelines.serving.bundle import ENSEMBLE_FILE, spread_column
    from pipelines.serving.registry import log_scoring_model

    smiles = nci_smiles[:30] + BAD
    bits = reference_bits(nci_smiles[:30])
    members = [ensemble_bundle.model.member(index) for index in range(3)]
    with torch.no_grad():
        member_probs = np.stack([torch.sigmoid(member(bits)).numpy() for member in members])
    raw_mean, raw_spread = member_probs.mean(axis=0), member_probs.std(axis=0)
    # The served spread is in the units of the served score: the members'
    # probabilities through the same calibration maps.
    calibrated_members = np.stack([CALIBRATION.apply(probs) for probs in member_probs])
    spread = calibrated_members.std(axis=0)

    # The bundle on disk keeps the members (one stacked file), the scorer their mean and spread.
    directory = ensemble_bundle.save(tmp_path / "ensemble")
    assert json.loads((directory / ENSEMBLE_FILE).read_text()) == {"members": 3}
    loaded = ModelBundle.load(directory)
    assert loaded.n_members == 3
    scorer = Scorer(loaded, device="cpu")
    scores = scorer.score_smiles(smiles, raw_scores=True, uncertainty=True)
    np.testing.assert_allclose(scores.probabilities[:30], raw_mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.spread[:30], raw_spread, rtol=1e-4, atol=1e-6)
    assert np.isnan(scores.spread[30:]).all() and (raw_spread > 1e-3).mean() > 0.5
    calibrated = scorer.score_smiles(smiles, uncertainty=True)
    np.testing.assert_allclose(calibrated.spread[:30], spread, rtol=1e-4, atol=1e-6)
    assert not np.allclose(spread[:, :2], raw_spread[:, :2])  # the Platt and isotonic maps move it
    np.testing.assert_allclose(scorer.score_smiles(smiles).probabilities[:30],
                               CALIBRATION.apply(raw_mean), rtol=1e-5, atol=1e-6)

    # Through MLflow: the same numbers, spread columns only when asked.
    run_id = MlflowClient(tracking_uri=mlflow_uri).create_run(
        ensure_experiment(mlflow_uri, "tests")).info.run_id
    pyfunc = mlflow.pyfunc.load_model(log_scoring_model(mlflow_uri, run_id, ensemble_bundle))
    plain = pyfunc.predict(pd.DataFrame({"smiles": smiles}))
    assert list(plain.columns) == [*TASKS, ERROR_COLUMN]
    frame = pyfunc.predict(pd.DataFrame({"smiles": smiles}), params={"uncertainty": True})
    spread_columns = [spread_column(task) for task in TASKS]
    assert list(frame.columns) == [*TASKS, *spread_columns, ERROR_COLUMN]
    assert spread_columns == ["PCBA-1030::spread", "PCBA-1379::spread", "PCBA-1452::spread"]
    assert all(str(frame[column].dtype) == "Float32" for column in spread_columns)
    np.testing.assert_allclose(frame[spread_columns][:30].to_numpy(np.float32), spread, rtol=1e-4, atol=1e-6)
    assert frame[spread_columns][30:].isna().all().all()
    pd.testing.assert_frame_equal(frame[TASKS], plain[TASKS])


def test_one_network_has_no_spread_to_serve(bundle: ModelBundle, nci_smiles: list[str]) -> None:
    scorer = Scorer(bundle, device="cpu")
    with pytest.raises(ValueError, match="one network"):
        scorer.score_smiles(nci_smiles[:3], uncertainty=True)
    with pytest.raises(ValueError, match="may not contain '::'"):
        dataclasses.replace(bundle, tasks=["a::b", *TASKS[1:]])


def reference_bits(smiles: list[str]) -> torch.Tensor:
    """Unpacked fingerprints ``float[N, n_bits]`` of valid SMILES, with
    featurize's own code: the reference input of the models."""
    mols = [standardize_smiles(text).mol for text in smiles]
    return torch.from_numpy(np.unpackbits(fingerprint_matrix(mols, SPEC), axis=1, bitorder="little")).float()
