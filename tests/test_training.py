"""Training: the Ray-free loop, the hand-written gradient all-reduce, and a
real 2-worker Ray Train run with an injected failure, tracked in MLflow."""
from __future__ import annotations

import dataclasses
import json
import os
import signal
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from training_data import make_dataset

from featurize.dataset import read_dataset_info
from models.config import ModelConfig
from models.factory import build_model
from models.steps import StepConfig, build_step
from pipelines.training.config import TrainConfig
from pipelines.training.engine import EpochLoop, EpochResult, LoopState, cpu_state_dict, iter_dataset_batches
from pipelines.training.trainer import TrainingResult, worker_resources

TINY_MODEL = ModelConfig(architecture="mmoeex", n_experts=4, expert_hidden=(32,), tower_hidden=8, alpha=0.5,
                         dropout=0.1)


@pytest.fixture(scope="module")
def small_dataset(nci_smiles: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(nci_smiles, tmp_path_factory.mktemp("training") / "data")


def test_train_config_round_trips_and_rejects_bad_values() -> None:
    config = TrainConfig(data_dir="d", model=TINY_MODEL, step=StepConfig(optimizer="maml-mtl", inner_lr=0.1),
                         resources_per_worker={"CPU": 2.0}, fail_at_epoch=1)
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert config.params()["model.n_experts"] == 4 and config.params()["step.inner_lr"] == 0.1
    assert "tracking_uri" not in config.params()
    # An architecture or step logs only the parameters it has.
    bottom = TrainConfig(data_dir="d", model=ModelConfig(architecture="shared-bottom"),
                         step=StepConfig(optimizer="plain"))
    logged = set(bottom.params())
    assert {"model.expert_hidden", "model.dropout", "step.pos_weight"} <= logged
    assert not {"model.alpha", "model.n_experts", "model.exclusivity", "step.inner_lr"} & logged
    assert "model.alpha" not in TrainConfig(data_dir="d", model=ModelConfig(architecture="mmoe")).params()
    with pytest.raises(ValueError, match="lr must be > 0.*fail_at_epoch"):
        TrainConfig(data_dir="d", lr=0.0, epochs=2, fail_at_epoch=5)
    with pytest.raises(ValueError, match="unknown TrainConfig keys"):
        TrainConfig.from_dict({"data_dir": "d", "learning_rate": 1.0})


def test_an_ensembles_members_are_the_run_with_the_next_seeds() -> None:
    config = TrainConfig(data_dir="d", model=dataclasses.replace(TINY_MODEL, seed=7), seed=7, ensemble=3,
                         run_name="night")
    member = config.member(2, parent_run_id="parent")
    assert (member.seed, member.model.seed, member.ensemble) == (9, 9, 1)
    assert (member.run_name, member.mlflow_parent_run_id) == ("night-member-2", "parent")
    assert dataclasses.replace(member, seed=7, model=config.model, ensemble=3, run_name="night",
                               mlflow_parent_run_id=None) == config
    assert config.params()["ensemble"] == 3 and TrainConfig.default_params()["ensemble"] == 1
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        TrainConfig(data_dir="d", ensemble=0)


@pytest.mark.parametrize(("cpus", "workers", "expected"), [(16, 2, 7.0), (2, 1, 1.0), (2, 2, 2 / 3)])
def test_worker_resources_leave_cpu_for_data_readers(cpus: float, workers: int, expected: float) -> None:
    config = TrainConfig(data_dir="d", num_workers=workers)
    resources = worker_resources(config, cpus)
    assert resources["CPU"] == pytest.approx(expected)
    assert resources["CPU"] * workers < cpus
    assert worker_resources(dataclasses.replace(config, use_gpu=True), cpus)["GPU"] == 1.0


def _loop(dataset: Path, lr: float = 3e-3, seed: int = 0,
          pos_weight: float | None = None) -> tuple[EpochLoop, object]:
    info = read_dataset_info(dataset)
    model = build_model(dataclasses.replace(TINY_MODEL, n_features=info.spec.n_bits,
                                            n_tasks=info.n_tasks))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    step = build_step(StepConfig(optimizer="maml-mtl", pos_weight=pos_weight))
    return EpochLoop(model, step, optimizer, info.spec, seed=seed), info


def _fit(dataset: Path, epochs: int, patience: int, lr: float = 3e-3, pos_weight: float | None = None):
    """The fit, its loop and the best epoch's weights (kept as a comparison
    run keeps them: a CPU copy after each improving epoch)."""
    loop, info = _loop(dataset, lr, pos_weight=pos_weight)
    best: dict[str, torch.Tensor] = {}

    def keep_best(epoch: EpochResult, state: LoopState) -> None:
        if epoch.improved:
            best.update(cpu_state_dict(loop.model))
    result = loop.fit(lambda epoch: iter_dataset_batches(info, "train", 64, shuffle_seed=epoch),
                      lambda: iter_dataset_batches(info, "valid", 256),
                      epochs=epochs, patience=patience, on_epoch_end=keep_best)
    return result, loop, best


def test_single_process_fit_is_reproducible_and_keeps_the_best_epoch(small_dataset: Path) -> None:
    first, loop, best = _fit(small_dataset, epochs=2, patience=0)
    second, _, _ = _fit(small_dataset, epochs=2, patience=0)
    assert [r.train_loss for r in first.history] == [r.train_loss for r in second.history]
    assert [r.valid.mean_ap for r in first.history] == [r.valid.mean_ap for r in second.history]
    aps = [r.valid.mean_ap for r in first.history]
    assert first.state.epoch == 2 and first.state.best_epoch == int(np.argmax(aps))
    assert first.state.best_valid_mean_ap == max(aps)
    # The kept state is the best epoch's: evaluating it reproduces its AP.
    loop.model.load_state_dict(best)
    info = read_dataset_info(small_dataset)
    assert loop.evaluate(iter_dataset_batches(info, "valid", 256)).mean_ap == pytest.approx(max(aps))
    assert first.history[0].train_samples == info.split_counts["train"]


def test_early_stopping_counts_epochs_without_improvement(small_dataset: Path) -> None:
    # lr = 0: the weights never change, so no epoch after the first improves.
    result, _, _ = _fit(small_dataset, epochs=10, patience=2, lr=0.0)
    assert result.state.stopped_early and result.state.epoch == 3
    assert result.state.best_epoch == 0 and [r.improved for r in result.history] == [True, False, False]
    resumed = LoopState.from_dict(result.state.to_dict())
    assert resumed == result.state and resumed.finished(10)


def _all_reduce_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    """One gloo rank: a step on its own rows, the flat all-reduce, Adam steps."""
    import torch.distributed as dist

    from pipelines.training.collective import TorchDistributedCollective

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank,
                            world_size=world_size)
    torch.manual_seed(100 + rank)  # different data and dropout per rank
    model = build_model(dataclasses.replace(TINY_MODEL, n_features=16, n_tasks=3))
    collective = TorchDistributedCollective()
    collective.broadcast_parameters(model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    step = build_step(StepConfig(optimizer="maml-mtl", pos_weight=None))
    for index in range(3):
        x = torch.rand(8, 16).round()
        labels = torch.randint(0, 2, (8, 3)).float()
        step(model, x, labels, torch.ones(8, 3, dtype=torch.bool))
        local = [param.grad.clone() for param in model.parameters()]
        collective.average_gradients(model.parameters())
        if index == 0:
            torch.save({"local": local, "synced": [p.grad.clone() for p in model.parameters()]},
                       Path(out_dir) / f"grads_{rank}.pt")
        optimizer.step()
    torch.save({"spread": collective.weight_spread(model), "weights": model.state_dict()},
               Path(out_dir) / f"final_{rank}.pt")
    dist.destroy_process_group()


@pytest.mark.slow  # two spawned processes importing torch: ~30 s on 2 shared cores
def test_flat_all_reduce_averages_gradients_and_keeps_ranks_identical(tmp_path: Path) -> None:
    torch.multiprocessing.spawn(_all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)),
                                nprocs=2, join=True)
    grads = [torch.load(tmp_path / f"grads_{rank}.pt") for rank in range(2)]
    for local_0, local_1, synced_0, synced_1 in zip(grads[0]["local"], grads[1]["local"],
                                                    grads[0]["synced"], grads[1]["synced"]):
        torch.testing.assert_close(synced_0, (local_0 + local_1) / 2)
        assert torch.equal(synced_0, synced_1)
    assert any(not torch.equal(a, b) for a, b in zip(grads[0]["local"], grads[1]["local"]))
    final = [torch.load(tmp_path / f"final_{rank}.pt") for rank in range(2)]
    assert final[0]["spread"] == 0.0 and final[1]["spread"] == 0.0
    for key, value in final[0]["weights"].items():
        assert torch.equal(value, final[1]["weights"][key]), key


