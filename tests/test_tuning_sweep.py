"""The tune job for real: Ray Tune over the training job's TorchTrainer on the
shared local Ray (num_cpus=2), MLflow SQLite, an offline panel.

One sweep of 4 trials (3 epochs, ASHA grace 1, reduction factor 2), run one
trial at a time so ASHA's decisions do not depend on timing. Its first
driver is a subprocess killed (SIGKILL) once Tune's experiment state
records a finished trial; ``--resume`` then completes it. The finished
trial must not run again, ASHA must have stopped some trials, MLflow must
hold one parent and 4 child runs, and the best model must be registered."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import processes
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
#: Small enough for 2 shared cores: tiny experts, few tasks, 256-bit fingerprints.
#: The search and the training are seeded, so on CPU the trials and their
#: scores (hence ASHA's decisions) repeat exactly; with seed 0 two of the four
#: trials fall behind at the first rung (1 epoch) and are stopped there.
SPACE = {"n_experts": {"choice": [2, 4]}, "expert_width": {"choice": [16, 32]},
         "lr": {"choice": [1e-2, 1e-7]}, "pos_weight": {"fixed": "none"}}
STATE_TIMEOUT_S = 420


@pytest.fixture(scope="module")
def tiny_panel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from featurize.pipeline import featurize_file
    from featurize.spec import FingerprintSpec
    from featurize.synthetic.panel import write_panel_csv

    folder = tmp_path_factory.mktemp("tune_panel")
    write_panel_csv(folder / "panel.csv", 500, n_tasks=12, seed=0)
    featurize_file(folder / "panel.csv", folder / "dataset", spec=FingerprintSpec(radius=2, n_bits=256),
                   id_col="mol_id", split="scaffold", backend="local", progress=False)
    return folder / "dataset"


def _tune_args(dataset: Path, storage: Path, uri: str, space_file: Path, *, num_samples: int = 4,
               epochs: int = 3) -> list[str]:
    return ["tune", "--data", str(dataset), "--num-samples", str(num_samples), "--max-concurrent", "1",
            "--epochs", str(epochs), "--grace-period", "1", "--reduction-factor", "2",
            "--search-space", str(space_file), "--batch-size", "64", "--tower-hidden", "8",
            # the trial settings this sweep's seeded ASHA decisions were read with
            "--optimizer", "maml-mtl", "--dropout", "0.1", "--gate-lr-scale", "1",
            "--loss-normalization", "task", "--patience", "0",
            "--name", "sweep", "--storage", str(storage), "--tracking-uri", uri,
            "--register", "pcba-tune-test", "--alias", "champion", "--seed", "0"]


def _terminated_trials(experiment_dir: Path) -> set[str]:
    """Trial ids Tune's saved experiment state records as TERMINATED."""
    states = sorted(experiment_dir.glob("experiment_state-*.json"))
    if not states:
        return set()
    try:
        state = json.loads(states[-1].read_text())
    except json.JSONDecodeError:  # being rewritten
        return set()
    done = set()
    for trial_json, _ in state.get("trial_data", []):
        trial = json.loads(trial_json)
        if trial.get("status") == "TERMINATED":
            done.add(trial["trial_id"])
    return done


def _result_lines(experiment_dir: Path, trial_id: str) -> int:
    return len((experiment_dir / trial_id / "result.json").read_text().splitlines())


