"""The MLflow store as several jobs share it."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OPEN_AND_CREATE = ("import sys; from pipelines.platform.tracking import ensure_experiment; "
                   "print(ensure_experiment(sys.argv[1], 'side-by-side'))")


def test_jobs_started_together_on_a_fresh_sqlite_store_all_open_it(tmp_path: Path) -> None:
    """Jobs run side by side (the README starts two compare runs at once)
    open one fresh SQLite store, whose tables MLflow creates on first use,
    and create the same experiment: every one succeeds, and all get the
    same experiment."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    jobs = [subprocess.Popen([sys.executable, "-c", OPEN_AND_CREATE, uri], cwd=ROOT, text=True,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(3)]
    outputs = [job.communicate(timeout=300) for job in jobs]
    for job, (_, stderr) in zip(jobs, outputs):
        assert job.returncode == 0, stderr[-3000:]
    assert len({stdout.strip() for stdout, _ in outputs}) == 1
