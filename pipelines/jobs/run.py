"""`python -m pipelines run`: the whole pipeline on its offline default in one
go (panel -> featurize -> train MMoEEx with MAML-MTL on Ray Train -> MLflow
register @champion -> screen a generated library with the registered model).
Re-running skips the stages that are already done."""
from __future__ import annotations

import argparse
from pathlib import Path

from pipelines.end_to_end import RunSettings  # dataclasses only: --help stays instant

_DEFAULTS = RunSettings()

HELP = "end to end: data, featurize, train (Ray Train), register (MLflow), screen (Ray Data)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # The flags default to None so that a --config file can set what the
    # command line does not; the defaults shown are RunSettings' own.
    parser.add_argument("--config", type=Path, default=None,
                        help="YAML file of settings (keys: the long flags below); flags override it")
    parser.add_argument("--out", type=Path, help=_with_default("output folder", "out"))
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--pcba", action="store_true", default=None,
                        help="use the real PCBA-128 download instead of the offline panel")
    source.add_argument("--pcba-path", type=Path, help="a local copy of pcba.csv.gz")
    parser.add_argument("--molecules", type=int, help=_with_default("panel molecules", "molecules"))
    parser.add_argument("--tasks", type=int, help=_with_default("panel assays", "tasks"))
    parser.add_argument("--library-size", type=int,
                        help=_with_default("generated molecules to screen", "library_size"))
    parser.add_argument("--epochs", type=int, help=_with_default("training epochs", "epochs"))
    parser.add_argument("--num-workers", type=int, help=_with_default("Ray Train workers", "num_workers"))
    parser.add_argument("--experts", type=int, help=_with_default("MMoEEx experts", "experts"))
    parser.add_argument("--expert-hidden", type=int, nargs="+",
                        help=_with_default("expert layer widths", "expert_hidden"))
    parser.add_argument("--batch-size", type=int,
                        help=_with_default("training rows per step and worker", "batch_size"))
    parser.add_argument("--bits", type=int, help=_with_default("Morgan fingerprint bits", "bits"))
    parser.add_argument("--top-k", type=int, help=_with_default("screening hits per assay", "top_k"))
    parser.add_argument("--seed", type=int, help=_with_default("seed of data, split and model", "seed"))
    parser.add_argument("--tracking-uri",
                        help="MLflow URI (default: MLFLOW_TRACKING_URI, else SQLite under --out)")
    parser.add_argument("--address", help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    parser.add_argument("--num-cpus", type=int, help="CPUs of the local Ray (default: all)")


def _with_default(text: str, setting: str) -> str:
    value = getattr(_DEFAULTS, setting)
    shown = " ".join(map(str, value)) if isinstance(value, tuple) else value
    return f"{text} (default: {shown})"


def run(args: argparse.Namespace) -> int:
    import os

    from pipelines.end_to_end import run_pipeline
    from pipelines.summary import format_table

    overrides = {key: value for key, value in vars(args).items()
                 if key not in ("config", "run", "job", "verbose")}
    overrides["tracking_uri"] = args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    overrides["address"] = args.address or os.environ.get("RAY_ADDRESS")
    settings = RunSettings.from_sources(args.config, overrides)
    report = run_pipeline(settings)
    rows = [{"stage": line.stage, "status": line.status, "seconds": round(line.seconds, 1),
             "result": line.result, "where": line.where} for line in report.stages]
    total = sum(line.seconds for line in report.stages)
    print(format_table(rows, title=f"pipeline run ({settings.data_source}) in {total:.0f} s "
                                   f"-> {settings.out}"))
    print(f"\nMLflow UI:  {report.mlflow_ui}")
    print(f"Screen again: python -m pipelines screen --model models:/pcba-mmoeex@champion "
          f"--tracking-uri {report.tracking_uri} --library FILE --out DIR")
    return 0