def test_calibration_fitted_on_valid_lowers_test_calibration_error(small_dataset: Path) -> None:
    """A model trained with a positive weight of 20 (as class weighting does)
    overestimates every task's probabilities; the maps fitted on the valid
    split bring the test split's ECE and Brier score down, and the run's
    per-task table says which map each task got."""
    from pipelines.serving.bundle import ModelBundle
    from pipelines.training.evaluation import evaluate_bundle, fit_bundle_calibration

    _, loop, best = _fit(small_dataset, epochs=3, patience=0, lr=1e-2, pos_weight=20.0)
    loop.model.load_state_dict(best)
    info = read_dataset_info(small_dataset)
    bundle = ModelBundle(loop.model.eval(), info.spec, list(info.tasks))
    assert evaluate_bundle(bundle, info).calibration is None  # nothing fitted: nothing to report
    calibrated = dataclasses.replace(bundle, calibration=fit_bundle_calibration(bundle, info))
    report = evaluate_bundle(calibrated, info).calibration
    assert report.calibration.split == "valid" and report.calibration.method_counts()["platt"] > 0
    assert report.raw.mean_ece > 0.15
    assert report.calibrated.mean_ece < 0.5 * report.raw.mean_ece
    assert report.calibrated.mean_brier < report.raw.mean_brier
    rows = report.rows()
    assert [row["task"] for row in rows] == list(info.tasks)
    assert {"method", "valid_labels", "valid_positives", "ece_raw", "ece", "brier_raw", "brier"} <= set(rows[0])


