"""`python -m pipelines compare --data DIR [--configs ARCH/OPT[:option=value,...] ...]`:
the comparison users choose a model from (pipelines/experiments/comparison/).

Every row (an architecture and an optimizer step, with overrides) trains for
each seed on the same split with the same budget; each best-validation
model is scored on the test split once. Prints the table (mean +- std over
seeds of the test PR-AUC and ROC-AUC, Delta versus single-task, expert
diversity, epochs, epoch seconds, samples/s, wall seconds, parameters) and
tracks every row and seed in MLflow under one parent run.

    python -m pipelines compare --data runs/pcba-subset --seeds 3 --epochs 4
    python -m pipelines compare --data DIR --configs mmoe/plain mmoeex/maml-mtl:experts=8,inner-lr=0.1
    # hours of CPU training in pieces: the same command again resumes it
    python -m pipelines compare --data DIR --configs mmoeex/maml-mtl --budget-seconds 3600 \\
        --checkpoint-dir runs/compare-ckpt
    # or seed by seed: seeds 1 and 2 of a row whose seed 0 ran earlier
    # deep ensembles of each row's seeds (0-4 as one of 5, 0-2 as one of 3, each seed alone)
    python -m pipelines compare --data DIR --configs mmoeex/plain --seeds 5 --ensembles 1 3 5 \
        --checkpoint-dir runs/compare-ckpt --out runs/ensembles
    python -m pipelines compare --data DIR --configs mmoeex/maml-mtl --first-seed 1 --seeds 2
    # where MLflow is not reachable (a GPU box): save the runs, log them elsewhere
    python -m pipelines compare --data DIR --no-tracking --save-outcomes runs.pkl
    python -m pipelines compare --data DIR --log-outcomes runs.pkl
"""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.names import COMPARISON_EXPERIMENT
from pipelines.options import MLFLOW, MODEL, STEP, TRAIN_CONFIG_GROUPS, TRAINING, add_option_groups

HELP = "compare architectures and optimizer steps on one split and budget, several seeds"

#: The settings every row shares: a row names its architecture and step and
#: may override model and step options; seeds come from --seeds.
GROUPS = (MODEL.without("model"), STEP.without("optimizer"), TRAINING.without("seed", "ensemble"),
          MLFLOW.without("experiment"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.experiments.comparison.configurations import DEFAULT_CONFIGURATIONS

    rows = parser.add_argument_group("rows")
    rows.add_argument("--data", required=True, help="featurized dataset with train/valid/test splits")
    rows.add_argument("--seeds", type=int, default=3, help="seeds K..K+N-1 (model init, data order)")
    rows.add_argument("--first-seed", type=int, default=0, metavar="K",
                      help="the first seed, K above (one row's seeds split across machines or sessions)")
    rows.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGURATIONS),
                      metavar="ARCH/OPT[:option=value,...]",
                      help="rows; an override names a model or step option (flag or field name)")
    rows.add_argument("--ensembles", type=int, nargs="+", default=None, metavar="N",
                      help="also score deep ensembles of each row's seeds, N at a time in "
                           "consecutive blocks (needs --checkpoint-dir, which keeps the best weights)")
    rows.add_argument("--budget-seconds", type=float, default=None,
                      help="also stop a run once its training time reaches this (checked per epoch)")
    add_option_groups(parser, GROUPS)
    where = parser.add_argument_group("where")
    where.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    where.add_argument("--experiment", default=COMPARISON_EXPERIMENT, help="MLflow experiment")
    where.add_argument("--run-name", default=None, help="MLflow parent run name")
    where.add_argument("--out", type=Path, default=None,
                       help="also write comparison.csv and comparison.md here")
    where.add_argument("--checkpoint-dir", type=Path, default=None,
                       help="save every run after each epoch here; rerun with the same rows and "
                            "settings to reuse finished runs, resume the others, and continue "
                            "time-capped ones under a larger --budget-seconds")
    where.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    where.add_argument("--save-outcomes", type=Path, default=None,
                       help="save every run's outcome here (for --log-outcomes)")
    where.add_argument("--log-outcomes", type=Path, default=None,
                       help="train nothing: log the runs saved by --save-outcomes to MLflow")


