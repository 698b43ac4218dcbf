"""Flags several jobs share, defined once so that their names, defaults and
help read the same in every job's ``--help``."""
from __future__ import annotations

import argparse
import os

ArgumentGroup = argparse.ArgumentParser | argparse._ArgumentGroup


def add_ray_arguments(group: ArgumentGroup) -> None:
    """``--address`` / ``--num-cpus``: a cluster to join, or the size of the
    local Ray a job starts when there is none (pipelines/platform/ray_setup.py)."""
    group.add_argument("--address", default=os.environ.get("RAY_ADDRESS"),
                       help="Ray cluster address (default: RAY_ADDRESS, else a local Ray)")
    group.add_argument("--num-cpus", type=int, default=None,
                       help="CPUs of the local Ray started when there is no --address (default: all)")


def add_tracking_uri_argument(group: ArgumentGroup) -> None:
    group.add_argument("--tracking-uri", default=None,
                       help="MLflow tracking/registry URI (default: MLFLOW_TRACKING_URI, "
                            "else sqlite:///runs/mlflow.db)")


def add_tracking_arguments(group: ArgumentGroup, *, register_help: str, alias_help: str) -> None:
    """``--tracking-uri``, ``--experiment``, ``--register NAME``, ``--alias``
    of the jobs that train models (train, tune)."""
    add_tracking_uri_argument(group)
    group.add_argument("--experiment", default="pcba-mmoeex", help="MLflow experiment")
    group.add_argument("--register", default=None, metavar="NAME", help=register_help)
    group.add_argument("--alias", default=None, help=alias_help)


def add_architecture_arguments(group: ArgumentGroup) -> None:
    """``--tower-hidden`` / ``--dropout``: model settings of train and of every tune trial."""
    group.add_argument("--tower-hidden", type=int, default=32, help="tower hidden width (0 = linear)")
    group.add_argument("--dropout", type=float, default=0.1, help="dropout in experts and towers")


def add_optimization_arguments(group: ArgumentGroup) -> None:
    """The step settings of train and of every tune trial."""
    group.add_argument("--optimizer", default="maml-mtl", choices=["maml-mtl", "plain"],
                       help="maml-mtl: the two-step (meta-learning) update that balances tasks; "
                            "plain: one Adam step on the mean task loss")
    group.add_argument("--batch-size", type=int, default=512, help="rows per step and worker")
    group.add_argument("--weight-decay", type=float, default=0.0, help="Adam weight decay")
    group.add_argument("--pos-weight", type=float, default=None,
                       help="weight of positive labels in the BCE (default: 1; the paper's PCBA "
                            "runs use 100)")


def check_register_alias(args: argparse.Namespace) -> None:
    """An alias names a registered version: without --register there is none."""
    from pipelines.errors import UserError

    if args.alias and not args.register:
        raise UserError("--alias needs --register NAME")