def _driver_env(**extra: str) -> dict[str, str]:
    """A tune driver's environment: this checkout's code, and Tune saving its
    experiment state every second, so a finished trial shows in it before the
    (fast) sweep is over and the driver is killed mid-sweep."""
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    return {**env, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1", **extra}


def _start_driver(args: list[str], cwd: Path, env: dict[str, str], log: Path) -> subprocess.Popen:
    """``python -m pipelines ARGS`` in a session of its own (see tests/processes.py)."""
    with open(log, "ab") as out:
        return subprocess.Popen([sys.executable, "-m", "pipelines", *args], cwd=cwd, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)


def _kill_once_a_trial_finished(driver: subprocess.Popen, experiment_dir: Path, log: Path) -> set[str]:
    """SIGKILL ``driver`` (that pid only) once Tune's experiment state records
    a finished trial; those trials' ids."""
    deadline = time.monotonic() + STATE_TIMEOUT_S
    try:
        while not (finished := _terminated_trials(experiment_dir)):
            assert driver.poll() is None, \
                f"the sweep driver ended before any trial finished:\n{log.read_text()[-3000:]}"
            assert time.monotonic() < deadline, "no trial finished in time"
            time.sleep(0.2)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    return finished


def test_interrupted_sweep_resumes_and_registers_the_best(
        ray_local: None, mlflow_uri: str, tiny_panel: Path, tmp_path: Path) -> None:
    import ray
    from mlflow import MlflowClient

    from pipelines.cli import main

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    storage = tmp_path / "tune"
    experiment_dir = storage / "sweep"
    args = _tune_args(tiny_panel, storage, mlflow_uri, space_file)

    # 1. A driver on the shared Ray, killed once a trial has finished.
    env = _driver_env(RAY_ADDRESS=ray.get_runtime_context().gcs_address)
    log = tmp_path / "driver.log"
    finished_before = _kill_once_a_trial_finished(_start_driver(args, tmp_path, env, log), experiment_dir, log)
    lines_before = {trial: _result_lines(experiment_dir, trial) for trial in finished_before}

    # 2. --resume completes it in this process.
    assert main([*args, "--resume"]) == 0

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    experiment = client.get_experiment_by_name("pcba-mmoeex")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4  # one per trial: the resumed trial continued its run
    assert {run.data.tags["mlflow.parentRunId"] for run in children} == {parents[0].info.run_id}

    # The finished trial was not run again: same reports, same (single) MLflow run.
    for trial in finished_before:
        assert _result_lines(experiment_dir, trial) == lines_before[trial]
    statuses = {run.data.tags["pcba.ray_run_name"].removeprefix("sweep-"): run.data.tags["pcba.tune.status"]
                for run in children}
    assert all(statuses[trial] == "finished" for trial in finished_before)

    # ASHA stopped some trials: they ran fewer than 3 epochs and their runs were closed.
    stopped = [run for run in children if run.data.tags["pcba.tune.status"] == "early-stopped"]
    assert stopped and all(run.info.status == "KILLED" for run in stopped)
    for run in stopped:  # MLflow steps are 0-based epochs: fewer than 3 epochs ran
        assert max(point.step for point in client.get_metric_history(run.info.run_id, "valid_mean_ap")) < 2

    # The best finished trial is registered and took the alias (no champion before).
    parent = parents[0]
    best_run_id = parent.data.tags["pcba.tune.best_run_id"]
    version = client.get_model_version_by_alias("pcba-tune-test", "champion")
    assert version.run_id == best_run_id and int(version.version) == 1
    finished_aps = [run.data.metrics["best_valid_mean_ap"] for run in children
                    if run.data.tags["pcba.tune.status"] == "finished"]
    assert parent.data.metrics["best_valid_mean_ap"] == max(finished_aps)
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id, "sweep")}
    assert {"sweep/trials.png", "sweep/trials.csv", "sweep/best_config.json"} <= artifacts

    # 3. The same model again does not beat the champion: registered without the alias.
    from pipelines.experiments.sweeps.config import SweepResult
    from pipelines.experiments.sweeps.registration import register_best
    from tuning.selection import FINISHED, TrialOutcome

    best = TrialOutcome(trial_id="x", params={}, status=FINISHED, epochs=3,
                        best_valid_mean_ap=parent.data.metrics["best_valid_mean_ap"],
                        mlflow_run_id=best_run_id)
    again = SweepResult(name="sweep", experiment_dir=str(experiment_dir), parent_run_id=parent.info.run_id,
                        tracking_uri=mlflow_uri, trials=[best], best=best,
                        best_test_mean_ap=parent.data.metrics["best_test_mean_ap"], interrupted=False,
                        resumed=False)
    number, decision = register_best(again, "pcba-tune-test", "champion")
    assert number == 2 and not decision.promote and "does not beat" in decision.reason
    assert int(client.get_model_version_by_alias("pcba-tune-test", "champion").version) == 1


#: Seconds a killed driver's own Ray gets to go down by itself before the
#: test ends what is left of it; seconds the resumed sweep gets to finish.
RAY_EXIT_GRACE_S = 10
RESUME_TIMEOUT_S = 600


