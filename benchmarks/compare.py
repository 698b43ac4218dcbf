"""The paper's comparison on one dataset: single-task nets, shared bottom,
MMoE (alpha = 0) and MMoEEx (alpha > 0), each with the plain multi-task step
and with MAML-MTL, same split and budget, several seeds.

    python benchmarks/compare.py --data runs/pcba-subset --seeds 3 --epochs 4
    python benchmarks/compare.py --data runs/pcba-subset --device cuda     # on a GPU
    python benchmarks/compare.py --data DIR --configs mmoe/plain mmoeex/maml-mtl:n_experts=8,inner_lr=0.1
    # where MLflow is not installed or reachable: save the runs, log them elsewhere
    python benchmarks/compare.py --data DIR --no-tracking --save-outcomes runs.pkl
    python benchmarks/compare.py --data DIR --log-outcomes runs.pkl

Prints one table (mean +- std over seeds of the test mean PR-AUC and
ROC-AUC, Delta versus single-task in percent, expert diversity, epochs,
median training-epoch seconds, training samples/s, wall seconds per run,
parameters) and tracks every configuration and seed in MLflow under one
parent run (pipelines/experiments/comparison.py), with the table as CSV and markdown
artifacts; ``--out DIR`` also writes them to disk. Timings on a shared
machine are noisy.
"""
from __future__ import annotations

import argparse
import logging
import pickle
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurize.dataset import read_dataset_info
from models.config import ModelConfig
from models.steps import StepConfig
from pipelines.experiments.comparison import (
    DEFAULT_CONFIGURATIONS,
    DEFAULT_EXPERIMENT,
    Budget,
    Summary,
    log_outcomes,
    mlflow_tracker,
    parse_configuration,
    run_comparison,
    table_csv,
    table_markdown,
)
from pipelines.summary import format_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--data", required=True, help="featurized dataset with train/valid/test splits")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 (model init, data order)")
    parser.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGURATIONS),
                        metavar="ARCH/OPT[:field=value,...]",
                        help="rows; overrides name ModelConfig/StepConfig fields")

    budget = parser.add_argument_group("budget (the same for every row)")
    budget.add_argument("--epochs", type=int, default=5)
    budget.add_argument("--patience", type=int, default=2,
                        help="stop after this many epochs without a better valid mean AP (0 = never)")
    budget.add_argument("--budget-seconds", type=float, default=None,
                        help="also stop a run once its training time reaches this (checked per epoch)")
    budget.add_argument("--batch-size", type=int, default=512)
    budget.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    budget.add_argument("--weight-decay", type=float, default=0.0)

    shared = parser.add_argument_group("model and step settings every row shares")
    shared.add_argument("--experts", type=int, default=4, help="E for MMoE and MMoEEx")
    shared.add_argument("--expert-hidden", type=int, nargs="+", default=[64],
                        help="expert widths (the shared-bottom trunk and single-task trunks too)")
    shared.add_argument("--tower-hidden", type=int, default=16, help="task tower width (0 = linear)")
    shared.add_argument("--alpha", type=float, default=0.5, help="MMoEEx share of exclusive experts")
    shared.add_argument("--dropout", type=float, default=0.1)
    shared.add_argument("--inner-lr", type=float, default=0.05, help="MAML-MTL inner learning rate")
    shared.add_argument("--second-order", action="store_true", help="second-order MAML-MTL")
    shared.add_argument("--pos-weight", type=float, default=None, help="BCE weight of positives")

    where = parser.add_argument_group("where")
    where.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    where.add_argument("--use-gpu", action="store_true", help="same as --device cuda")
    where.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking URI (or MLFLOW_TRACKING_URI; default sqlite:///runs/mlflow.db)")
    where.add_argument("--experiment", default=DEFAULT_EXPERIMENT, help="MLflow experiment")
    where.add_argument("--run-name", default=None, help="MLflow parent run name")
    where.add_argument("--out", type=Path, default=None,
                       help="also write comparison.csv and comparison.md here")
    where.add_argument("--no-tracking", action="store_true", help="do not log to MLflow")
    where.add_argument("--save-outcomes", type=Path, default=None,
                       help="pickle every run's outcome here (for --log-outcomes)")
    where.add_argument("--log-outcomes", type=Path, default=None,
                       help="train nothing: log the runs saved by --save-outcomes to MLflow")
    return parser.parse_args(argv)


def text_table(summaries: list[Summary], title: str) -> str:
    return format_table([summary.display_row() for summary in summaries], title=title)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parse_args(argv)
    device = "cuda" if args.use_gpu else args.device
    base_model = ModelConfig(n_experts=args.experts, expert_hidden=tuple(args.expert_hidden),
                             tower_hidden=args.tower_hidden, alpha=args.alpha, dropout=args.dropout)
    base_step = StepConfig(inner_lr=args.inner_lr, second_order=args.second_order,
                           pos_weight=args.pos_weight)
    try:
        configurations = [parse_configuration(text, base_model, base_step) for text in args.configs]
        budget = Budget(epochs=args.epochs, patience=args.patience, batch_size=args.batch_size,
                        lr=args.lr, weight_decay=args.weight_decay, seconds=args.budget_seconds)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    if args.log_outcomes is not None:
        return log_saved(args)
    seeds = list(range(args.seeds))
    title = (f"{args.data}: {args.seeds} seeds, at most {args.epochs} epochs (patience "
             f"{args.patience}), batch {args.batch_size}, {device}")
    tracker = None if args.no_tracking else mlflow_tracker(
        args.tracking_uri, args.experiment, args.run_name, seeds=seeds, budget=budget, device=device)
    result = run_comparison(args.data, configurations, seeds, budget, device=device, tracker=tracker,
                            render=lambda summaries: text_table(list(summaries), title))
    print(text_table(result.summaries, title))
    if result.parent_run_id is not None:
        print(f"MLflow: parent run {result.parent_run_id} in {result.tracking_uri} "
              f"(experiment {args.experiment})")
    if args.save_outcomes is not None:
        with args.save_outcomes.open("wb") as handle:
            pickle.dump({"title": title, "configurations": configurations, "seeds": seeds,
                         "budget": budget, "device": device, "outcomes": result.outcomes}, handle)
        print(f"outcomes saved to {args.save_outcomes}")
    write_tables(args.out, result.summaries)
    return 0


def log_saved(args: argparse.Namespace) -> int:
    """--log-outcomes: the saved runs into MLflow, with the local copy of
    their dataset (--data) as the parent run's data identity."""
    with args.log_outcomes.open("rb") as handle:
        saved = pickle.load(handle)
    info = read_dataset_info(args.data)
    tracker = mlflow_tracker(args.tracking_uri, args.experiment, args.run_name, seeds=saved["seeds"],
                             budget=saved["budget"], device=saved["device"])(info, saved["configurations"])
    summaries = log_outcomes(saved["outcomes"], saved["configurations"], tracker,
                             render=lambda rows: text_table(list(rows), saved["title"]))
    print(text_table(summaries, saved["title"]))
    print(f"MLflow: parent run {tracker.parent_run_id} in {tracker.uri} (experiment {args.experiment})")
    write_tables(args.out, summaries)
    return 0


def write_tables(out: Path | None, summaries: list[Summary]) -> None:
    if out is None:
        return
    out.mkdir(parents=True, exist_ok=True)
    (out / "comparison.csv").write_text(table_csv(summaries))
    (out / "comparison.md").write_text(table_markdown(summaries))
    print(f"tables written to {out}")


if __name__ == "__main__":
    sys.exit(main())
