"""`python -m pipelines train --data DIR [...]`: train on Ray Train, track in
MLflow, optionally register the model (pipelines/training/)."""
from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

from pipelines.options import (
    TRAIN_CONFIG_GROUPS,
    add_option_groups,
    add_ray_arguments,
    add_register_arguments,
)

if TYPE_CHECKING:
    from pipelines.training.trainer import TrainingResult

HELP = "train MMoEEx (or a baseline) on Ray Train, track it in MLflow, optionally register it"

GROUPS = TRAIN_CONFIG_GROUPS


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", required=True, help="featurized dataset folder (with a split)")
    add_option_groups(parser, GROUPS)
    cluster = parser.add_argument_group("Ray")
    cluster.add_argument("--cpus-per-worker", type=float, default=None,
                         help="CPUs per worker (default: a share that leaves room for data reads)")
    add_ray_arguments(cluster)
    add_register_arguments(parser.add_argument_group("registry"),
                           register_help="register the trained model under this name",
                           alias_help="alias for the registered version (e.g. champion)")


def run(args: argparse.Namespace) -> int:
    from pipelines.options import build_train_config, check_register_alias, resolve_options
    from pipelines.platform.ray_setup import connect_ray
    from pipelines.text_tables import format_key_values, format_table
    from pipelines.training.trainer import run_training

    check_register_alias(args)
    values = resolve_options(args, GROUPS)
    resources = None if args.cpus_per_worker is None else \
        {"CPU": args.cpus_per_worker, **({"GPU": 1.0} if values.get("use_gpu") else {})}
    config = build_train_config(values, data_dir=args.data, resources_per_worker=resources)
    connect_ray(args.address, args.num_cpus)
    result = run_training(config, register_name=args.register, alias=args.alias)

    summary: dict[str, object] = {
        "run name": result.run_name + (" (resumed)" if result.resumed else ""),
        "MLflow run": result.mlflow_run_id,
    }
    if len(result.networks) == 1:
        (network,) = result.networks
        summary.update({
            "epochs": network.epochs_completed,
            "stopped early": network.stopped_early,
            "best epoch": network.best_epoch + 1,
            "best valid mean AP": network.best_valid_mean_ap,
            "samples/s per worker (last epoch)": network.samples_per_s_per_worker,
            "diversity score": result.diversity,
            "best checkpoint": network.best_checkpoint,
        })
    else:
        summary["ensemble"] = f"{len(result.networks)} members (nested MLflow runs)"
    summary["model"] = result.model_uri
    if result.registered_version is not None:
        target = f"models:/{args.register}@{args.alias}" if args.alias \
            else f"models:/{args.register}/{result.registered_version}"
        summary["registered"] = f"{target} (version {result.registered_version})"
    print(format_key_values(summary, title="train"))
    if result.test is not None:
        print(format_table([{"split": "test", "mean AP": result.test.mean_ap,
                             "mean ROC-AUC": result.test.mean_roc_auc,
                             "mean EF1%": result.test.mean_ef1,
                             "tasks scored": len(result.test.ap) - result.test.n_skipped,
                             "tasks skipped": result.test.n_skipped}]))
    if result.member_tests:
        print(format_table(member_rows(result), title="ensemble members (test split)"))
    report = result.test_calibration
    if report is not None:
        methods = ", ".join(f"{count} {method}" for method, count
                            in report.calibration.method_counts().items() if count)
        print(format_table([
            {"test scores": "raw", "mean ECE": report.raw.mean_ece,
             "mean Brier": report.raw.mean_brier, "mean AP": result.test.mean_ap},
            {"test scores": "calibrated", "mean ECE": report.calibrated.mean_ece,
             "mean Brier": report.calibrated.mean_brier,
             "mean AP": report.calibrated_ranking.mean_ap},
        ], title=f"calibration (fitted on {report.calibration.split}: {methods})"))
    return 0


def member_rows(result: TrainingResult) -> list[dict[str, object]]:
    """One row per ensemble member (its seed, epochs, test means) and the
    ensemble's: what averaging bought."""
    rows: list[dict[str, object]] = [
        {"model": f"member {index}", "seed offset": index,
         "epochs (best)": f"{network.epochs_completed} ({network.best_epoch + 1})"
                          + (", reused" if network.reused else ""),
         "mean AP": test.get("test_mean_ap"), "mean EF1%": test.get("test_mean_ef1"),
         "mean ECE": test.get("test_mean_ece")}
        for index, (network, test) in enumerate(zip(result.networks, result.member_tests))]
    if result.test is not None:
        rows.append({"model": "ensemble (mean)", "seed offset": "", "epochs (best)": "",
                     "mean AP": result.test.mean_ap, "mean EF1%": result.test.mean_ef1,
                     "mean ECE": None if result.test_calibration is None
                     else result.test_calibration.raw.mean_ece})
    return rows
