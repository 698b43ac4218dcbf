"""MLflow wiring of the training job: where runs go and what each run logs.

Everything goes through an explicit ``MlflowClient`` and run id, never the
fluent "active run": the per-epoch metrics are logged from the Ray Train
controller (another process) and the rest from the driver, and a Tune sweep
runs many trainings in one process.

Default store: ``sqlite:///runs/mlflow.db`` (or MLFLOW_TRACKING_URI) with
artifacts in ``runs/mlartifacts``; a relative SQLite path is made absolute so
every process on the node writes the same database.
"""
from __future__ import annotations

import io
import json
import logging
import os
import platform
import subprocess
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from featurize.dataset import DatasetInfo

logger = logging.getLogger(__name__)

DEFAULT_TRACKING_URI = "sqlite:///runs/mlflow.db"
#: Tag naming the Ray Train run (RunConfig name): a re-run with the same
#: name resumes the same MLflow run.
RAY_RUN_TAG = "pcba.ray_run_name"
PARENT_RUN_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
GIT_COMMIT_TAG = "git_commit"
MLFLOW_PARAM_LIMIT = 6000  # characters MLflow stores per param value
SQLITE_PREFIX = "sqlite:///"


def resolve_tracking_uri(uri: str | None = None) -> str:
    """``uri``, else MLFLOW_TRACKING_URI, else the local SQLite default; a
    relative SQLite path becomes absolute (its folder is created)."""
    uri = uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
    if uri.startswith(SQLITE_PREFIX):
        path = Path(uri[len(SQLITE_PREFIX):])
        if not path.is_absolute():
            path = Path.cwd() / path
        path.parent.mkdir(parents=True, exist_ok=True)
        uri = f"{SQLITE_PREFIX}{path}"
    return uri