def test_killed_driver_with_its_own_ray_resumes_in_a_new_process(
        mlflow_uri: str, tiny_panel: Path, tmp_path: Path) -> None:
    """The command-line case: ``tune`` starting its own local Ray, SIGKILLed
    after a trial finished, run again with ``--resume`` in a new process (and
    a new Ray). The finished trial is kept, not re-run, and the sweep
    completes. Two trials of two epochs: the smallest sweep with a finished
    trial to keep and one left to run."""
    from mlflow import MlflowClient

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps(SPACE))
    storage = tmp_path / "tune"
    experiment_dir = storage / "sweep"
    args = [*_tune_args(tiny_panel, storage, mlflow_uri, space_file, num_samples=2, epochs=2),
            "--num-cpus", "2"]
    # Each driver's Ray keeps its sockets and logs here (a short path: Unix
    # sockets), not in the machine's shared /tmp/ray.
    ray_tmp = Path(tempfile.mkdtemp(prefix="raytmp-", dir="/tmp"))
    env = _driver_env(RAY_TMPDIR=str(ray_tmp))
    log = tmp_path / "driver.log"
    started: set[processes.Process] = set()
    try:
        # 1. Killed once a trial has finished. Its Ray's GCS, raylet and
        # workers die with it (Ray's kernel fate-sharing), but the raylet's
        # dashboard and runtime-env agents, though they notice at once, first
        # try to report the death to the dead GCS, for about a minute (until
        # their GCS client gives up): end them here.
        driver = _start_driver(args, tmp_path, env, log)
        finished_before = _kill_once_a_trial_finished(driver, experiment_dir, log)
        started |= processes.session_processes(driver.pid)
        processes.kill(processes.wait_until_gone(started, RAY_EXIT_GRACE_S))
        lines_before = {trial: _result_lines(experiment_dir, trial) for trial in finished_before}

        # 2. The same command with --resume, in a new process.
        resumed = _start_driver([*args, "--resume"], tmp_path, env, log)
        try:
            returncode = resumed.wait(timeout=RESUME_TIMEOUT_S)
        finally:
            started |= processes.session_processes(resumed.pid)
        assert returncode == 0, log.read_text()[-3000:]
    finally:
        processes.kill(started)
        shutil.rmtree(ray_tmp, ignore_errors=True)

    # The finished trial kept its results (not run again); the other completed.
    for trial in finished_before:
        assert _result_lines(experiment_dir, trial) == lines_before[trial]
    assert len(_terminated_trials(experiment_dir)) == 2
    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("pcba-mmoeex").experiment_id])
    parents = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 2  # the resumed trial continued its own run
    statuses = {run.data.tags["pcba.ray_run_name"].removeprefix("sweep-"): run.data.tags["pcba.tune.status"]
                for run in children}
    assert all(statuses[trial] == "finished" for trial in finished_before)
    assert client.get_model_version_by_alias("pcba-tune-test", "champion").run_id == \
        parents[0].data.tags["pcba.tune.best_run_id"]


def test_the_default_space_sweeps_both_steps_with_the_inner_lr_of_maml_mtl_only(
        ray_local: None, mlflow_uri: str, tiny_panel: Path, tmp_path: Path) -> None:
    """No --optimizer: the default space draws the step. With seed 1 its
    three trials are MAML-MTL, plain, MAML-MTL; each child run trains and
    logs its own step, the inner lr only where the step reads it, and the
    parent run's space, trials table and champion cover both."""
    import pandas as pd
    from mlflow import MlflowClient

    from pipelines.cli import main

    space_file = tmp_path / "space.json"  # everything but the step and the inner lr fixed
    space_file.write_text(json.dumps({"n_experts": 2, "expert_width": 16, "lr": 1e-2,
                                      "pos_weight": "none", "gate_lr_scale": 1.0}))
    storage = tmp_path / "tune"
    assert main(["tune", "--data", str(tiny_panel), "--num-samples", "3", "--max-concurrent", "2",
                 "--epochs", "1", "--scheduler", "none", "--search-space", str(space_file),
                 "--batch-size", "64", "--patience", "0", "--name", "steps", "--storage", str(storage),
                 "--tracking-uri", mlflow_uri, "--register", "pcba-steps", "--alias", "champion",
                 "--seed", "1"]) == 0

    client = MlflowClient(mlflow_uri, registry_uri=mlflow_uri)
    runs = client.search_runs([client.get_experiment_by_name("pcba-mmoeex").experiment_id])
    (parent,) = [run for run in runs if "mlflow.parentRunId" not in run.data.tags]
    children = [run for run in runs if "mlflow.parentRunId" in run.data.tags]
    steps = sorted(run.data.params["step.optimizer"] for run in children)
    assert steps == ["maml-mtl", "maml-mtl", "plain"]
    for run in children:
        assert run.info.status == "FINISHED"
        assert ("step.inner_lr" in run.data.params) == (run.data.params["step.optimizer"] == "maml-mtl")
    inner_lrs = {float(run.data.params["step.inner_lr"]) for run in children if "step.inner_lr" in run.data.params}
    assert len(inner_lrs) == 2 and all(0.005 <= lr <= 0.5 for lr in inner_lrs)  # drawn per trial
    space = json.loads(parent.data.params["tune.space"])
    assert space["optimizer"] == {"choice": ["maml-mtl", "plain"]} and "loguniform" in space["inner_lr"]
    assert parent.data.params["step.maml_variant"] == "swap"  # MAML-MTL trials' shared setting

    table = pd.read_csv(client.download_artifacts(parent.info.run_id, "sweep/trials.csv", str(tmp_path)))
    assert sorted(table["step"]) == steps
    assert table.loc[table["step"] == "plain", "inner lr"].isna().all()
    assert table.loc[table["step"] == "maml-mtl", "inner lr"].notna().all()
    champion = client.get_model_version_by_alias("pcba-steps", "champion")
    best = max(children, key=lambda run: run.data.metrics["best_valid_mean_ap"])
    assert champion.run_id == parent.data.tags["pcba.tune.best_run_id"] == best.info.run_id
