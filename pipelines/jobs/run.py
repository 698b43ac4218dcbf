"""`python -m pipelines run`: the whole pipeline on its offline default in one
go (panel -> featurize -> train on Ray Train -> MLflow register @champion ->
screen a generated library with the registered model). Re-running skips the
stages that are already done. Every model, step and training option of
`train` applies to its training stage."""
from __future__ import annotations

import argparse
import os
from pathlib import Path

from pipelines.end_to_end import RunSettings  # dataclasses only: --help stays instant
from pipelines.names import CHAMPION_URI
from pipelines.options import (
    MODEL,
    RAY_TRAIN,
    STEP,
    TRAINING,
    Option,
    OptionGroup,
    add_option_groups,
    resolve_options,
)

HELP = "end to end: data, featurize, train (Ray Train), register (MLflow), screen (Ray Data)"

#: The run's own settings (RunSettings); its seed and epochs are those of training too.
PIPELINE = OptionGroup("pipeline", RunSettings, (
    Option("out", "out", "output folder"),
    Option("pcba", "pcba", "use the real PCBA-128 download instead of the offline panel"),
    Option("pcba-path", "pcba_path", "a local copy of pcba.csv.gz"),
    Option("molecules", "molecules", "panel molecules"),
    Option("tasks", "tasks", "panel assays"),
    Option("library-size", "library_size", "generated molecules to screen"),
    Option("bits", "bits", "Morgan fingerprint bits"),
    Option("top-k", "top_k", "screening hits per assay"),
    Option("epochs", "epochs", "training epochs (the main job's time budget)"),
    Option("seed", "seed", "seed of data, split and model"),
    Option("tracking-uri", "tracking_uri", "MLflow URI (default: MLFLOW_TRACKING_URI, else SQLite "
                                           "under --out)"),
    Option("address", "address", "Ray cluster address (default: RAY_ADDRESS, else a local Ray)"),
    Option("num-cpus", "num_cpus", "CPUs of the local Ray (default: all)"),
))
#: What the training stage takes from the command line or --config.
TRAIN_GROUPS = (MODEL, STEP, TRAINING.without("epochs", "seed"),
                RAY_TRAIN.without("max-failures", "run-name", "storage"))
GROUPS = (PIPELINE, *TRAIN_GROUPS)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_option_groups(parser, GROUPS)


def run(args: argparse.Namespace) -> int:
    from pipelines.end_to_end import run_pipeline
    from pipelines.text_tables import format_table

    values = resolve_options(args, GROUPS)
    values.setdefault("tracking_uri", os.environ.get("MLFLOW_TRACKING_URI"))
    values.setdefault("address", os.environ.get("RAY_ADDRESS"))
    train_keys = {option.key for group in TRAIN_GROUPS for option in group.options}
    train = {key: value for key, value in values.items() if key in train_keys}
    settings = RunSettings(**PIPELINE.fields_of(values), train=train)
    report = run_pipeline(settings)
    rows = [{"stage": line.stage, "status": line.status, "seconds": round(line.seconds, 1),
             "result": line.result, "where": line.where} for line in report.stages]
    total = sum(line.seconds for line in report.stages)
    print(format_table(rows, title=f"pipeline run ({settings.data_source}) in {total:.0f} s "
                                   f"-> {Path(settings.out)}"))
    print(f"\nMLflow UI:  {report.mlflow_ui}")
    print(f"Screen again: python -m pipelines screen --model {CHAMPION_URI} "
          f"--tracking-uri {report.tracking_uri} --library FILE --out DIR")
    return 0
