"""tuning/ and the sweep's pure parts: search space (file overrides, sampling,
zero-inflated alpha, Optuna rendering), ASHA settings, best-trial selection,
champion promotion, trial resources. No Ray cluster here (see
test_tuning_sweep.py for the real sweep)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from models.config import ModelConfig, StepConfig
from pipelines.errors import UserError
from pipelines.experiments.sweeps.config import SweepConfig, plan_trials
from pipelines.experiments.sweeps.report import trial_rows, trials_figure
from pipelines.training.config import TrainConfig
from tuning.schedulers import SchedulerConfig, build_scheduler
from tuning.search_space import (
    DEFAULT_SPACE,
    Choice,
    LogUniform,
    SearchSpace,
    TrialParams,
    Uniform,
    optuna_define_by_run,
    tune_param_space,
)
from tuning.selection import (
    EARLY_STOPPED,
    ERROR,
    FINISHED,
    Champion,
    TrialOutcome,
    best_trial,
    data_identity,
    decide_promotion,
)


def _draw(space: SearchSpace, n: int, seed: int) -> list[dict]:
    """Trial configs as Tune's random search draws them (the space sits
    under ``config`` in Tune's experiment spec)."""
    from ray.tune.search.sample import _BackwardsCompatibleNumpyRng
    from ray.tune.search.variant_generator import generate_variants

    rng = _BackwardsCompatibleNumpyRng(seed)
    return [variant["config"] for _ in range(n)
            for _, variant in generate_variants({"config": tune_param_space(space)}, random_state=rng)]


def test_default_space_covers_the_searched_parameters_and_round_trips() -> None:
    space = SearchSpace.from_mapping()
    assert space.parameters["optimizer"] == Choice(("maml-mtl", "plain"))
    assert space.parameters["alpha"] == Uniform(0.0, 1.0, 0.25)
    assert space.parameters["n_experts"] == Choice((4, 8, 12, 16, 32))
    assert isinstance(space.parameters["inner_lr"], LogUniform)
    assert SearchSpace.from_mapping(space.to_mapping()) == space
    assert space.to_mapping() == DEFAULT_SPACE


def test_tune_sampling_is_seeded_in_range_and_puts_mass_on_mmoe() -> None:
    space = SearchSpace.from_mapping()
    draws = _draw(space, 2000, seed=1)
    assert draws[:5] == _draw(space, 5, seed=1)  # reproducible for a seed
    alphas = np.array([draw["alpha"] for draw in draws])
    # 25 % exactly zero (plain MMoE), the rest uniform on [0, 1].
    assert abs(np.mean(alphas == 0.0) - 0.25) < 0.04
    assert 0.45 < np.median(alphas[alphas > 0]) < 0.55 and alphas.max() <= 1.0
    assert {draw["n_experts"] for draw in draws} == {4, 8, 12, 16, 32}
    # Both steps, evenly; the inner lr only where the step is MAML-MTL.
    maml = [draw for draw in draws if draw["optimizer"] == "maml-mtl"]
    assert abs(len(maml) / len(draws) - 0.5) < 0.04
    assert all(draw["inner_lr"] is None for draw in draws if draw["optimizer"] == "plain")
    inner = np.log10([draw["inner_lr"] for draw in maml])
    assert inner.min() >= math.log10(0.005) and inner.max() <= math.log10(0.5)
    # log-uniform: the mean of the log is the middle of the log range
    assert abs(inner.mean() - (math.log10(0.005) + math.log10(0.5)) / 2) < 0.05
    assert all(isinstance(draw["alpha"], float) and isinstance(draw["n_experts"], int)
               for draw in draws[:20])


def test_file_overrides_replace_whole_parameters(tmp_path: Path) -> None:
    yaml_file = tmp_path / "space.yaml"
    yaml_file.write_text("n_experts: {choice: [2, 3]}\nalpha: 0.5\nlr: {fixed: 0.001}\n")
    space = SearchSpace.from_file(yaml_file)
    draws = _draw(space, 50, seed=0)
    assert {draw["n_experts"] for draw in draws} == {2, 3}
    assert {draw["alpha"] for draw in draws} == {0.5} and {draw["lr"] for draw in draws} == {0.001}
    json_file = tmp_path / "space.json"
    json_file.write_text(json.dumps({"inner_lr": {"loguniform": [0.01, 0.1]}}))
    assert SearchSpace.from_file(json_file).parameters["inner_lr"] == LogUniform(0.01, 0.1)