def client(tracking_uri: str):  # -> mlflow.MlflowClient
    from mlflow import MlflowClient

    if not tracking_uri.startswith(SQLITE_PREFIX) or tracking_uri in _OPENED_SQLITE_STORES:
        return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    # MLflow creates a new SQLite store's tables on first use (the client's
    # constructor opens the tracking store, the first registry call the
    # registry's) without a lock: two jobs started together on a fresh
    # store (two compare runs side by side) could both try, and one failed
    # with "table experiments already exists". The first open in each
    # process holds an exclusive lock on <db>.lock.
    import fcntl

    path = Path(tracking_uri[len(SQLITE_PREFIX):])
    with open(path.with_name(path.name + ".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        mlflow_client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        mlflow_client.search_registered_models(max_results=1)
    _OPENED_SQLITE_STORES.add(tracking_uri)
    return mlflow_client


_OPENED_SQLITE_STORES: set[str] = set()
"""SQLite stores this process has opened (their tables exist)."""


@contextmanager
def use_tracking_uri(tracking_uri: str) -> Iterator[None]:
    """Point MLflow's process-wide tracking (and so registry) URI at
    ``tracking_uri`` for a call that only speaks the fluent API
    (``mlflow.pyfunc.log_model``; resolving ``models:/`` URIs, which MLflow
    does with the global registry URI whatever URI it is handed), then restore
    the process's setting exactly (MLflow's own helper would also drop a
    MLFLOW_TRACKING_URI set by the user)."""
    from mlflow.tracking._tracking_service.utils import _use_tracking_uri

    saved_env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(tracking_uri):
            yield
    finally:
        if saved_env is None:
            os.environ.pop("MLFLOW_TRACKING_URI", None)
        else:
            os.environ["MLFLOW_TRACKING_URI"] = saved_env


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """The experiment's id, creating it where absent (one created meanwhile by
    a job started alongside is taken as found); with a local SQLite store
    its artifacts go to ``mlartifacts/`` beside the database."""
    from mlflow.exceptions import MlflowException

    mlflow_client = client(tracking_uri)
    experiment = mlflow_client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    artifact_location = None
    if tracking_uri.startswith(SQLITE_PREFIX):
        root = Path(tracking_uri[len(SQLITE_PREFIX):]).parent / "mlartifacts"
        artifact_location = (root / name).resolve().as_uri()
    try:
        return mlflow_client.create_experiment(name, artifact_location=artifact_location)
    except MlflowException:
        # another job created it between the lookup and here
        experiment = mlflow_client.get_experiment_by_name(name)
        if experiment is None:
            raise
        return experiment.experiment_id


def start_run(tracking_uri: str, experiment: str, ray_run_name: str, *,
              parent_run_id: str | None = None,
              tags: Mapping[str, str] | None = None) -> tuple[str, bool]:
    """(run id, resumed): the unfinished MLflow run of an earlier attempt of
    the same Ray run name when there is one (the training resumes from its
    checkpoint, the metrics continue the same run), else a new run."""
    mlflow_client = client(tracking_uri)
    experiment_id = ensure_experiment(tracking_uri, experiment)
    earlier = mlflow_client.search_runs(
        [experiment_id], filter_string=f"tags.`{RAY_RUN_TAG}` = '{ray_run_name}'",
        order_by=["attributes.start_time DESC"], max_results=1)
    if earlier:
        run = earlier[0]
        mlflow_client.update_run(run.info.run_id, status="RUNNING")
        return run.info.run_id, True
    all_tags = {RAY_RUN_TAG: ray_run_name, RUN_NAME_TAG: ray_run_name,
                GIT_COMMIT_TAG: git_commit(), **(tags or {})}
    if parent_run_id:
        all_tags[PARENT_RUN_TAG] = parent_run_id
    run = mlflow_client.create_run(experiment_id, run_name=ray_run_name, tags=all_tags)
    return run.info.run_id, False


def log_params(tracking_uri: str, run_id: str, params: Mapping[str, Any]) -> None:
    """Log flat params; values already logged must agree (MLflow params are
    immutable), so a resumed run with a changed config is refused clearly."""
    from mlflow.entities import Param

    mlflow_client = client(tracking_uri)
    logged = mlflow_client.get_run(run_id).data.params
    fresh = {key: _param_text(value) for key, value in params.items()}
    changed = {key: (logged[key], value) for key, value in fresh.items()
               if key in logged and logged[key] != value}
    if changed:
        details = ", ".join(f"{key}: {old!r} -> {new!r}" for key, (old, new) in sorted(changed.items()))
        raise ValueError(f"run {run_id} was started with other settings ({details}); "
                         "resume with the same settings or use another run name")
    new = [Param(key, value) for key, value in fresh.items() if key not in logged]
    for start in range(0, len(new), 100):  # MLflow's batch limit
        mlflow_client.log_batch(run_id, params=new[start:start + 100])


def log_metrics(tracking_uri: str, run_id: str, metrics: Mapping[str, float],
                step: int | None = None) -> None:
    """Log finite numeric metrics in one batch (NaN is skipped: a task set
    with no scorable task has no mean, and MLflow charts choke on NaN)."""
    import time

    from mlflow.entities import Metric

    timestamp = int(time.time() * 1000)
    entries = [Metric(key, float(value), timestamp, step or 0) for key, value in metrics.items()
               if isinstance(value, (int, float, np.floating, np.integer))
               and np.isfinite(value)]
    for start in range(0, len(entries), 1000):
        client(tracking_uri).log_batch(run_id, metrics=entries[start:start + 1000])


def set_tags(tracking_uri: str, run_id: str, tags: Mapping[str, str]) -> None:
    from mlflow.entities import RunTag

    client(tracking_uri).log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def finish_run(tracking_uri: str, run_id: str, status: str = "FINISHED") -> None:
    client(tracking_uri).set_terminated(run_id, status=status)


def dataset_identity(info: DatasetInfo) -> dict[str, Any]:
    """What a model was trained on: path, row counts and the hash of the
    metadata a model must agree with (spec and task order)."""
    return {
        "data.path": str(Path(info.path).resolve()),
        "data.metadata_hash": info.metadata_hash,
        "data.rows": info.accepted,
        "data.rejected": info.rejected,
        **{f"data.rows.{split}": count for split, count in info.split_counts.items()},
        "data.n_tasks": info.n_tasks,
    }


def system_info() -> dict[str, str]:
    """Where a run ran (logged as tags)."""
    import ray
    import torch

    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return {
        "system.python": platform.python_version(),
        "system.platform": platform.platform(),
        "system.host": platform.node(),
        "system.cpus": str(os.cpu_count()),
        "system.torch": torch.__version__,
        "system.ray": ray.__version__,
        "system.cuda_device": cuda,
    }


def git_commit() -> str:
    """The project's git commit (``+dirty`` with uncommitted changes), or
    "unknown" outside a checkout."""
    root = Path(__file__).resolve().parents[2]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True,
                                text=True, check=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=root, capture_output=True, text=True, check=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}+dirty" if dirty else commit


def log_json(tracking_uri: str, run_id: str, payload: Any, artifact_file: str) -> None:
    client(tracking_uri).log_dict(run_id, payload, artifact_file)


def log_table_csv(tracking_uri: str, run_id: str, rows: Sequence[Mapping[str, Any]],
                  artifact_file: str) -> None:
    import pandas as pd

    buffer = io.StringIO()
    pd.DataFrame(list(rows)).to_csv(buffer, index=False)
    client(tracking_uri).log_text(run_id, buffer.getvalue(), artifact_file)


def log_files(tracking_uri: str, run_id: str, paths: Sequence[Path], artifact_dir: str) -> None:
    """Log local files as artifacts of ``run_id`` under ``artifact_dir``."""
    mlflow_client = client(tracking_uri)
    for path in paths:
        mlflow_client.log_artifact(run_id, str(path), artifact_path=artifact_dir)


def log_figure(tracking_uri: str, run_id: str, figure: Any, artifact_file: str) -> None:
    import matplotlib.pyplot as plt

    client(tracking_uri).log_figure(run_id, figure, artifact_file)
    plt.close(figure)


def diversity_heatmap(matrix: np.ndarray, score: float, title: str) -> Any:
    """Heatmap of the scaled expert distance matrix (MMoEEx paper, Fig. 3)."""
    figure, axis = _figure(max(4.0, 0.5 * len(matrix) + 2), max(3.5, 0.5 * len(matrix) + 1.5))
    image = axis.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0)
    axis.set_xlabel("expert")
    axis.set_ylabel("expert")
    axis.set_title(f"{title}: diversity {score:.3f}")
    figure.colorbar(image, ax=axis, label="scaled distance")
    return figure


