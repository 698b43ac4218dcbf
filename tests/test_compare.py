"""The model comparison (pipelines/experiments/comparison/, `python -m pipelines compare`): a
tiny real run (2 configurations, 1 seed, real RDKit fingerprints, real
Parquet, real MLflow SQLite store), and the row arithmetic against direct
computation."""
from __future__ import annotations

import dataclasses
import pickle
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from training_data import make_dataset

from models.config import ModelConfig, StepConfig
from models.metrics import TaskMetrics, delta_vs_reference
from pipelines.experiments.comparison.checkpoints import RunCheckpoints, RunProgress, read_progress
from pipelines.experiments.comparison.configurations import REFERENCE, Budget, parse_configuration
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.experiments.comparison.plain_data import from_plain, to_plain
from pipelines.experiments.comparison.run_comparison import run_comparison
from pipelines.experiments.comparison.table import reference_per_task, summarize
from pipelines.training.engine import EpochResult
from pipelines.training.evaluation import FinalEvaluation

BASE_MODEL = ModelConfig(architecture="mmoeex", n_experts=3, expert_hidden=(8,), tower_hidden=4, alpha=0.5, dropout=0.0)
BASE_STEP = StepConfig(inner_lr=0.05)


@pytest.fixture(scope="module")
def tiny_dataset(nci_smiles: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_dataset(nci_smiles, tmp_path_factory.mktemp("compare") / "data", n_molecules=400)


def test_parse_configuration_applies_overrides_to_the_shared_settings() -> None:
    configuration = parse_configuration("mmoeex/maml-mtl:n_experts=6,expert_hidden=16x8,"
                                        "second_order=true,pos_weight=10,inner_lr=0.2",
                                        BASE_MODEL, BASE_STEP)
    assert configuration.model.architecture == "mmoeex"
    assert configuration.model.n_experts == 6 and configuration.model.expert_hidden == (16, 8)
    assert configuration.model.tower_hidden == BASE_MODEL.tower_hidden
    assert configuration.step == StepConfig(optimizer="maml-mtl", inner_lr=0.2, second_order=True,
                                            pos_weight=10.0)
    plain = parse_configuration("mmoe/plain", BASE_MODEL, BASE_STEP)
    assert plain.model.architecture == "mmoe" and plain.step.optimizer == "plain"
    for bad in ("mmoeex", "mmoeex/adam", "mmoeex/plain:n_experts", "mmoeex/plain:colour=red",
                "mmoeex/plain:seed=3"):
        with pytest.raises(ValueError):
            parse_configuration(bad, BASE_MODEL, BASE_STEP)


def _outcome(name: str, seed: int, ap: list[float], roc: list[float],
             diversity: float | None = None) -> RunOutcome:
    ap_array, roc_array = np.array(ap), np.array(roc)
    metrics = TaskMetrics(ap=ap_array, roc_auc=roc_array, ef1=2 * ap_array,
                          n_skipped=int(np.isnan(ap_array).sum()), mean_ap=float(np.nanmean(ap_array)),
                          mean_roc_auc=float(np.nanmean(roc_array)), mean_ef1=float(np.nanmean(2 * ap_array)))
    evaluation = FinalEvaluation(split="test", n_rows=10, metrics=metrics, distance_matrix=None,
                                 diversity=diversity, gate_usage=None, exclusive_expert_task={})
    epoch = EpochResult(epoch=0, train_loss=0.5, train_task_losses=np.zeros(3), train_samples=100,
                        train_seconds=2.0, valid=metrics, improved=True)
    return RunOutcome(configuration=name, seed=seed, config=None, evaluation=evaluation,
                      history=[epoch], best_epoch=0, stop_reason="epochs", wall_seconds=1.0,
                      n_parameters=5)


def test_summary_is_mean_std_over_seeds_and_delta_is_against_the_reference_mean() -> None:
    reference = [_outcome(REFERENCE, 0, [0.2, 0.4, np.nan], [0.6, 0.8, np.nan]),
                 _outcome(REFERENCE, 1, [0.4, 0.4, 0.5], [0.8, 0.6, 0.7])]
    model = [_outcome("mmoeex/maml-mtl", 0, [0.3, 0.5, 0.5], [0.7, 0.7, 0.7], diversity=0.4),
             _outcome("mmoeex/maml-mtl", 1, [0.3, 0.2, 0.1], [0.9, 0.7, 0.5], diversity=0.6)]
    ref_means = reference_per_task(reference)
    assert np.allclose(ref_means[0][:2], [0.3, 0.4]) and np.isnan(ref_means[0][2])
    row = summarize(model, ref_means)
    # Direct: per seed, tasks 0 and 1 only (task 2 is unscored in a reference seed).
    deltas = [np.mean([(0.3 - 0.3) / 0.3, (0.5 - 0.4) / 0.4]) * 100,
              np.mean([(0.3 - 0.3) / 0.3, (0.2 - 0.4) / 0.4]) * 100]
    assert row.delta_ap_mean == pytest.approx(np.mean(deltas))
    assert row.delta_ap_std == pytest.approx(np.std(deltas, ddof=1))
    assert row.delta_ap_mean == pytest.approx(np.mean(
        [delta_vs_reference(run.evaluation.metrics.ap, ref_means[0]) for run in model]))
    assert row.ap_mean == pytest.approx(np.mean([np.mean([0.3, 0.5, 0.5]), np.mean([0.3, 0.2, 0.1])]))
    assert row.diversity_mean == pytest.approx(0.5) and row.diversity_std == pytest.approx(np.std([0.4, 0.6], ddof=1))
    reference_row = summarize(reference, ref_means)
    assert reference_row.delta_ap_mean == pytest.approx(0.0, abs=1e-12)
    assert reference_row.diversity_mean is None
    assert summarize(model, None).delta_ap_mean is None
    with pytest.raises(ValueError):
        summarize([*reference, *model], ref_means)


@pytest.mark.slow
def test_tiny_comparison_tracks_every_configuration_under_one_parent(
        tiny_dataset: Path, mlflow_uri: str, tmp_path: Path) -> None:
    from mlflow import MlflowClient

    from pipelines.experiments.comparison.table import table_csv
    from pipelines.experiments.comparison.tracking import mlflow_tracker

    configurations = [parse_configuration(text, BASE_MODEL, BASE_STEP)
                      for text in ("mmoeex/maml-mtl", REFERENCE)]
    budget = Budget(epochs=2, patience=0, batch_size=64, lr=3e-3, weight_decay=0.0)
    result = run_comparison(tiny_dataset, configurations, [0], budget, progress=False,
                            tracker=mlflow_tracker(mlflow_uri, "compare-test", "tiny", seeds=[0],
                                                   budget=budget, device="cpu"))

    # The table: one row per configuration, the reference first, real numbers.
    table = pd.read_csv(pd.io.common.StringIO(table_csv(result.summaries)))
    assert list(table["configuration"]) == [REFERENCE, "mmoeex/maml-mtl"]
    for column in ("ap_mean", "ap_std", "roc_auc_mean", "delta_ap_mean", "delta_roc_auc_mean",
                   "diversity_mean", "wall_seconds", "samples_per_second", "epoch_seconds"):
        assert column in table.columns
    assert table["ap_mean"].between(0, 1).all() and table["roc_auc_mean"].between(0, 1).all()
    assert table.loc[0, "delta_ap_mean"] == pytest.approx(0.0, abs=1e-9)
    assert np.isnan(table.loc[0, "diversity_mean"]) and 0 < table.loc[1, "diversity_mean"] <= 1
    assert (table["seeds"] == 1).all() and (table["samples_per_second"] > 0).all()
    for outcome in result.outcomes:
        assert len(outcome.history) == 2 and outcome.stop_reason == "epochs"
        # The test split is scored once, with the best validation epoch's weights.
        assert outcome.evaluation.split == "test"
        assert outcome.evaluation.n_rows == sum(1 for _ in _split_rows(tiny_dataset, "test"))
        best = max(outcome.history, key=lambda epoch: epoch.valid.mean_ap)
        assert outcome.best_epoch == best.epoch
    display = result.summaries[1].display_row()
    assert display["test PR-AUC"].count("±") == 1
    # Outcomes survive --save-outcomes as plain data, arrays and records intact.
    saved = tmp_path / "outcomes.pt"
    torch.save(to_plain({"outcomes": result.outcomes, "configurations": configurations}), saved)
    loaded = from_plain(torch.load(saved, weights_only=True))
    assert loaded["configurations"] == configurations
    for before, after in zip(result.outcomes, loaded["outcomes"]):
        assert type(after) is RunOutcome and after.config == before.config
        assert (after.best_epoch, after.stop_reason, after.n_parameters) == \
            (before.best_epoch, before.stop_reason, before.n_parameters)
        np.testing.assert_array_equal(after.evaluation.metrics.ap, before.evaluation.metrics.ap)
        assert after.evaluation.exclusive_expert_task == before.evaluation.exclusive_expert_task
        assert [epoch.valid.mean_ap for epoch in after.history] == [epoch.valid.mean_ap for epoch in before.history]
        np.testing.assert_array_equal(after.history[-1].train_task_losses, before.history[-1].train_task_losses)

    # MLflow: parent -> one child per configuration -> one grandchild per seed.
    client = MlflowClient(mlflow_uri)
    experiment = client.get_experiment_by_name("compare-test")
    runs = client.search_runs([experiment.experiment_id])
    by_id = {run.info.run_id: run for run in runs}
    parent = by_id[result.parent_run_id]
    assert parent.info.status == "FINISHED" and "mlflow.parentRunId" not in parent.data.tags
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == result.parent_run_id]
    assert sorted(run.info.run_name for run in children) == sorted(c.name for c in configurations)
    for child, summary in ((next(c for c in children if c.info.run_name == s.configuration), s)
                           for s in result.summaries):
        assert child.data.metrics["ap_mean"] == pytest.approx(summary.ap_mean)
        assert child.data.params["step.optimizer"] == summary.configuration.split("/")[1].split(":")[0]
        seeds = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        assert [run.data.tags["comparison.seed"] for run in seeds] == ["0"]
        assert seeds[0].data.metrics["test_mean_ap"] == pytest.approx(summary.ap_mean)
        assert "valid_mean_ap" in seeds[0].data.metrics
    assert len(runs) == 1 + 2 + 2
    artifacts = {item.path for item in client.list_artifacts(result.parent_run_id, "comparison")}
    assert {"comparison/table.csv", "comparison/table.md"} <= artifacts
    logged = client.download_artifacts(result.parent_run_id, "comparison/table.csv", str(tmp_path))
    assert list(pd.read_csv(logged)["configuration"]) == [REFERENCE, "mmoeex/maml-mtl"]


