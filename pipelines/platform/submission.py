"""Send any pipeline job to a Ray cluster through Ray's Job Submission API.

The equivalent of ``ray job submit --working-dir . -- python -m pipelines
<job> ...``, as library code the ``submit`` job (and schedulers calling it)
use: the project folder is uploaded as the job's ``working_dir`` (minus the
virtual environment, runs and data), optionally with the project's exact pins
as the job's pip environment, and the entrypoint is the same CLI people run
locally. Inside the job Ray sets ``RAY_ADDRESS``, so the job's own
``ray.init()`` joins the cluster it was sent to.
"""
from __future__ import annotations

import asyncio
import logging
import os
import shlex
import sys
import time
import tomllib
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, TypeVar

from pipelines.errors import UserError

logger = logging.getLogger(__name__)

T = TypeVar("T")

# Never uploaded with the code: environments, outputs and data are large and
# machine-specific (gitignore syntax, relative to the working dir). Ray also
# honours the project's .gitignore; these hold when the folder is no checkout.
WORKING_DIR_EXCLUDES: tuple[str, ...] = (
    ".venv/", ".git/", "runs/", "data/", "mlruns/", "mlruns.db", "*.parquet",
    "__pycache__/", ".pytest_cache/", ".ruff_cache/", "*.egg-info/",
)

TERMINAL_STATUSES = frozenset({"SUCCEEDED", "FAILED", "STOPPED"})


@dataclass(frozen=True)
class SubmittedJob:
    """What became of one submission: its id and, when waited for, its end."""

    submission_id: str
    status: str
    message: str | None = None

    @property
    def succeeded(self) -> bool:
        return self.status == "SUCCEEDED"


def project_pins(pyproject: Path) -> list[str]:
    """The exact runtime pins of pyproject.toml's ``[project].dependencies``.

    These are what scripts/bootstrap.sh installs locally, so a job that ships
    them as its pip runtime env runs the same versions on the cluster.
    """
    if not pyproject.is_file():
        raise UserError(f"--pip-pins needs {pyproject}, which does not exist")
    dependencies = tomllib.loads(pyproject.read_text())["project"]["dependencies"]
    loose = [requirement for requirement in dependencies if "==" not in requirement]
    if loose:
        raise UserError(f"{pyproject}: not exact pins (name==version): {loose}")
    return list(dependencies)


def build_entrypoint(job_args: Sequence[str]) -> str:
    """The shell command the cluster runs: the same CLI as locally."""
    if not job_args:
        raise UserError("nothing to submit: give the job after '--', e.g. -- screen --model ...")
    if job_args[0] == "submit":
        raise UserError("a submitted job cannot be 'submit' itself")
    return shlex.join(["python", "-m", "pipelines", *job_args])


def build_runtime_env(
    working_dir: Path,
    pip_requirements: Sequence[str] | None = None,
    env_vars: Mapping[str, str] | None = None,
) -> dict[str, object]:
    """A Ray runtime_env: code as working_dir, optional pip pins and env vars."""
    if not working_dir.is_dir():
        raise UserError(f"--working-dir {working_dir} is not a folder")
    runtime_env: dict[str, object] = {
        "working_dir": str(working_dir.resolve()),
        "excludes": list(WORKING_DIR_EXCLUDES),
    }
    if pip_requirements:
        runtime_env["pip"] = list(pip_requirements)
    if env_vars:
        runtime_env["env_vars"] = dict(env_vars)
    return runtime_env


def parse_env_vars(assignments: Sequence[str]) -> dict[str, str]:
    """``NAME=VALUE`` strings (the repeatable --env flag) -> a mapping."""
    env_vars = {}
    for assignment in assignments:
        name, sep, value = assignment.partition("=")
        if not sep or not name:
            raise UserError(f"--env {assignment!r}: expected NAME=VALUE")
        env_vars[name] = value
    return env_vars


#: Ray's JobSubmissionClient prefers these over the address it is given.
ADDRESS_VARIABLES = ("RAY_API_SERVER_ADDRESS", "RAY_ADDRESS")


