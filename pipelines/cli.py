"""One CLI for every job: `python -m pipelines <job> [options]`.

Each job lives in its own module under pipelines/jobs/ (chemprop's
one-command-one-module layout). A job module defines:

- ``HELP``: one line shown by ``python -m pipelines --help``;
- ``add_arguments(parser)``: its flags (argparse);
- ``run(args) -> int``: parses nothing, calls library code, prints a summary.

Job modules import heavy libraries (Ray, MLflow, torch) inside ``run`` so that
``--help`` stays instant. Errors a user can fix (bad input, missing file,
spec mismatch) are raised as :class:`pipelines.errors.UserError` (or the
input errors of featurize/) and end the process with one line and exit code 2.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
from collections.abc import Sequence

from featurize.errors import InputDataError
from pipelines.errors import UserError

# job name -> module; order is the order shown in --help.
JOBS: dict[str, str] = {
    "panel": "pipelines.jobs.panel",
    "featurize": "pipelines.jobs.featurize",
    "train": "pipelines.jobs.train",
    "register": "pipelines.jobs.register",
    "tune": "pipelines.jobs.tune",
    "compare": "pipelines.jobs.compare",
    "screen": "pipelines.jobs.screen",
    "submit": "pipelines.jobs.submit",
    "run": "pipelines.jobs.run",
}


class _DefaultsHelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends "(default: X)" only where X tells something: not for flags
    that are off by default, options that are unset unless given, repeatable
    options that start empty, or help that already says its default."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        unset = action.default is None or action.default is False or action.default == []
        if unset or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines",
        description="PCBA-128 multi-task pipeline: featurize, train (Ray Train), "
        "tune (Ray Tune), register and screen (MLflow).",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    subparsers = parser.add_subparsers(dest="job", required=True, metavar="<job>")
    for name, module_name in JOBS.items():
        module = importlib.import_module(module_name)
        job_parser = subparsers.add_parser(
            name, help=module.HELP, description=module.HELP, formatter_class=_DefaultsHelpFormatter,
        )
        module.add_arguments(job_parser)
        job_parser.set_defaults(run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    # MLflow draws a progress bar for every artifact download: dozens of lines
    # per model pull in a scheduled job's log. The jobs show their own
    # progress; MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=true brings MLflow's back.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except (UserError, InputDataError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
