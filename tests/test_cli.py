"""`python -m pipelines <job> --help`: every job answers, every option says
what it does, and no default is printed that tells nothing; every job that
trains takes its defaults from the config dataclasses and reads --config
files the same way (pipelines/options.py)."""
from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest

from models.config import ModelConfig, StepConfig
from pipelines.cli import JOBS, build_parser, main
from pipelines.errors import UserError
from pipelines.options import TRAIN_CONFIG_GROUPS, TRAINING, build_train_config, resolve_options
from pipelines.training.config import TrainConfig


def _job_parsers() -> dict[str, argparse.ArgumentParser]:
    (subparsers,) = [action for action in build_parser()._actions
                     if isinstance(action, argparse._SubParsersAction)]
    return dict(subparsers.choices)


def test_every_job_module_is_in_the_cli() -> None:
    folder = Path(__file__).resolve().parents[1] / "pipelines" / "jobs"
    modules = {path.stem for path in folder.glob("*.py") if path.stem != "__init__"}
    assert {module.rsplit(".", 1)[1] for module in JOBS.values()} == modules
    assert set(_job_parsers()) == set(JOBS)


@pytest.mark.parametrize("job", list(JOBS))
def test_job_help(job: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([job, "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: python -m pipelines " + job)
    for noise in ("(default: None)", "(default: False)", "(default: [])"):
        assert noise not in text
    undocumented = [action.option_strings[-1] for action in _job_parsers()[job]._actions
                    if action.option_strings and not (action.help or "").strip()]
    assert undocumented == []


def test_defaults_shown_where_they_inform() -> None:
    text = _job_parsers()["train"].format_help()
    assert "share of exclusive experts (MMoEEx) (default: 0.5)" in text
    assert "(default: 0)" in text  # --seed: a zero default is still shown
    assert "--use-gpu, --no-use-gpu\n                        one GPU per worker (NCCL)\n" in text


def _parse(job: str, *argv: str):
    from importlib import import_module

    args = build_parser().parse_args([job, *argv])
    return args, import_module(JOBS[job])


@pytest.mark.parametrize("job", ["train", "tune", "run", "compare"])
def test_each_training_job_shows_the_dataclass_defaults(job: str) -> None:
    """Every model, step and training option's help ends with its default,
    its config field's or the job's own (or shows none where the default is
    None or off)."""
    from importlib import import_module

    groups = import_module(JOBS[job]).GROUPS
    actions = {action.dest: action for action in _job_parsers()[job]._actions}
    for group in groups:
        for option in group.options:
            default = group.default_of(option)
            help_text = actions[option.key].help
            if "(default: " in option.help:  # the job says what it defaults to (tune's --optimizer)
                assert help_text == option.help, option.flag
            elif default is None or default is False:
                assert "(default: " not in help_text, option.flag
            else:
                shown = " ".join(map(str, default)) if isinstance(default, tuple) else str(default)
                assert help_text.endswith(f"(default: {shown})"), (option.flag, help_text)


def test_train_tune_compare_and_run_build_the_dataclass_defaults() -> None:
    """Every job trains the dataclasses' defaults (MMoEEx, which tune's
    sweep of alpha needs) unless told another network."""
    expected = TrainConfig(data_dir="d")
    args, module = _parse("train", "--data", "d")
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d") == expected
    args, module = _parse("compare", "--data", "d")
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d") == expected
    args, module = _parse("tune", "--data", "d", "--num-samples", "2")
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d") == expected
    args, module = _parse("tune", "--data", "d", "--num-samples", "2", "--model", "shared-bottom")
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d").model.architecture \
        == "shared-bottom"
    args, module = _parse("run")
    values = resolve_options(args, module.GROUPS)
    from pipelines.end_to_end import RunSettings

    assert RunSettings(**module.PIPELINE.fields_of(values)) == RunSettings()
    assert values == {}


def test_config_file_under_the_command_line(tmp_path: Path) -> None:
    config = tmp_path / "champion.yaml"
    config.write_text("model: mmoe\nexperts: 6\nexpert-hidden: [64, 32]\npos_weight: 10\n"
                      "second-order: true\nepochs: 7\n")
    args, module = _parse("train", "--data", "d", "--config", str(config), "--experts", "5",
                          "--no-second-order")
    built = build_train_config(resolve_options(args, module.GROUPS), data_dir="d")
    assert built.model == ModelConfig(architecture="mmoe", n_experts=5, expert_hidden=(64, 32))
    assert built.step == StepConfig(pos_weight=10.0, second_order=False)
    assert built.epochs == 7 and built.lr == TrainConfig.lr


@pytest.mark.parametrize("text, message", [
    ("colour: red\n", "unknown setting 'colour'"),
    ("experts: 2.5\n", "experts: expected a int"),
    ("second-order: 1\n", "second-order: expected true or false"),
    ("model: transformer\n", "'transformer' is not one of"),
    ("- experts\n", "expected a mapping"),
    ("alpha: 3\n", "alpha must be in [0, 1]"),
])
def test_bad_config_files_are_one_line_errors(tmp_path: Path, text: str, message: str) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text(text)
    args, module = _parse("train", "--data", "d", "--config", str(config))
    with pytest.raises(UserError, match=re.escape(message)):
        build_train_config(resolve_options(args, module.GROUPS), data_dir="d")


def test_pos_weight_auto_resolves_from_the_training_labels() -> None:
    import numpy as np

    args, module = _parse("train", "--data", "d", "--pos-weight", "auto:50")
    config = build_train_config(resolve_options(args, module.GROUPS), data_dir="d")
    assert config.step.pos_weight == "auto:50" and config.step.task_pos_weight is None
    labels = np.array([[1, 0], [0, 0], [0, -1], [0, 0]], np.int8)
    resolved = config.with_positive_weights(labels)
    assert resolved.step.task_pos_weight == (3.0, 50.0)
    assert resolved.params()["step.task_pos_weight"] == (3.0, 50.0)
    numeric = build_train_config(resolve_options(_parse("train", "--data", "d", "--pos-weight", "30")[0],
                                                 module.GROUPS), data_dir="d")
    assert numeric.step.pos_weight == 30.0 and numeric.with_positive_weights(labels) == numeric


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml")),
                         ids=lambda path: path.name)
def test_shipped_config_files_build_a_training_config_in_every_training_job(path: Path) -> None:
    """configs/*.yaml hold train's long flags: train, tune and run read them
    the same way (compare takes them less --model and --optimizer)."""
    import yaml

    args, module = _parse("train", "--data", "d", "--config", str(path))
    values = resolve_options(args, module.GROUPS)
    assert set(values) == {key.replace("-", "_") for key in yaml.safe_load(path.read_text())}
    config = build_train_config(values, data_dir="d")
    args, module = _parse("tune", "--data", "d", "--num-samples", "1", "--config", str(path))
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d").model == config.model
    args, module = _parse("compare", "--data", "d", "--config", str(path))
    shared = build_train_config(resolve_options(args, module.GROUPS, not_used=TRAIN_CONFIG_GROUPS),
                                data_dir="d")
    assert (shared.lr, shared.model.n_experts) == (config.lr, config.model.n_experts)


def test_compare_takes_a_train_config_file_and_names_what_it_leaves_out(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """The rows name the network and the step, --seeds the seeds: those keys
    of a train file are skipped out loud; a key no training job has still
    stops the job."""
    config = tmp_path / "train.yaml"
    config.write_text("model: shared-bottom\noptimizer: plain\nseed: 3\nlr: 0.004\nexperts: 6\n")
    args, module = _parse("compare", "--data", "d", "--config", str(config))
    with caplog.at_level("WARNING", logger="pipelines.options"):
        values = resolve_options(args, module.GROUPS, not_used=TRAIN_CONFIG_GROUPS)
    assert values == {"lr": 0.004, "experts": 6}
    assert "model, optimizer, seed left out" in caplog.text
    config.write_text("lr: 0.004\ncolour: red\n")
    with pytest.raises(UserError, match="unknown setting 'colour'"):
        resolve_options(args, module.GROUPS, not_used=TRAIN_CONFIG_GROUPS)


def test_compare_seeds_start_at_first_seed_and_refuse_none() -> None:
    from pipelines.jobs.compare import seeds_of

    assert seeds_of(_parse("compare", "--data", "d")[0]) == [0, 1, 2]
    assert seeds_of(_parse("compare", "--data", "d", "--first-seed", "1", "--seeds", "2")[0]) == [1, 2]
    with pytest.raises(UserError, match="--seeds must be at least 1"):
        seeds_of(_parse("compare", "--data", "d", "--seeds", "0")[0])


def test_the_shipped_config_files_parse() -> None:
    """configs/: the champion is a train --config file and the sweep's space a
    --search-space file, both read the way the jobs read them."""
    from tuning.search_space import SearchSpace

    folder = Path(__file__).resolve().parents[1] / "configs"
    args, module = _parse("train", "--data", "d", "--config", str(folder / "pcba-subset.yaml"))
    built = build_train_config(resolve_options(args, module.GROUPS), data_dir="d")
    assert (built.model.architecture, built.model.exclusivity, built.model.n_exclusive_experts,
            built.lr, built.model.gate_weight_decay) == ("mmoeex", "exclusion", 2, 0.0022, 0.001)
    space = SearchSpace.from_file(folder / "spaces" / "pcba-subset.yaml")
    assert space.parameters["n_experts"].values == (4, 6, 8)
    assert "gate_lr_scale" in space.applicable_to(built.model, built.step).parameters


def test_train_and_run_take_an_ensemble_and_a_sweep_skips_it_out_loud(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    config = tmp_path / "train.yaml"
    config.write_text("ensemble: 5\nlr: 0.004\n")
    for job, data in (("train", ("--data", "d")), ("run", ())):
        args, module = _parse(job, *data, "--config", str(config))
        assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d").ensemble == 5
    args, module = _parse("train", "--data", "d", "--ensemble", "3")
    assert build_train_config(resolve_options(args, module.GROUPS), data_dir="d").ensemble == 3
    args, module = _parse("tune", "--data", "d", "--num-samples", "1", "--config", str(config))
    with caplog.at_level("WARNING", logger="pipelines.options"):
        values = resolve_options(args, module.GROUPS, not_used=(TRAINING,))
    assert values == {"lr": 0.004} and "ensemble left out" in caplog.text
    with pytest.raises(SystemExit):
        _parse("tune", "--data", "d", "--num-samples", "1", "--ensemble", "3")