@pytest.mark.parametrize("override, message", [
    ({"gamma": {"choice": [1]}}, "unknown search space parameters"),
    ({"lr": {"loguniform": [0.0, 0.1]}}, "bad loguniform bounds"),
    ({"lr": {"uniform": [0.1, 0.1]}}, "bad uniform bounds"),
    ({"alpha": {"uniform": [0.2, 1.0], "zero_probability": 0.3}}, "needs low = 0"),
    ({"n_experts": {"choice": []}}, "choice is empty"),
    ({"n_experts": {"choice": [4], "uniform": [0, 1]}}, "exactly one of"),
    ({"optimizer": {"choice": ["plain", "sgd"]}}, "'optimizer': a choice of"),
    ({"optimizer": {"uniform": [0, 1]}}, "'optimizer': a choice of"),
])
def test_bad_space_files_are_refused_with_the_parameter_named(override: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SearchSpace.from_mapping(override)


def test_optuna_define_by_run_samples_the_same_space() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    define = optuna_define_by_run(SearchSpace.from_mapping())
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = [define(study.ask()) for _ in range(400)]
    alphas = np.array([config["alpha"] for config in configs])
    # the is-zero switch is a fair coin under random sampling (TPE then learns it)
    assert 0.4 < np.mean(alphas == 0.0) < 0.6
    assert all(config["n_experts"] in (4, 8, 12, 16, 32) for config in configs)
    steps = [config["optimizer"] for config in configs]
    assert 0.4 < steps.count("maml-mtl") / len(steps) < 0.6
    assert all(0.005 <= config["inner_lr"] <= 0.5 for config in configs if config["optimizer"] == "maml-mtl")
    assert all(config["inner_lr"] is None for config in configs if config["optimizer"] == "plain")
    # Optuna's trial records the inner lr of MAML-MTL trials only.
    trials = study.get_trials()
    assert all(("inner_lr" in trial.params) == (trial.params["optimizer"] == "maml-mtl") for trial in trials)


def test_trial_params_apply_to_the_base_configs() -> None:
    params = TrialParams.from_config({"alpha": 0.0, "n_experts": 12, "inner_lr": 0.02, "lr": 0.003,
                                      "expert_width": 64, "gate_lr_scale": 0.05})
    model, step, lr = params.apply(ModelConfig(expert_hidden=(256, 256), tower_hidden=8),
                                   StepConfig(optimizer="maml-mtl"), 1e-3)
    assert (model.alpha, model.n_experts, model.expert_hidden, model.tower_hidden) == (0.0, 12, (64, 64), 8)
    assert model.gate_lr_scale == 0.05
    assert model.n_exclusive_experts == 0  # alpha 0 is plain MMoE
    assert (step.inner_lr, step.optimizer, lr) == (0.02, "maml-mtl", 0.003)
    # A sampled weighting replaces a base whose "auto" was already resolved.
    resolved = StepConfig(pos_weight="auto:100", task_pos_weight=(2.0, 3.0))
    for sampled, expected in (("none", None), (30, 30.0), ("auto:30", "auto:30")):
        _, step, _ = TrialParams.from_config({"pos_weight": sampled}).apply(ModelConfig(), resolved, 1e-3)
        assert (step.pos_weight, step.task_pos_weight) == (expected, None)
    # The drawn step replaces the base's; a plain trial's None inner lr is no value.
    _, step, _ = TrialParams.from_config({"optimizer": "maml-mtl", "inner_lr": 0.3}).apply(
        ModelConfig(), StepConfig(), 1e-3)
    assert (step.optimizer, step.inner_lr) == ("maml-mtl", 0.3)
    params = TrialParams.from_config({"optimizer": "plain", "inner_lr": None})
    assert params.to_dict() == {"optimizer": "plain"}
    assert params.apply(ModelConfig(), StepConfig(optimizer="maml-mtl"), 1e-3)[1].optimizer == "plain"
    # A space without a parameter leaves the base's value.
    model, step, lr = TrialParams.from_config({"alpha": 0.25}).apply(ModelConfig(), StepConfig(), 1e-3)
    assert (model.alpha, model.n_experts, step.inner_lr, lr) == (0.25, ModelConfig.n_experts,
                                                                 StepConfig.inner_lr, 1e-3)


@pytest.mark.parametrize("architecture, optimizer, searched", [
    ("mmoeex", "maml-mtl", {"alpha", "n_experts", "inner_lr", "lr", "expert_width", "pos_weight",
                            "gate_lr_scale"}),
    ("mmoe", "maml-mtl", {"n_experts", "inner_lr", "lr", "expert_width", "pos_weight", "gate_lr_scale"}),
    ("shared-bottom", "plain", {"lr", "expert_width", "pos_weight"}),
    ("mmoeex", "plain", {"alpha", "n_experts", "lr", "expert_width", "pos_weight", "gate_lr_scale"}),
])
def test_a_fixed_step_samples_only_what_the_architecture_and_step_have(
        architecture: str, optimizer: str, searched: set[str]) -> None:
    """``tune --optimizer X``: the step is fixed, the rest as the network and step have."""
    space = SearchSpace.from_mapping().with_step(optimizer).applicable_to(
        ModelConfig(architecture=architecture), StepConfig())
    assert set(space.parameters) == {"optimizer", *searched}
    assert space.steps(StepConfig()) == (optimizer,) and space.steps_reading("inner_lr") is None
    params = {**ModelConfig(architecture=architecture).params(), **StepConfig(optimizer=optimizer).params()}
    assert ("alpha" in params) == ("alpha" in searched)
    assert ("inner_lr" in params) == ("inner_lr" in searched)


def test_the_default_space_draws_the_step_and_the_inner_lr_for_maml_mtl_only() -> None:
    """Whatever the base step, the default space keeps the inner lr (its
    MAML-MTL trials read it) and draws it for those trials alone."""
    for base in (StepConfig(), StepConfig(optimizer="maml-mtl")):
        space = SearchSpace.from_mapping().applicable_to(ModelConfig(), base)
        assert space.steps(base) == ("maml-mtl", "plain")
        assert space.steps_reading("inner_lr") == ("maml-mtl",)
        assert space.steps_reading("pos_weight") is None and space.steps_reading("alpha") is None
    only_plain = SearchSpace.from_mapping({"optimizer": {"choice": ["plain"]}})
    assert "inner_lr" not in only_plain.applicable_to(ModelConfig(), StepConfig(optimizer="maml-mtl")).parameters


def test_asha_rungs_and_settings() -> None:
    assert SchedulerConfig(max_epochs=3, grace_period=1, reduction_factor=2).rungs() == [1, 2]
    assert SchedulerConfig(max_epochs=20, grace_period=2, reduction_factor=3).rungs() == [2, 6, 18]
    scheduler = build_scheduler(SchedulerConfig(max_epochs=3))
    assert scheduler._time_attr == "epochs_completed" and not scheduler._stop_last_trials
    assert build_scheduler(SchedulerConfig(kind="none", max_epochs=3)) is None
    with pytest.raises(ValueError, match="grace_period"):
        SchedulerConfig(max_epochs=3, grace_period=4)
    with pytest.raises(ValueError, match="reduction_factor"):
        SchedulerConfig(reduction_factor=1.0)


def _trial(trial_id: str, status: str, ap: float) -> TrialOutcome:
    return TrialOutcome(trial_id=trial_id, params={"optimizer": "maml-mtl", "alpha": 0.5, "n_experts": 4,
                                                   "inner_lr": 0.01, "lr": 1e-3, "expert_width": 64},
                        status=status, epochs=3, best_valid_mean_ap=ap, mlflow_run_id=f"run-{trial_id}")


def test_best_trial_is_the_best_finished_one() -> None:
    trials = [_trial("a", FINISHED, 0.30), _trial("b", EARLY_STOPPED, 0.50), _trial("c", ERROR, 0.9),
              _trial("d", FINISHED, 0.35), _trial("e", FINISHED, 0.35), _trial("f", FINISHED, math.nan)]
    assert best_trial(trials).trial_id == "d"  # b/c did not finish; d ties e, earlier id wins
    assert best_trial([_trial("b", EARLY_STOPPED, 0.5)]) is None


SAME = {"data.path": "/d", "data.metadata_hash": "h", "data.rows.train": "80", "data.rows.valid": "10",
        "data.rows.test": "10"}


@pytest.mark.parametrize("champion, promote, reason", [
    (None, True, "no @champion yet"),
    (Champion(3, 0.20, SAME), True, "beats @champion (version 3)"),
    (Champion(3, 0.25, SAME), False, "does not beat"),  # a tie keeps the champion
    (Champion(3, 0.30, SAME), False, "does not beat"),
    (Champion(3, 0.10, {**SAME, "data.rows.test": "12"}), False, "other data (data.rows.test differ)"),
    (Champion(3, None, SAME), False, "no test mean AP"),
])
def test_promotion_needs_a_better_test_ap_on_the_same_data(champion: Champion | None, promote: bool,
                                                           reason: str) -> None:
    decision = decide_promotion(0.25, SAME, champion, "champion")
    assert decision.promote is promote and reason in decision.reason


def test_data_identity_reads_params_or_tags() -> None:
    assert data_identity({**SAME, "lr": "0.1"}) == SAME


def _sweep(**kwargs) -> SweepConfig:
    base = TrainConfig(data_dir="d", epochs=3, num_workers=kwargs.pop("workers", 1))
    return SweepConfig(base=base, name="s", scheduler=SchedulerConfig(max_epochs=3), **kwargs)


def test_trial_resources_leave_a_cpu_to_the_data_readers() -> None:
    plan = plan_trials(_sweep(num_samples=8), cluster_cpus=2, cluster_gpus=0)
    assert plan.max_concurrent == 2 and plan.resources_per_worker == {"CPU": 0.5}
    plan = plan_trials(_sweep(num_samples=8, max_concurrent=3, workers=2), cluster_cpus=16, cluster_gpus=0)
    assert plan.max_concurrent == 3 and plan.resources_per_worker == {"CPU": 2.5}
    plan = plan_trials(_sweep(num_samples=8, gpus_per_trial=0.5), cluster_cpus=8, cluster_gpus=2)
    assert plan.max_concurrent == 4 and plan.resources_per_worker == {"CPU": 1.75, "GPU": 0.5}
    assert plan_trials(_sweep(num_samples=1), cluster_cpus=8, cluster_gpus=0).max_concurrent == 1
    with pytest.raises(UserError, match="lower --max-concurrent"):
        plan_trials(_sweep(num_samples=64, max_concurrent=64), cluster_cpus=4, cluster_gpus=0)
    with pytest.raises(ValueError, match="scheduler's budget"):
        SweepConfig(base=TrainConfig(data_dir="d", epochs=5), name="s",
                    scheduler=SchedulerConfig(max_epochs=3))


def test_sweep_config_round_trips() -> None:
    config = _sweep(num_samples=5, searcher="optuna", seed=3)
    assert SweepConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    # A space cut to the plain step (no inner lr) comes back as it was: a
    # resumed sweep must hand Tune the space it started with.
    plain = dataclasses.replace(config, space=config.space.with_step("plain").applicable_to(
        ModelConfig(), StepConfig()))
    restored = SweepConfig.from_dict(json.loads(json.dumps(plain.to_dict())))
    assert restored == plain and "inner_lr" not in restored.space.parameters
    # A sweep saved before the step was searched resumes with the base's step.
    old = {**config.to_dict(), "space": {name: spec for name, spec in DEFAULT_SPACE.items()
                                         if name != "optimizer"}}
    assert SweepConfig.from_dict(old).space.steps(config.base.step) == ("plain",)


def test_a_sweep_drawing_both_steps_logs_both_steps_fixed_settings() -> None:
    from pipelines.experiments.sweeps.run import _sweep_params

    params = _sweep_params(_sweep())
    assert "step.optimizer" not in params and "step.inner_lr" not in params  # searched
    assert params["step.maml_variant"] == StepConfig.maml_variant and "step.pos_weight" not in params
    assert json.loads(params["tune.space"])["optimizer"] == {"choice": ["maml-mtl", "plain"]}
    fixed = _sweep_params(_sweep(space=SearchSpace.from_mapping().with_step("plain")))
    assert "step.maml_variant" not in fixed and json.loads(fixed["tune.space"])["optimizer"] == {"fixed": "plain"}
    # A MAML-MTL-only setting refuses a space that draws the plain step, naming the fix.
    maml_only = TrainConfig(data_dir="d", epochs=3, step=StepConfig(optimizer="maml-mtl", tasks_per_step=8))
    with pytest.raises(ValueError, match="draws the plain step.*--optimizer"):
        SweepConfig(base=maml_only, name="s", scheduler=SchedulerConfig(max_epochs=3))


def test_trial_table_and_figure() -> None:
    trials = [_trial("a", FINISHED, 0.3), _trial("b", EARLY_STOPPED, 0.2), _trial("c", ERROR, math.nan)]
    rows = trial_rows(trials, best_trial_id="a")
    assert [row["trial"] for row in rows] == ["a *", "b", "c"]
    assert list(rows[0]) == ["trial", "step", "alpha", "E", "inner lr", "lr", "width", "pos weight",
                            "gate lr x", "epochs", "valid AP", "status"]
    assert rows[0]["step"] == "maml-mtl" and rows[0]["inner lr"] == 0.01
    assert rows[2]["valid AP"] is None
    plain = dataclasses.replace(_trial("d", FINISHED, 0.25), params={"optimizer": "plain", "alpha": 0.5})
    assert [trial_rows([plain])[0][key] for key in ("step", "inner lr")] == ["plain", None]
    figure = trials_figure([*trials, plain])
    assert len(figure.axes) == 4 and figure.axes[3].get_xscale() == "log"
    assert {label.get_text() for label in figure.axes[0].get_xticklabels()} == {"maml-mtl", "plain"}