def connect(address: str):
    """A JobSubmissionClient for the dashboard at ``address`` (http://HOST:8265).

    Ray's client lets RAY_API_SERVER_ADDRESS / RAY_ADDRESS override its
    ``address`` argument; an explicit address must win, so they are hidden
    while the client resolves it.
    """
    from ray.job_submission import JobSubmissionClient

    saved = {name: os.environ.pop(name) for name in ADDRESS_VARIABLES if name in os.environ}
    try:
        return JobSubmissionClient(address)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise UserError(f"no Ray Job Submission server answers at {address}: {error}") from error
    finally:
        os.environ.update(saved)


def submit_job(
    address: str,
    job_args: Sequence[str],
    runtime_env: Mapping[str, object],
    wait: bool = True,
    log_stream: TextIO | None = None,
    poll_seconds: float = 1.0,
) -> SubmittedJob:
    """Submit ``python -m pipelines <job_args>``; with ``wait``, stream its logs
    to ``log_stream`` (default: the current ``sys.stdout``) until it ends and
    return its final status.

    The submission id is chosen here, so a submission whose reply was lost
    (the dashboard dropped the connection) is retried without running the job
    twice: a retry first asks whether that id already exists.
    """
    client = connect(address)
    entrypoint = build_entrypoint(job_args)
    submission_id = f"pipelines-{job_args[0]}-{uuid.uuid4().hex[:12]}"

    def submit_once() -> str:
        if _exists(client, submission_id):
            return submission_id
        return client.submit_job(entrypoint=entrypoint, runtime_env=dict(runtime_env),
                                 submission_id=submission_id)

    call_with_retries(submit_once, f"submitting {entrypoint!r} to {address}")
    logger.info("submitted %s to %s as %s", entrypoint, address, submission_id)
    if not wait:
        return SubmittedJob(submission_id, _status(client, submission_id))
    stream = log_stream or sys.stdout
    try:
        asyncio.run(_stream_logs(client, submission_id, stream))
        streamed_all = True
    except (RuntimeError, OSError) as error:  # aiohttp's errors are OSError subclasses
        logger.warning("log stream of %s broke (%s); printing its log when it ends",
                       submission_id, error)
        streamed_all = False
    # The log stream closes when the driver exits; the status may lag a moment.
    while (status := _status(client, submission_id)) not in TERMINAL_STATUSES:
        time.sleep(poll_seconds)
    if not streamed_all:
        stream.write(call_with_retries(lambda: client.get_job_logs(submission_id), "reading the job's log"))
    info = call_with_retries(lambda: client.get_job_info(submission_id), "reading the job's end")
    return SubmittedJob(submission_id, status, info.message)


def _exists(client, submission_id: str) -> bool:
    """Whether the cluster knows ``submission_id`` (RuntimeError = not found)."""
    try:
        client.get_job_info(submission_id)
    except RuntimeError:
        return False
    return True


def _status(client, submission_id: str) -> str:
    return str(call_with_retries(lambda: client.get_job_status(submission_id), "polling the job's status"))


def call_with_retries(call: Callable[[], T], what: str, attempts: int = 6, first_wait_s: float = 1.0) -> T:
    """``call()``, retried with exponential backoff while the dashboard drops
    connections: a busy head resets or closes HTTP connections now and then
    (``RemoteDisconnected``), and one dropped poll must not fail a job that
    is still running fine on the cluster."""
    import requests

    attempt = 1
    while True:
        try:
            return call()
        except (requests.ConnectionError, ConnectionError) as error:
            if attempt == attempts:
                raise UserError(f"the Ray Job API did not answer {what} after {attempts} tries: "
                                f"{error}") from error
            wait_s = first_wait_s * 2 ** (attempt - 1)
            logger.warning("%s: connection dropped (%s); retrying in %.0f s", what, error, wait_s)
            time.sleep(wait_s)
            attempt += 1


async def _stream_logs(client, submission_id: str, log_stream: TextIO) -> None:
    async for chunk in client.tail_job_logs(submission_id):
        log_stream.write(chunk)
        log_stream.flush()
