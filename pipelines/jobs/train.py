"""`python -m pipelines train --data DIR [...]`: train on Ray Train, track in
MLflow, optionally register the model (pipelines/training/)."""
from __future__ import annotations

import argparse

from pipelines.jobs.options import (
    add_architecture_arguments,
    add_optimization_arguments,
    add_ray_arguments,
    add_tracking_arguments,
    check_register_alias,
)

HELP = "train MMoEEx (or a baseline) on Ray Train, track it in MLflow, optionally register it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    data = parser.add_argument_group("data and model")
    data.add_argument("--data", required=True, help="featurized dataset folder (with a split)")
    data.add_argument("--model", default="mmoeex",
                      choices=["mmoeex", "mmoe", "shared-bottom", "single-task"],
                      help="MMoEEx, MMoE (no exclusive experts), one shared bottom, or one network "
                           "per task")
    data.add_argument("--alpha", type=float, default=0.5, help="share of exclusive experts (MMoEEx)")
    data.add_argument("--exclusivity", default="exclusive", choices=["exclusive", "exclusion"],
                      help="MMoEEx: an exclusive expert is open to one task only, or closed to "
                           "one task only")
    data.add_argument("--experts", type=int, default=8, help="number of experts E")
    data.add_argument("--expert-hidden", type=int, nargs="+", default=[256],
                      help="expert layer widths (the last is the expert output width)")
    add_architecture_arguments(data)

    optim = parser.add_argument_group("optimization")
    add_optimization_arguments(optim)
    optim.add_argument("--inner-lr", type=float, default=0.05, help="MAML-MTL inner learning rate beta")
    optim.add_argument("--second-order", action="store_true", help="second-order MAML-MTL")
    optim.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate")
    optim.add_argument("--epochs", type=int, default=20, help="passes over the training split")
    optim.add_argument("--patience", type=int, default=5,
                       help="stop after this many epochs without a better valid mean AP (0 = never)")
    optim.add_argument("--seed", type=int, default=0,
                       help="seeds initialization, data order, dropout and task sampling")

    cluster = parser.add_argument_group("Ray")
    cluster.add_argument("--num-workers", type=int, default=1, help="data-parallel Ray Train workers")
    cluster.add_argument("--use-gpu", action="store_true", help="one GPU per worker (NCCL)")
    cluster.add_argument("--cpus-per-worker", type=float, default=None,
                         help="CPUs per worker (default: a share that leaves room for data reads)")
    add_ray_arguments(cluster)
    cluster.add_argument("--storage", default="runs/ray",
                         help="Ray Train storage (checkpoints); shared storage on a cluster")
    cluster.add_argument("--run-name", default=None,
                         help="Ray run name; re-running with the same name resumes it")
    cluster.add_argument("--max-failures", type=int, default=2,
                         help="worker failures survived by restarting from the last checkpoint")

    add_tracking_arguments(parser.add_argument_group("MLflow"),
                           register_help="register the trained model under this name",
                           alias_help="alias for the registered version (e.g. champion)")


def run(args: argparse.Namespace) -> int:
    from models.config import ModelConfig
    from models.steps import StepConfig
    from pipelines.errors import UserError
    from pipelines.platform.ray_setup import connect_ray
    from pipelines.summary import format_key_values, format_table
    from pipelines.training import TrainConfig, run_training

    check_register_alias(args)
    try:
        config = TrainConfig(
            data_dir=args.data,
            model=ModelConfig(architecture=args.model, n_experts=args.experts,
                              expert_hidden=tuple(args.expert_hidden), tower_hidden=args.tower_hidden,
                              alpha=args.alpha, exclusivity=args.exclusivity, dropout=args.dropout,
                              seed=args.seed),
            step=StepConfig(optimizer=args.optimizer, inner_lr=args.inner_lr,
                            second_order=args.second_order, pos_weight=args.pos_weight),
            lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size,
            epochs=args.epochs, patience=args.patience, seed=args.seed,
            num_workers=args.num_workers, use_gpu=args.use_gpu,
            resources_per_worker=None if args.cpus_per_worker is None else
            {"CPU": args.cpus_per_worker, **({"GPU": 1.0} if args.use_gpu else {})},
            max_failures=args.max_failures, run_name=args.run_name, storage_path=args.storage,
            tracking_uri=args.tracking_uri, experiment_name=args.experiment)
    except ValueError as error:
        raise UserError(str(error)) from error
    connect_ray(args.address, args.num_cpus)
    result = run_training(config, register_name=args.register, alias=args.alias)

    summary = {
        "run name": result.run_name + (" (resumed)" if result.resumed else ""),
        "MLflow run": result.mlflow_run_id,
        "epochs": result.epochs_completed,
        "stopped early": result.stopped_early,
        "best epoch": result.best_epoch + 1,
        "best valid mean AP": result.best_valid_mean_ap,
        "samples/s per worker (last epoch)": result.samples_per_s_per_worker,
        "diversity score": result.diversity,
        "best checkpoint": result.best_checkpoint,
        "model": result.model_uri,
    }
    if result.registered_version is not None:
        target = f"models:/{args.register}@{args.alias}" if args.alias \
            else f"models:/{args.register}/{result.registered_version}"
        summary["registered"] = f"{target} (version {result.registered_version})"
    print(format_key_values(summary, title="train"))
    if result.test is not None:
        print(format_table([{"split": "test", "mean AP": result.test.mean_ap,
                             "mean ROC-AUC": result.test.mean_roc_auc,
                             "tasks scored": len(result.test.ap) - result.test.n_skipped,
                             "tasks skipped": result.test.n_skipped}]))
    return 0
