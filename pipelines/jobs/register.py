"""`python -m pipelines register --run-id ID --name NAME [--alias ALIAS]`:
register a training run's SMILES-in pyfunc in the MLflow model registry."""
from __future__ import annotations

import argparse

from pipelines.names import DEFAULT_MODEL_NAME
from pipelines.options import add_tracking_uri_argument

HELP = "register a training run's model in the MLflow registry (optionally under an alias)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--run-id", required=True, help="MLflow run id of a finished training run")
    parser.add_argument("--name", default=DEFAULT_MODEL_NAME, help="registered model name")
    parser.add_argument("--alias", default=None, help="alias to point at the new version (e.g. champion)")
    parser.add_argument("--tag", action="append", default=[], metavar="KEY=VALUE",
                        help="extra version tag (repeatable)")
    add_tracking_uri_argument(parser)


def run(args: argparse.Namespace) -> int:
    from pipelines.errors import UserError
    from pipelines.platform.tracking import resolve_tracking_uri
    from pipelines.serving.registry import register_model
    from pipelines.text_tables import format_key_values

    bad = [tag for tag in args.tag if "=" not in tag]
    if bad:
        raise UserError(f"--tag takes KEY=VALUE, got {', '.join(bad)}")
    tags = dict(tag.split("=", 1) for tag in args.tag)
    uri = resolve_tracking_uri(args.tracking_uri)
    version = register_model(args.run_id, args.name, alias=args.alias, tags=tags, tracking_uri=uri)
    target = f"models:/{args.name}@{args.alias}" if args.alias else f"models:/{args.name}/{version}"
    print(format_key_values({"model": args.name, "version": version, "load with": target,
                             "run": args.run_id, "tracking": uri}, title="register"))
    return 0
