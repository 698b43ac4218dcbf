"""`python -m pipelines tune --data DIR --num-samples N [...]`: a Ray Tune sweep
over the optimizer step, alpha, E, the inner and outer learning rates and the
expert width, each trial a run of the training job
(pipelines/experiments/sweeps/)."""
from __future__ import annotations

import argparse
import time

from pipelines.options import (
    MLFLOW,
    MODEL,
    STEP,
    TRAINING,
    add_option_groups,
    add_ray_arguments,
    add_register_arguments,
)

HELP = "sweep the step, alpha, E and the learning rates with Ray Tune (ASHA), register the best model"

#: The settings every trial shares (the searched ones are the trials' own).
#: The default network is train's, MMoEEx, so a sweep searches alpha (its
#: default space puts a quarter of the draws at alpha 0, MMoE); the step is
#: drawn unless --optimizer fixes it.
GROUPS = (MODEL, STEP.with_help("optimizer", "fix every trial's optimizer step (default: drawn from the "
                                             "search space: plain or maml-mtl)"),
          TRAINING.without("ensemble"), MLFLOW)  # a trial is one network


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sweep = parser.add_argument_group("sweep")
    sweep.add_argument("--data", required=True, help="featurized dataset folder (with a split)")
    sweep.add_argument("--num-samples", type=int, required=True, help="trials to run")
    sweep.add_argument("--max-concurrent", type=int, default=None,
                       help="trials at once (default: what the cluster's CPUs or GPUs allow)")
    sweep.add_argument("--search-space", default=None, metavar="FILE",
                       help="YAML/JSON overriding parameters of the default space "
                            "(tuning/search_space.py), which draws the optimizer step (plain or "
                            "maml-mtl; --optimizer fixes it) and the inner lr for MAML-MTL trials; "
                            "parameters the architecture or steps do not have are left out")
    sweep.add_argument("--searcher", default="random", choices=["random", "optuna"],
                       help="random search, or Optuna's TPE")
    sweep.add_argument("--scheduler", default="asha", choices=["asha", "none"],
                       help="ASHA stops poor trials early (its budget is --epochs); none runs "
                            "every trial to the end")
    sweep.add_argument("--grace-period", type=int, default=None,
                       help="epochs every trial runs before ASHA may stop it (default: 2, or --epochs "
                            "if smaller; after one epoch valid AP ranks trials poorly: docs/results.md, sweeps)")
    sweep.add_argument("--reduction-factor", type=float, default=2.0,
                       help="ASHA keeps the top 1/factor of trials at each rung")
    sweep.add_argument("--name", default=None, help="sweep name (default tune-<time>)")
    sweep.add_argument("--storage", default="runs/tune", help="where sweeps keep their state")
    sweep.add_argument("--resume", action="store_true",
                       help="continue the interrupted sweep --name (finished trials are kept)")
    add_option_groups(parser, GROUPS)

    cluster = parser.add_argument_group("Ray")
    cluster.add_argument("--num-workers-per-trial", type=int, default=1,
                         help="Ray Train workers of each trial")
    cluster.add_argument("--cpus-per-trial", type=float, default=None,
                         help="CPUs of a trial's workers in all (default: a share of the cluster)")
    cluster.add_argument("--gpus-per-trial", type=float, default=0.0,
                         help="GPUs of a trial's workers in all (fractions share a GPU)")
    add_ray_arguments(cluster)

    add_register_arguments(parser.add_argument_group("registry"),
                           register_help="register the best trial's model under this name",
                           alias_help="point this alias at it if it beats the alias's version on the same data")


def run(args: argparse.Namespace) -> int:
    from pipelines.errors import UserError
    from pipelines.experiments.sweeps.config import SweepConfig
    from pipelines.experiments.sweeps.report import trial_rows
    from pipelines.experiments.sweeps.run import run_sweep
    from pipelines.options import build_train_config, check_register_alias, resolve_options
    from pipelines.platform.ray_setup import connect_ray
    from pipelines.text_tables import format_key_values, format_table
    from tuning.schedulers import SchedulerConfig
    from tuning.search_space import SearchSpace

    check_register_alias(args)
    if args.resume and not args.name:
        raise UserError("--resume needs the --name of the sweep to continue")
    values = resolve_options(args, GROUPS, not_used=(TRAINING,))  # a train file's ensemble: skipped
    base = build_train_config(values, data_dir=args.data, num_workers=args.num_workers_per_trial,
                              use_gpu=args.gpus_per_trial > 0, max_failures=0)
    try:
        space = SearchSpace.from_file(args.search_space)
        if "optimizer" in values:  # set on the command line or in --config: not searched
            space = space.with_step(base.step.optimizer)
        config = SweepConfig(
            base=base, name=args.name or f"tune-{time.strftime('%Y%m%d-%H%M%S')}",
            storage=args.storage, num_samples=args.num_samples, max_concurrent=args.max_concurrent,
            searcher=args.searcher,
            scheduler=SchedulerConfig(kind=args.scheduler, max_epochs=base.epochs,
                                      grace_period=args.grace_period if args.grace_period is not None
                                      else min(2, base.epochs),
                                      reduction_factor=args.reduction_factor),
            space=space.applicable_to(base.model, base.step),
            cpus_per_trial=args.cpus_per_trial, gpus_per_trial=args.gpus_per_trial, seed=base.seed)
    except ValueError as error:
        raise UserError(str(error)) from error
    connect_ray(args.address, args.num_cpus)
    result = run_sweep(config, resume=args.resume, register_name=args.register, alias=args.alias)

    best_id = result.best.trial_id if result.best else None
    print(format_table(trial_rows(result.trials, best_id), title=f"tune: sweep {result.name}"))
    summary: dict[str, object] = {
        "sweep": result.name + (" (resumed)" if result.resumed else ""),
        "state": result.experiment_dir,
        "MLflow parent run": result.parent_run_id,
    }
    if result.interrupted:
        summary["interrupted"] = f"continue with: --name {result.name} --storage {args.storage} --resume"
        print(format_key_values(summary))
        return 130
    if result.best is None:
        summary["best trial"] = "none finished"
    else:
        summary.update({"best trial": f"{result.best.trial_id} (MLflow run {result.best.mlflow_run_id})",
                        "best valid mean AP": result.best.best_valid_mean_ap,
                        **{f"its {key.replace('_', ' ')}": value
                           for key, value in result.best_test_metrics.items()}})
    if result.registered_version is not None and result.promotion is not None:
        target = f"{args.register} version {result.registered_version}"
        summary["registered"] = (f"{target} as @{args.alias}" if result.promotion.promote
                                 else f"{target}, without an alias")
        summary["why"] = result.promotion.reason
    print(format_key_values(summary))
    return 0
