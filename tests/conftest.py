"""Shared fixtures: one real local Ray instance for the whole session (Ray
start-up costs about 13 s on 2 cores), real MLflow SQLite stores, real
molecules shipped with RDKit."""
from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

# Quiet, loopback-only Ray for tests; must be set before ray is imported.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
# Ray Train's controller collects its workers' reports (and registers their
# checkpoints) once per poll, every 2 s by default: longer than a test epoch,
# so the worker-kill test, which waits for a registered checkpoint before it
# kills a worker in the next epoch, would often find that epoch over. Runs
# also end sooner. Set before Ray starts: its processes inherit it.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")

SHARED_PCBA_SUBSET = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "pcba-subset"


@pytest.fixture(scope="session")
def ray_local() -> Iterator[None]:
    """A real local Ray instance (num_cpus=2) shared by every Ray test."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, log_to_driver=False, include_dashboard=False,
                 configure_logging=False)
    yield
    ray.shutdown()


@pytest.fixture()
def mlflow_uri(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A fresh real MLflow SQLite tracking store + registry per test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.chdir(tmp_path)  # default artifact root ./mlruns lands in tmp_path
    return uri


@pytest.fixture(scope="session")
def nci_smiles() -> list[str]:
    """About 5,000 real NCI molecules shipped in the rdkit wheel."""
    from rdkit import RDConfig

    path = Path(RDConfig.RDDataDir) / "NCI" / "first_5K.smi"
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


@pytest.fixture(scope="session")
def pcba_subset_dir() -> Path:
    """The real PCBA subset in ../shared; tests using it skip where it is absent."""
    if not (SHARED_PCBA_SUBSET / "tasks.csv").exists():
        pytest.skip(f"real PCBA subset not found at {SHARED_PCBA_SUBSET}")
    return SHARED_PCBA_SUBSET


@pytest.fixture(scope="session")
def panel_csv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A raw 2,000-molecule, 128-task panel CSV (seed 0) with its 5 injected bad rows."""
    from featurize.synthetic.panel import write_panel_csv

    path = tmp_path_factory.mktemp("panel") / "panel.csv"
    write_panel_csv(path, 2000, n_tasks=128, seed=0)
    return path


@pytest.fixture(scope="session")
def panel_dataset(panel_csv: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """``panel_csv`` featurized in-process (Morgan radius 2, 2048 bits), scaffold
    split; its 5 bad rows are in rejects.parquet."""
    from featurize.pipeline import featurize_file

    out_dir = tmp_path_factory.mktemp("panel_dataset") / "dataset"
    featurize_file(panel_csv, out_dir, id_col="mol_id", split="scaffold", backend="local",
                   progress=False)
    return out_dir
