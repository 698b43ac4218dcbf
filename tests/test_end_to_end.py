"""The main job end to end at toy size: panel -> featurize -> Ray Train ->
MLflow registry -> screening with the model pulled back by name@alias; then
the same command again, which must find every stage done."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.cli import main

pytestmark = [pytest.mark.slow, pytest.mark.ray]

TINY = ["--molecules", "300", "--tasks", "6", "--library-size", "400", "--epochs", "1",
        "--bits", "1024", "--experts", "2", "--expert-hidden", "16", "--batch-size", "64",
        "--top-k", "5"]


def test_run_whole_pipeline_then_rerun_skips_everything(
        ray_local: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    from featurize.dataset import read_dataset_info
    from pipelines.serving.registry import get_alias_version

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # restored after the test
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)  # main() sets it
    out = tmp_path / "e2e"

    assert main(["run", "--out", str(out), *TINY]) == 0
    first, first_err = capsys.readouterr()
    assert "Downloading artifacts" not in first_err  # MLflow's per-download bars stay off

    info = read_dataset_info(out / "features")
    panel_rows = len(pd.read_csv(out / "panel.csv"))
    assert info.input_rows == panel_rows == info.accepted + info.rejected and info.rejected >= 1
    uri = f"sqlite:///{out.resolve() / 'mlflow.db'}"
    champion = get_alias_version("pcba-mmoeex", "champion", tracking_uri=uri)
    assert champion is not None
    scores = pd.read_parquet(out / "screen" / "scores")
    rejects = pd.read_parquet(out / "screen" / "rejects.parquet")
    assert len(scores) + len(rejects) == 400
    assert [c for c in scores.columns if c.startswith("PANEL-")] == info.tasks
    assert len(pd.read_parquet(out / "screen" / "hits.parquet")) == 5 * len(info.tasks)
    for stage in ("data", "featurize", "train + register", "library", "screen"):
        assert stage in first
    assert f"mlflow ui --backend-store-uri {uri}" in first

    assert main(["run", "--out", str(out), *TINY]) == 0
    second = capsys.readouterr().out
    assert second.count("skipped (already done)") == 5, second
    assert get_alias_version("pcba-mmoeex", "champion", tracking_uri=uri).version == champion.version