def _split_rows(dataset: Path, split: str):
    from featurize.reader import iter_batches

    for batch in iter_batches(dataset, split=split, columns=()):
        yield from range(len(batch))


def test_budget_seconds_stops_every_row_after_the_epoch_that_spends_it(tiny_dataset: Path) -> None:
    configuration = parse_configuration("shared-bottom/plain", BASE_MODEL, BASE_STEP)
    budget = dataclasses.replace(Budget(epochs=5, patience=0, batch_size=64, lr=1e-3, weight_decay=0.0), seconds=1e-9)
    result = run_comparison(tiny_dataset, [configuration], [0], budget, progress=False)
    assert result.parent_run_id is None
    [outcome] = result.outcomes
    assert len(outcome.history) == 1 and outcome.stop_reason == "time budget"


def test_a_checkpointed_comparison_resumes_and_ends_as_an_uninterrupted_one(
        tiny_dataset: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A run capped by its time budget, continued under a larger one, killed
    in an epoch, scored as it stands under a spent budget, resumed, then
    reused: its epochs and test numbers are those of one uninterrupted run
    (dropout on, so the per-epoch reseeding counts)."""
    from pipelines.training.engine import EpochLoop

    configuration = parse_configuration("mmoe/plain:dropout=0.2", BASE_MODEL, BASE_STEP)
    budget = Budget(epochs=3, patience=0, batch_size=64, lr=3e-3, weight_decay=0.0)
    checkpoint_dir = tmp_path / "checkpoints"

    def compare(seconds: float | None = None) -> RunOutcome:
        [outcome] = run_comparison(tiny_dataset, [configuration], [0], dataclasses.replace(budget, seconds=seconds),
                                   progress=False, checkpoint_dir=checkpoint_dir).outcomes
        return outcome

    [whole] = run_comparison(tiny_dataset, [configuration], [0], budget, progress=False).outcomes
    capped = compare(seconds=1e-9)
    assert len(capped.history) == 1 and capped.stop_reason == "time budget"
    train_epoch = EpochLoop.train_epoch

    def killed_in_epoch_3(self, batches, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return train_epoch(self, batches, epoch)
    monkeypatch.setattr(EpochLoop, "train_epoch", killed_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        compare()
    checkpoint = RunCheckpoints(checkpoint_dir).path(configuration.name, 0)
    torch.load(checkpoint, weights_only=True)  # plain data: no pickled classes
    killed = read_progress(checkpoint)
    assert killed.wall_seconds > capped.wall_seconds  # the killed process's epoch is counted
    monkeypatch.setattr(EpochLoop, "train_epoch", lambda *args: pytest.fail("a spent budget trained on"))
    spent = compare(seconds=1e-9)  # killed after epoch 2 with its budget spent: scored as it stands
    assert spent.wall_seconds > killed.wall_seconds
    assert [epoch.epoch for epoch in spent.history] == [0, 1] and spent.stop_reason == "time budget"
    assert spent.best_epoch == int(np.argmax([epoch.valid.mean_ap for epoch in whole.history[:2]]))
    monkeypatch.setattr(EpochLoop, "train_epoch", train_epoch)
    resumed = compare()
    assert [epoch.epoch for epoch in resumed.history] == [0, 1, 2] and resumed.stop_reason == "epochs"
    assert ([epoch.valid.mean_ap for epoch in resumed.history]
            == [epoch.valid.mean_ap for epoch in whole.history])
    assert resumed.best_epoch == whole.best_epoch
    np.testing.assert_array_equal(resumed.evaluation.metrics.ap, whole.evaluation.metrics.ap)

    monkeypatch.setattr(EpochLoop, "train_epoch", lambda *args: pytest.fail("a finished run trained again"))
    reused = compare()
    np.testing.assert_array_equal(reused.evaluation.metrics.ap, whole.evaluation.metrics.ap)


def test_a_checkpoint_from_before_a_setting_existed_resumes_at_its_default(tmp_path: Path) -> None:
    from pipelines.training.config import TrainConfig

    defaults = TrainConfig.default_params()
    now = {**defaults, "model.gate_dropout": 0.0, "data.n_rows": 100}
    older = {key: value for key, value in now.items() if key != "model.gate_dropout"}
    checkpoints = RunCheckpoints(tmp_path)
    checkpoints.save("mmoeex/plain", 0, RunProgress(identity=older, model_state={}, optimizer_state={},
                                                    loop_state={}))
    with pytest.raises(ValueError, match=r"model.gate_dropout: None there, 0.0 now"):
        checkpoints.load("mmoeex/plain", 0, now)  # without defaults a new setting is a change
    with pytest.raises(ValueError, match=r"model.gate_dropout: 0.0 there, 0.25 now"):
        checkpoints.load("mmoeex/plain", 0, {**now, "model.gate_dropout": 0.25}, defaults)
    with pytest.raises(ValueError, match=r"data.n_rows: 100 there, None now"):
        checkpoints.load("mmoeex/plain", 0, {key: value for key, value in now.items() if key != "data.n_rows"},
                         defaults)
    resumed = checkpoints.load("mmoeex/plain", 0, now, defaults)
    assert resumed is not None and resumed.identity == now


def test_a_pickled_checkpoint_from_before_plain_data_still_resumes(tmp_path: Path) -> None:
    """Checkpoints written as a pickled RunProgress (before plain data) are
    read, and the next save writes them plain."""
    identity = {"model.architecture": "mmoeex", "seed": 0}
    checkpoints = RunCheckpoints(tmp_path)
    path = checkpoints.path("mmoeex/plain", 0)
    legacy = RunProgress(identity=identity, model_state={"w": torch.ones(2)}, optimizer_state={},
                         loop_state={"epoch": 1}, wall_seconds=3.0)
    torch.save(legacy, path)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(path, weights_only=True)
    resumed = checkpoints.load("mmoeex/plain", 0, identity)
    assert resumed.wall_seconds == 3.0 and torch.equal(resumed.model_state["w"], torch.ones(2))
    checkpoints.save("mmoeex/plain", 0, resumed)
    assert torch.load(path, weights_only=True)["loop_state"] == {"epoch": 1}


def test_a_checkpoint_of_other_settings_is_refused_by_name(tiny_dataset: Path, tmp_path: Path) -> None:
    configuration = parse_configuration("shared-bottom/plain", BASE_MODEL, BASE_STEP)
    budget = Budget(epochs=1, patience=0, batch_size=64, lr=1e-3, weight_decay=0.0)
    run_comparison(tiny_dataset, [configuration], [0], budget, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match=r"shared-bottom/plain seed 0 with other settings \(lr: 0.001 there, "
                                         r"0.002 now\)"):
        run_comparison(tiny_dataset, [configuration], [0], dataclasses.replace(budget, lr=2e-3),
                       progress=False, checkpoint_dir=tmp_path)


def test_ensembles_of_a_comparisons_seeds_score_their_members_mean(tiny_dataset: Path, tmp_path: Path) -> None:
    """Three seeds stacked as one ensemble of 3 and three of 1: the ensemble
    scores the mean of its members' probabilities (checked against the
    members' own weights), a one-member ensemble is that member's run."""
    from featurize.dataset import read_dataset_info
    from models.factory import build_model
    from models.metrics import evaluate_tasks
    from pipelines.experiments.comparison.ensembles import ensemble_outcomes, ensemble_rows
    from pipelines.training.engine import iter_dataset_batches

    configuration = parse_configuration("mmoeex/plain:tower_hidden=0", BASE_MODEL, BASE_STEP)
    budget = Budget(epochs=2, patience=0, batch_size=64, lr=3e-3, weight_decay=0.0)
    outcomes = run_comparison(tiny_dataset, [configuration], [0, 1, 2], budget, progress=False,
                              checkpoint_dir=tmp_path).outcomes
    info = read_dataset_info(tiny_dataset)
    ensembles = ensemble_outcomes(info, outcomes, [1, 3], tmp_path)
    assert [ensemble.seeds for ensemble in ensembles] == [(0,), (1,), (2,), (0, 1, 2)]
    for single, outcome in zip(ensembles[:3], outcomes):
        assert single.evaluation.metrics.mean_ap == pytest.approx(outcome.evaluation.metrics.mean_ap, abs=1e-6)
        assert single.evaluation.spread is None
    fp, labels = (np.concatenate(parts) for parts in zip(*iter_dataset_batches(info, "test", 1000)))
    bits = torch.from_numpy(np.unpackbits(fp, axis=1, bitorder="little")[:, :info.spec.n_bits]).float()
    probabilities = []
    for outcome in outcomes:
        member = build_model(outcome.config.model)
        member.load_state_dict(read_progress(RunCheckpoints(tmp_path).path(configuration.name, outcome.seed))
                               .best_state_dict)
        with torch.no_grad():
            probabilities.append(torch.sigmoid(member.eval()(bits)).numpy())
    expected = evaluate_tasks(labels > 0, np.mean(probabilities, axis=0), labels >= 0)
    ensemble = ensembles[3]
    assert ensemble.evaluation.metrics.mean_ap == pytest.approx(expected.mean_ap, abs=1e-6)
    assert ensemble.evaluation.spread is not None
    rows = ensemble_rows(ensembles)
    assert [(row["members"], row["repeats"], row["seeds"]) for row in rows] == [(1, 3, "0-2, one each"), (3, 1, "0-2")]
    assert rows[0]["low-spread quartile"] == rows[0]["gain"] == "" and rows[1]["low-spread quartile"] != ""