def run(args: argparse.Namespace) -> int:
    import torch

    from pipelines.errors import UserError
    from pipelines.experiments.comparison.configurations import Budget, parse_configuration
    from pipelines.experiments.comparison.run_comparison import run_comparison
    from pipelines.experiments.comparison.tracking import mlflow_tracker
    from pipelines.options import build_train_config, resolve_options

    # Each row names its own step; the shared settings are checked against
    # the step that reads them all (a plain row then refuses MAML-only ones).
    # A train --config file works here: its model, optimizer, seed and the
    # like are the rows' and --seeds' business, and are named and skipped.
    shared = resolve_options(args, GROUPS, not_used=TRAIN_CONFIG_GROUPS)
    base = build_train_config({**shared, "optimizer": "maml-mtl"},
                              data_dir=args.data)
    try:
        configurations = [parse_configuration(text, base.model, base.step) for text in args.configs]
    except ValueError as error:
        raise UserError(str(error)) from None
    budget = Budget.of(base, args.budget_seconds)
    if args.log_outcomes is not None:
        return _log_saved(args)
    seeds = seeds_of(args)
    if args.ensembles and (args.checkpoint_dir is None or min(args.ensembles) < 1):
        raise UserError("--ensembles takes sizes >= 1 and needs --checkpoint-dir (the runs' best weights)")
    title = (f"{args.data}: seeds {seeds[0]}..{seeds[-1]}, at most {budget.epochs} epochs (patience "
             f"{budget.patience}), batch {budget.batch_size}, {args.device}")
    tracker = None if args.no_tracking else mlflow_tracker(
        base.tracking_uri, args.experiment, args.run_name, seeds=seeds, budget=budget,
        device=args.device)
    try:
        result = run_comparison(args.data, configurations, seeds, budget, device=args.device,
                                tracker=tracker, render=lambda summaries: _text_table(summaries, title),
                                checkpoint_dir=args.checkpoint_dir)
    except ValueError as error:
        raise UserError(str(error)) from None
    print(_text_table(result.summaries, title))
    if result.parent_run_id is not None:
        print(f"MLflow: parent run {result.parent_run_id} in {result.tracking_uri} "
              f"(experiment {args.experiment})")
    if args.save_outcomes is not None:
        from pipelines.experiments.comparison.plain_data import to_plain

        torch.save(to_plain({"title": title, "configurations": configurations, "seeds": seeds,
                             "budget": budget, "device": args.device, "outcomes": result.outcomes}),
                   args.save_outcomes)
        print(f"outcomes saved to {args.save_outcomes}")
    _write_tables(args.out, result.summaries)
    if args.ensembles:
        _ensembles(args, result.outcomes)
    return 0


def _ensembles(args: argparse.Namespace, outcomes) -> None:
    """--ensembles: the rows' seeds stacked N at a time, scored on the test split."""
    from featurize.dataset import read_dataset_info
    from pipelines.experiments.comparison.ensembles import (
        ensemble_outcomes,
        ensemble_rows,
        per_assay_spread_rows,
        rows_csv,
    )
    from pipelines.text_tables import format_table

    info = read_dataset_info(args.data)
    ensembles = ensemble_outcomes(info, outcomes, args.ensembles, args.checkpoint_dir)
    rows = ensemble_rows(ensembles)
    print(format_table(rows, title="deep ensembles (test split; mean +- std over repeats)"))
    if args.out is None:
        return
    largest = max(args.ensembles)
    per_assay = [{"configuration": ensemble.configuration, "seeds": f"{ensemble.seeds[0]}-{ensemble.seeds[-1]}",
                  **row} for ensemble in ensembles if len(ensemble.seeds) == largest > 1
                 for row in per_assay_spread_rows(ensemble, list(info.tasks))]
    (args.out / "ensembles.csv").write_text(rows_csv(rows))
    if per_assay:
        (args.out / "ensemble-spread-per-assay.csv").write_text(rows_csv(per_assay))
    print(f"ensemble tables written to {args.out}")


def seeds_of(args: argparse.Namespace) -> list[int]:
    """--first-seed K --seeds N: seeds K..K+N-1, so that a row too long for one
    sitting can run seed by seed and the seeds still differ."""
    from pipelines.errors import UserError

    if args.seeds < 1 or args.first_seed < 0:
        raise UserError(f"--seeds must be at least 1 and --first-seed at least 0 "
                        f"(got {args.seeds} and {args.first_seed})")
    return list(range(args.first_seed, args.first_seed + args.seeds))


def _log_saved(args: argparse.Namespace) -> int:
    """--log-outcomes: the saved runs into MLflow, with the local copy of
    their dataset (--data) as the parent run's data identity."""
    import torch

    from featurize.dataset import read_dataset_info
    from pipelines.experiments.comparison.plain_data import from_plain
    from pipelines.experiments.comparison.run_comparison import log_outcomes
    from pipelines.experiments.comparison.tracking import mlflow_tracker

    saved = from_plain(torch.load(args.log_outcomes, map_location="cpu", weights_only=True))
    info = read_dataset_info(args.data)
    tracker = mlflow_tracker(args.tracking_uri, args.experiment, args.run_name, seeds=saved["seeds"],
                             budget=saved["budget"], device=saved["device"])(info, saved["configurations"])
    summaries = log_outcomes(saved["outcomes"], saved["configurations"], tracker,
                             render=lambda rows: _text_table(rows, saved["title"]))
    print(_text_table(summaries, saved["title"]))
    print(f"MLflow: parent run {tracker.parent_run_id} in {tracker.uri} (experiment {args.experiment})")
    _write_tables(args.out, summaries)
    return 0


def _text_table(summaries, title: str) -> str:
    from pipelines.text_tables import format_table

    return format_table([summary.display_row() for summary in summaries], title=title)


def _write_tables(out: Path | None, summaries) -> None:
    if out is None:
        return
    from pipelines.experiments.comparison.table import table_csv, table_markdown

    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.csv").write_text(table_csv(summaries))
    (out / "comparison.md").write_text(table_markdown(summaries))
    print(f"tables written to {out}")
