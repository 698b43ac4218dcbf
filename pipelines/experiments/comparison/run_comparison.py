"""Run a comparison: every configuration for every seed, rows logged as
they finish."""
from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from featurize.dataset import DatasetInfo
from pipelines.experiments.comparison.checkpoints import RunCheckpoints
from pipelines.experiments.comparison.configurations import (
    Budget,
    Configuration,
    ordered_with_reference_first,
)
from pipelines.experiments.comparison.data import ComparisonData
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.experiments.comparison.runs import train_and_test
from pipelines.experiments.comparison.table import (
    Summary,
    reference_per_task,
    summarize,
    table_markdown,
)
from pipelines.experiments.comparison.tracking import ComparisonTracker

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class ComparisonResult:
    """The rows, every run, and where they were tracked (None: not tracked)."""

    summaries: list[Summary]
    outcomes: list[RunOutcome]
    parent_run_id: str | None
    tracking_uri: str | None


def run_comparison(data_dir: str | Path, configurations: Sequence[Configuration], seeds: Sequence[int],
                   budget: Budget, *, device: str = "cpu",
                   tracker: Callable[[DatasetInfo, list[Configuration]], ComparisonTracker] | None = None,
                   render: Callable[[Sequence[Summary]], str] = table_markdown,
                   progress: bool = True, checkpoint_dir: str | Path | None = None) -> ComparisonResult:
    """Train every configuration for every seed (same data, split and
    budget) and score each best-validation model on the test split once.

    ``tracker(info, configurations)`` opens the MLflow runs (see
    :func:`mlflow_tracker`); each run is logged as soon as it finishes.
    Without one nothing is tracked (a machine with no MLflow: save the
    outcomes and log them later with :func:`log_outcomes`). ``render`` turns
    the summaries into the text table logged on the parent run.
    ``checkpoint_dir`` keeps every run's progress after each epoch, so a
    rerun with the same rows and settings resumes where this one stopped
    (pipelines/experiments/comparison/checkpoints.py).
    """
    from tqdm import tqdm

    if not seeds:
        raise ValueError("at least one seed is needed")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device!r} asked for, but torch sees no CUDA device")
    configurations = ordered_with_reference_first(configurations)
    data = ComparisonData.load(data_dir, device)
    checkpoints = RunCheckpoints(checkpoint_dir) if checkpoint_dir is not None else None
    active = tracker(data.info, configurations) if tracker is not None else None
    logger.info("comparing %d configurations x %d seeds on %s (%s)%s", len(configurations), len(seeds),
                data.info.path, device, "" if active is None else
                f"; MLflow parent run {active.parent_run_id} in {active.uri}")
    outcomes: list[RunOutcome] = []
    summaries: list[Summary] = []
    with tqdm(total=len(configurations) * len(seeds), unit="run", desc="compare",
              disable=not progress) as bar:
        for configuration in configurations:
            runs = []
            for seed in seeds:
                bar.set_postfix_str(f"{configuration.name} seed {seed}")
                try:
                    runs.append(train_and_test(data, configuration, seed, budget, device, checkpoints))
                except BaseException:
                    if active is not None:
                        active.fail()
                    raise
                bar.update()
            summaries.append(_record(active, configuration.name, runs, outcomes))
            outcomes.extend(runs)
    if active is not None:
        active.finish(summaries, render(summaries))
    return ComparisonResult(summaries=summaries, outcomes=outcomes,
                            parent_run_id=None if active is None else active.parent_run_id,
                            tracking_uri=None if active is None else active.uri)


def log_outcomes(outcomes: Sequence[RunOutcome], configurations: Sequence[Configuration],
                 tracker: ComparisonTracker,
                 render: Callable[[Sequence[Summary]], str] = table_markdown) -> list[Summary]:
    """Log finished runs (saved by an untracked :func:`run_comparison`) into
    ``tracker``'s MLflow runs, exactly as a tracked comparison logs them."""
    configurations = ordered_with_reference_first(configurations)
    summaries: list[Summary] = []
    done: list[RunOutcome] = []
    for configuration in configurations:
        runs = [outcome for outcome in outcomes if outcome.configuration == configuration.name]
        if not runs:
            raise ValueError(f"no saved runs of configuration {configuration.name!r}")
        summaries.append(_record(tracker, configuration.name, runs, done))
        done.extend(runs)
    tracker.finish(summaries, render(summaries))
    return summaries


def _record(tracker: ComparisonTracker | None, name: str, runs: list[RunOutcome],
            earlier: Sequence[RunOutcome]) -> Summary:
    """A configuration's row (Delta against the reference among ``earlier``
    runs or these), logged as a child run with its seeds when tracked."""
    summary = summarize(runs, reference_per_task([*earlier, *runs]))
    if tracker is not None:
        run_id = tracker.start_configuration(runs[0].config, name)
        for outcome in runs:
            tracker.log_seed(run_id, outcome)
        tracker.finish_configuration(run_id, summary)
    return summary
