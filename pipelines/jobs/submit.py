"""`python -m pipelines submit --address http://HOST:8265 -- <job> <args...>`.

Sends any job of this CLI to a Ray cluster (Ray Job Submission API), with this
folder as its working_dir, then follows its logs until it ends; the exit code
is the job's (0 when it succeeded). Schedulers (cron, systemd timers, Airflow)
call this command: see docs/scheduling.md.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path

HELP = "send a job to a Ray cluster (Job Submission API), stream its logs, exit with its status"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--address", default=os.environ.get("RAY_API_SERVER_ADDRESS") or os.environ.get("RAY_ADDRESS"),
        help="the cluster's dashboard (Job API), e.g. http://HOST:8265 "
             "(default: RAY_API_SERVER_ADDRESS, else RAY_ADDRESS)",
    )
    parser.add_argument("--no-wait", action="store_true",
                        help="return once submitted (print the submission id) instead of following it")
    parser.add_argument("--working-dir", type=Path, default=Path("."),
                        help="code uploaded with the job (.venv, runs, data and .gitignore'd files excluded)")
    parser.add_argument("--pip-pins", action="store_true",
                        help="install pyproject.toml's exact pins as the job's pip runtime env "
                             "(for clusters whose nodes were not built from environment.yml)")
    parser.add_argument("--env", action="append", default=[], metavar="NAME=VALUE",
                        help="environment variable for the job (repeatable), e.g. MLFLOW_TRACKING_URI=...")
    parser.add_argument("job_args", nargs=argparse.REMAINDER, metavar="-- <job> <args...>",
                        help="the job to run on the cluster and its arguments")


def run(args: argparse.Namespace) -> int:
    from pipelines.errors import UserError
    from pipelines.platform.submission import (
        build_runtime_env,
        parse_env_vars,
        project_pins,
        submit_job,
    )
    from pipelines.text_tables import format_key_values

    if not args.address:
        raise UserError("no cluster given: pass --address http://HOST:8265 or set RAY_ADDRESS")
    job_args = args.job_args[1:] if args.job_args[:1] == ["--"] else args.job_args
    pins = project_pins(args.working_dir / "pyproject.toml") if args.pip_pins else None
    runtime_env = build_runtime_env(args.working_dir, pins, parse_env_vars(args.env))
    job = submit_job(args.address, job_args, runtime_env, wait=not args.no_wait)
    summary = {"submission id": job.submission_id, "status": job.status, "cluster": args.address}
    if args.no_wait:
        summary["follow"] = f"ray job logs --follow --address {args.address} {job.submission_id}"
    elif job.message:
        summary["message"] = job.message
    print(format_key_values(summary, title="submit"))
    return 0 if args.no_wait or job.succeeded else 1