# -- a real Ray Train run ----------------------------------------------------------

#: Per-worker rows per step in the Ray runs: small, so that an epoch of the
#: full NCI set takes seconds (about 120 steps a worker) and the SIGKILL test
#: can land inside one after the controller recorded the previous checkpoint.
RAY_BATCH_SIZE = 16


@pytest.fixture(scope="module")
def ray_dataset(nci_smiles: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All ~5,000 NCI molecules (4,000 train rows), for the Ray Train runs."""
    return make_dataset(nci_smiles, tmp_path_factory.mktemp("ray-training") / "data",
                        n_molecules=len(nci_smiles))


@pytest.fixture(scope="module")
def ray_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Ray storage (``ray/``) and MLflow store (``mlflow.db``) of this module's runs."""
    return tmp_path_factory.mktemp("ray-runs")


def _ray_config(dataset: Path, root: Path, run_name: str, **overrides: object) -> TrainConfig:
    values = {"model": TINY_MODEL, "step": StepConfig(optimizer="maml-mtl", inner_lr=0.05),
              "batch_size": RAY_BATCH_SIZE, "epochs": 2, "patience": 0, "seed": 3, "num_workers": 2,
              "resources_per_worker": {"CPU": 0.5}}
    return TrainConfig(data_dir=str(dataset), run_name=run_name, storage_path=str(root / "ray"),
                       experiment_name="tests", tracking_uri=f"sqlite:///{root / 'mlflow.db'}",
                       **(values | overrides))


@pytest.fixture(scope="module")
def clean_ray_run(ray_local: None, ray_dataset: Path, ray_root: Path) -> TrainingResult:
    """The 2-worker run that nothing interrupts: what every recovered run must reproduce."""
    from pipelines.training.trainer import run_training

    return run_training(_ray_config(ray_dataset, ray_root, "clean"))


@pytest.fixture(scope="module")
def two_ray_runs(clean_ray_run: TrainingResult, ray_dataset: Path, ray_root: Path):
    """The clean run, and the same run failing at epoch 1 (and recovering
    from its epoch-0 checkpoint)."""
    from pipelines.training.trainer import run_training

    failing = _ray_config(ray_dataset, ray_root, "fails-once", max_failures=1, fail_at_epoch=1)
    return run_training(failing), clean_ray_run, failing, ray_root, failing.tracking_uri


@pytest.mark.slow
def test_two_worker_run_recovers_from_a_failure_and_matches_a_clean_run(two_ray_runs) -> None:
    failing_result, clean_result, failing, root, _ = two_ray_runs
    marker = root / "ray" / "fails-once" / ".failed_at_epoch_1"
    assert marker.exists(), "the injected failure never fired"
    for result in (failing_result, clean_result):
        (network,) = result.networks
        assert network.epochs_completed == 2 and not network.stopped_early
        assert Path(network.latest_checkpoint, "training_state.pt").is_file()
        assert Path(network.best_checkpoint).name == f"epoch_{network.best_epoch:04d}"
    # Resumed from the epoch-0 checkpoint with model, optimizer and RNG
    # schedule restored: bit-for-bit the run that never failed.
    assert failing_result.networks[0].best_valid_mean_ap == clean_result.networks[0].best_valid_mean_ap
    assert failing_result.test.mean_ap == clean_result.test.mean_ap
    assert np.array_equal(failing_result.test.ap, clean_result.test.ap, equal_nan=True)


@pytest.mark.slow
def test_ray_run_is_tracked_in_mlflow(two_ray_runs) -> None:
    from mlflow import MlflowClient

    _, result, _, _, uri = two_ray_runs
    client = MlflowClient(tracking_uri=uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    params = run.data.params
    assert params["model.n_experts"] == "4" and params["num_workers"] == "2"
    assert params["data.metadata_hash"] == read_dataset_info(params["data.path"]).metadata_hash
    assert '"n_bits": 256' in params["fingerprint_spec"]
    assert run.data.tags["system.ray"] and run.data.tags["git_commit"]
    history = client.get_metric_history(run.info.run_id, "valid_mean_ap")
    assert sorted(m.step for m in history) == [0, 1]
    assert run.data.metrics["weight_spread"] == 0.0
    assert run.data.metrics["test_mean_ap"] == pytest.approx(result.test.mean_ap)
    assert 0.0 < run.data.metrics["diversity_score"] <= 1.0
    artifacts = {a.path for folder in ("test", "experts", "config")
                 for a in client.list_artifacts(run.info.run_id, folder)}
    assert {"test/per_task_metrics.csv", "test/per_task_calibration.csv", "experts/diversity_heatmap.png",
            "experts/gate_usage.png", "experts/exclusive_experts.json", "config/train_config.json"} <= artifacts
    # Calibration: raw and calibrated test ECE/Brier, means and per task.
    report = result.test_calibration
    assert run.data.metrics["test_mean_ece"] == pytest.approx(report.raw.mean_ece)
    assert run.data.metrics["test_calibrated_mean_ece"] == pytest.approx(report.calibrated.mean_ece)
    assert run.data.metrics["test_calibrated_mean_brier"] == pytest.approx(report.calibrated.mean_brier)
    assert {"test_ece/has_N", "test_calibrated_brier/has_N", "test_calibrated_mean_ap"} <= set(run.data.metrics)
    assert result.model_uri.startswith("models:/")


#: Seconds the SIGKILL test waits for the run to record its first checkpoint.
FIRST_CHECKPOINT_TIMEOUT_S = 600


def _train_workers(job_id: str) -> dict[str, dict]:
    """Ray Train worker actors (``RayTrainWorker``) of this Ray job, any state,
    by actor id, from Ray's own actor table (with their pid). Why the GCS
    table and not ``ray.util.state.list_actors``: the State API is served by
    the dashboard, which the tests' Ray runs without."""
    from ray._private import state

    return {actor_id: actor for actor_id, actor in state.actors().items()
            if actor["ActorClassName"] == "RayTrainWorker" and actor["JobID"] == job_id}


def _latest_checkpoint(run_dir: Path) -> str | None:
    """The checkpoint the Train controller has registered as latest (what a
    restarted worker group resumes from), from the snapshot it writes to the
    run's storage after each registration; None before the first."""
    snapshot = run_dir / "checkpoint_manager_snapshot.json"
    try:
        latest = json.loads(snapshot.read_text()).get("latest_checkpoint_result")
    except (FileNotFoundError, json.JSONDecodeError):  # not yet written, or being rewritten
        return None
    return latest["checkpoint_dir_name"] if latest else None


def _kill_a_worker_in_epoch_1(run_dir: Path, job_id: str, known: set[str], run: Future) -> int:
    """Once the controller has registered the epoch-0 checkpoint, SIGKILL one
    of this run's (alive) Train workers while epoch 1 is still running; the pid."""
    deadline = time.monotonic() + FIRST_CHECKPOINT_TIMEOUT_S
    while _latest_checkpoint(run_dir) != "epoch_0000":
        assert not run.done(), f"the run ended before its first checkpoint: {run.exception()!r}"
        assert time.monotonic() < deadline, "no epoch-0 checkpoint in time"
        time.sleep(0.05)
    alive = sorted(actor["Pid"] for actor_id, actor in _train_workers(job_id).items()
                   if actor_id not in known and actor["State"] == "ALIVE")
    assert len(alive) == 2, f"expected this run's 2 Train workers, found pids {alive}"
    assert not (run_dir / "epoch_0001").exists(), "epoch 1 ended before the kill could land in it"
    os.kill(alive[-1], signal.SIGKILL)
    return alive[-1]


def _training_state(checkpoint: str) -> dict:
    return torch.load(Path(checkpoint, "training_state.pt"), weights_only=True)


def _assert_same_tensors(actual: object, expected: object, where: str) -> None:
    """Nested dicts/lists of tensors and numbers, bit for bit."""
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same_tensors(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for index, (left, right) in enumerate(zip(actual, expected)):
            _assert_same_tensors(left, right, f"{where}[{index}]")
    elif isinstance(expected, torch.Tensor):
        assert torch.equal(actual, expected), where
    else:
        assert actual == expected, where


@pytest.mark.slow
def test_sigkilled_worker_resumes_from_the_last_checkpoint_and_matches_a_clean_run(
        ray_local: None, ray_dataset: Path, ray_root: Path, clean_ray_run: TrainingResult) -> None:
    """A worker process killed (SIGKILL) during epoch 1: with max_failures=1
    Ray Train restarts the worker group from the epoch-0 checkpoint, and the
    run ends with exactly the clean run's weights and optimizer state."""
    import ray
    from mlflow import MlflowClient

    from pipelines.training.trainer import run_training

    config = _ray_config(ray_dataset, ray_root, "killed", max_failures=1)
    run_dir = ray_root / "ray" / "killed"
    job_id = ray.get_runtime_context().get_job_id()
    known = set(_train_workers(job_id))
    with ThreadPoolExecutor(max_workers=1) as pool:
        run = pool.submit(run_training, config)
        killed_pid = _kill_a_worker_in_epoch_1(run_dir, job_id, known, run)
        result = run.result()

    # One restart: the killed group's 2 workers, then 2 new ones.
    workers = {actor_id: actor for actor_id, actor in _train_workers(job_id).items() if actor_id not in known}
    assert len(workers) == 4 and killed_pid in {actor["Pid"] for actor in workers.values()}
    # Resumed at epoch 1 (epoch 0 was not trained or reported again); epoch
    # 1 was reported once, by the new group: at most one epoch was lost.
    history = MlflowClient(config.tracking_uri).get_metric_history(result.mlflow_run_id, "train_loss")
    assert sorted(point.step for point in history) == [0, 1]
    (network,), (clean,) = result.networks, clean_ray_run.networks
    assert network.epochs_completed == 2 and network.best_epoch == clean.best_epoch
    # The same weights, optimizer moments and loop state as the clean run, bit for bit.
    for name in ("latest_checkpoint", "best_checkpoint"):
        assert Path(getattr(network, name)).name == Path(getattr(clean, name)).name
        _assert_same_tensors(_training_state(getattr(network, name)),
                             _training_state(getattr(clean, name)), name)
    assert result.test.mean_ap == clean_ray_run.test.mean_ap


@pytest.mark.slow
def test_an_ensemble_resumes_at_the_member_and_epoch_it_reached(ray_local: None, ray_dataset: Path,
                                                                ray_root: Path) -> None:
    """Two members, each failing once at epoch 1 with no retries (a kill,
    as the job sees it): the first attempt dies in member 0, the second
    resumes member 0 at epoch 1 and dies in member 1, the third reuses
    member 0 and resumes member 1 at epoch 1. Every epoch was trained once;
    the served model is the members' mean and spread."""
    from mlflow import MlflowClient

    from models.ensemble import member_probabilities
    from pipelines.platform.tracking import use_tracking_uri
    from pipelines.serving.pyfunc_model import load_scorer
    from pipelines.training.trainer import run_training

    config = _ray_config(ray_dataset, ray_root, "ensemble", model=dataclasses.replace(TINY_MODEL, tower_hidden=0),
                         step=StepConfig(optimizer="plain"), batch_size=256, num_workers=1,
                         resources_per_worker={"CPU": 1.0}, ensemble=2, max_failures=0, fail_at_epoch=1)
    members_dir = ray_root / "ray" / "ensemble" / "members"
    with pytest.raises(Exception, match="injected failure"):
        run_training(config)
    assert not members_dir.exists()
    with pytest.raises(Exception, match="injected failure"):
        run_training(config)
    assert sorted(path.name for path in members_dir.iterdir()) == ["member-0.json", "member-0.safetensors"]
    result = run_training(config)

    assert [network.reused for network in result.networks] == [True, False]
    assert [network.run_name for network in result.networks] == ["ensemble-member-0", "ensemble-member-1"]
    client = MlflowClient(config.tracking_uri)
    parent = client.get_run(result.mlflow_run_id)
    assert parent.info.status == "FINISHED" and parent.data.params["ensemble"] == "2"
    assert {"test_mean_ap", "member_0_test_mean_ap", "member_1_test_mean_ece"} <= set(parent.data.metrics)
    for index, network in enumerate(result.networks):
        member = client.get_run(network.mlflow_run_id)
        assert member.data.tags["mlflow.parentRunId"] == result.mlflow_run_id
        assert member.data.params["seed"] == str(config.seed + index)
        assert member.data.params["model.seed"] == str(config.model.seed + index)
        # Each epoch trained and logged once: resumed, never started over.
        history = client.get_metric_history(network.mlflow_run_id, "train_loss")
        assert sorted(point.step for point in history) == [0, 1]
    assert len(result.member_tests) == 2
    assert result.test.mean_ap > max(test["test_mean_ap"] for test in result.member_tests) - 0.05

    with use_tracking_uri(str(config.tracking_uri)):
        scorer = load_scorer(result.model_uri, "cpu")
    assert scorer.n_members == 2
    info = read_dataset_info(ray_dataset)
    fp, _ = next(iter_dataset_batches(info, "test", 64))
    scores, spread = scorer.score_packed_with_spread(fp, raw_scores=True)
    bits = torch.from_numpy(np.unpackbits(fp, axis=1, bitorder="little")[:, :info.spec.n_bits]).float()
    with torch.no_grad():
        members = torch.stack([torch.sigmoid(scorer.model.member(index)(bits)) for index in range(2)])
        stacked = member_probabilities(scorer.model, bits)
    torch.testing.assert_close(stacked, members)
    np.testing.assert_allclose(scores, members.mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(spread, members.std(0, correction=0).numpy(), rtol=1e-4, atol=1e-6)


def test_the_gates_get_their_own_learning_rate_and_weight_decay() -> None:
    from pipelines.training.config import optimizer_for

    model_config = ModelConfig(n_features=16, n_tasks=3, n_experts=3, expert_hidden=(4,),
                               gate_lr_scale=0.1, gate_weight_decay=0.01)
    config = TrainConfig(data_dir="d", model=model_config, lr=2e-3, weight_decay=1e-4)
    model = build_model(model_config)
    rest, gates = optimizer_for(model, config).param_groups
    gate_ids = {id(param) for name, param in model.named_parameters() if name.startswith("gates.")}
    assert {id(param) for param in gates["params"]} == gate_ids and gate_ids
    assert len(rest["params"]) + len(gates["params"]) == len(list(model.parameters()))
    assert (gates["lr"], gates["weight_decay"], rest["lr"], rest["weight_decay"]) == (2e-4, 0.01, 2e-3, 1e-4)
    plain = TrainConfig(data_dir="d", model=ModelConfig(n_features=16, n_tasks=3, n_experts=3,
                                                        gate_lr_scale=1.0, gate_weight_decay=None))
    assert len(optimizer_for(build_model(plain.model), plain).param_groups) == 1
    assert "model.gate_lr_scale" not in TrainConfig(
        data_dir="d", model=ModelConfig(architecture="shared-bottom")).params()