def gate_usage_plot(usage: np.ndarray, tasks: Sequence[str],
                    exclusive_expert_task: Mapping[int, int] | None = None) -> Any:
    """Mean gate weight per task (rows) and expert (columns); exclusive
    experts are labelled with the task they belong to."""
    n_tasks, n_experts = usage.shape
    figure, axis = _figure(max(4.0, 0.6 * n_experts + 2), max(3.0, 0.12 * n_tasks + 1.5))
    image = axis.imshow(usage, aspect="auto", cmap="magma", vmin=0.0, vmax=1.0,
                        interpolation="nearest")
    labels = [f"{e}" + (f"\nexcl. {tasks[exclusive_expert_task[e]][:12]}"
                        if exclusive_expert_task and e in exclusive_expert_task else "")
              for e in range(n_experts)]
    axis.set_xticks(range(n_experts), labels, fontsize=7)
    if n_tasks <= 40:
        axis.set_yticks(range(n_tasks), [task[:24] for task in tasks], fontsize=6)
    axis.set_xlabel("expert")
    axis.set_ylabel(f"task ({n_tasks})")
    axis.set_title("gate usage per task (mean gate weight, test split)")
    figure.colorbar(image, ax=axis, label="mean gate weight")
    return figure


def _figure(width: float, height: float) -> tuple[Any, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(min(width, 16.0), min(height, 20.0)), dpi=110)
    figure.set_layout_engine("tight")
    return figure, axis


def _param_text(value: Any) -> str:
    if isinstance(value, (list, tuple, dict)):
        value = json.dumps(value)
    text = str(value)
    return text if len(text) <= MLFLOW_PARAM_LIMIT else text[:MLFLOW_PARAM_LIMIT - 3] + "..."
