"""A private Ray head for tests that need a real cluster address (job
submission): `ray start --head --block` with its dashboard on loopback and
every port chosen free, in its own session and temp dir, stopped by its own
process ids.

Why not `ray stop`: it terminates every Ray process on the machine, other
people's included. Why its own --temp-dir: `ray start` records its address in
``<temp-dir>/ray_current_cluster`` and a bare ``ray.init()`` connects to the
address recorded in the *default* temp dir (/tmp/ray), so a head started with
another temp dir is never picked up by anyone's ``ray.init()``
(ray/_private/services.py: get_ray_address_from_environment).
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import ray  # noqa: F401  (Ray vendors psutil in ray/thirdparty_files and puts it on sys.path)

# isort: split
import psutil

VENV_BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class RayHead:
    dashboard_url: str  # the Job Submission API, http://127.0.0.1:PORT
    temp_dir: Path
    log_path: Path

    @property
    def gcs_address(self) -> str:
        """As `ray start` recorded it (Ray swaps loopback for the node's IP)."""
        return (self.temp_dir / "ray_current_cluster").read_text().strip()


def free_ports(count: int) -> list[int]:
    """Ports free on loopback now (held open together so they differ)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


@contextmanager
def ray_head(num_cpus: int = 2, start_timeout_s: float = 180.0) -> Iterator[RayHead]:
    """Start a private head; yield its addresses; stop exactly what it started."""
    # Short path: Ray's Unix sockets live under the temp dir (108-byte limit).
    temp_dir = Path(tempfile.mkdtemp(prefix="rayhead-", dir="/tmp"))
    log_path = temp_dir / "ray-start.log"
    gcs, dashboard, client, agent_listen, agent_grpc, metrics, runtime_env = free_ports(7)
    command = [
        str(VENV_BIN / "ray"), "start", "--head", "--block",
        f"--port={gcs}",
        "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
        f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent_listen}",
        f"--dashboard-agent-grpc-port={agent_grpc}", f"--metrics-export-port={metrics}",
        f"--runtime-env-agent-port={runtime_env}",
        f"--num-cpus={num_cpus}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
    ]
    env = {key: value for key, value in os.environ.items() if key != "RAY_ADDRESS"}
    # Jobs run `python -m pipelines ...`: the head's PATH must find this venv's
    # python, as on a cluster node whose environment is activated.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    env.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env,
                                   start_new_session=True)
    head = RayHead(f"http://127.0.0.1:{dashboard}", temp_dir, log_path)
    try:
        _wait_until_ready(process, head, start_timeout_s)
        yield head
    finally:
        _stop(process)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _wait_until_ready(process: subprocess.Popen, head: RayHead, timeout_s: float) -> None:
    """Up = the Job API answers and `ray start` wrote its address file (its last step)."""
    deadline = time.monotonic() + timeout_s
    while not (_job_api_answers(head.dashboard_url) and (head.temp_dir / "ray_current_cluster").exists()):
        if process.poll() is not None:
            raise RuntimeError(f"ray start exited {process.returncode}:\n{head.log_path.read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Ray head not ready after {timeout_s:.0f} s:\n{head.log_path.read_text()[-3000:]}")
        time.sleep(1.0)


def _job_api_answers(url: str) -> bool:
    import requests
    from ray.job_submission import JobSubmissionClient

    try:
        JobSubmissionClient(url).list_jobs()
    except (ConnectionError, RuntimeError, requests.ConnectionError):
        return False
    return True


def _stop(process: subprocess.Popen, grace_s: float = 30.0) -> None:
    """SIGTERM the `ray start --block` process (it then stops the processes it
    started), then SIGKILL whatever of its own descendants and its own process
    group is left. Nothing outside what this head started is touched."""
    try:
        descendants = psutil.Process(process.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        descendants = []
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    _, alive = psutil.wait_procs(descendants, timeout=10)
    for leftover in alive:
        leftover.kill()
    try:
        os.killpg(process.pid, signal.SIGKILL)  # its own session: pgid == its pid
    except ProcessLookupError:
        pass
