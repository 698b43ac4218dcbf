"""The submission path for real: a private Ray head (tests/ray_head.py),
a featurize job sent through the Job Submission API with this checkout as
its working_dir, its output checked, the head stopped by its own pids."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest
from ray_head import ray_head

from featurize.dataset import read_dataset_info
from pipelines.cli import main

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]


def test_submit_featurize_job_to_a_ray_head(tmp_path: Path, nci_smiles: list[str],
                                            capsys: pytest.CaptureFixture[str]) -> None:
    from ray._private.services import get_ray_address_from_environment

    library = tmp_path / "molecules.csv"
    pd.DataFrame({"smiles": nci_smiles[:40] + ["not a smiles"]}).to_csv(library, index=False)
    with ray_head() as head:
        # A bare ray.init() anywhere on this machine would not join this head.
        assert get_ray_address_from_environment(None, None) != head.gcs_address
        succeeded = main(["submit", "--address", head.dashboard_url, "--working-dir", str(ROOT),
                          "--", "featurize", "--input", str(library), "--out", str(tmp_path / "fp"),
                          "--bits", "1024", "--split", "none", "--no-progress"])
        followed = capsys.readouterr().out
        failed = main(["submit", "--address", head.dashboard_url, "--working-dir", str(ROOT),
                       "--", "featurize", "--input", str(tmp_path / "missing.csv"),
                       "--out", str(tmp_path / "never")])
        failed_output = capsys.readouterr().out

    assert succeeded == 0, followed
    info = read_dataset_info(tmp_path / "fp")
    assert (info.input_rows, info.accepted, info.rejected, info.spec.n_bits) == (41, 40, 1, 1024)
    assert "Running entrypoint for job" in followed  # the job's log, streamed back
    assert "SUCCEEDED" in followed
    assert failed == 1 and "FAILED" in failed_output
    assert "input file not found" in failed_output  # the job's own one-line error, streamed
    assert not (tmp_path / "never").exists()
