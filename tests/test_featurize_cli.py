"""`python -m pipelines featurize`: flags reach featurize/, the summary has
the three counts, errors exit 2 with one line."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from featurize.dataset import read_dataset_info
from featurize.spec import FingerprintSpec
from pipelines.cli import main


def test_featurize_job(tmp_path: Path, nci_smiles: list[str],
                       capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "lib.smi").write_text("\n".join(nci_smiles[:120] + ["C1CC( bad"]) + "\n")
    argv = ["featurize", "--input", str(tmp_path / "lib.smi"), "--out", str(tmp_path / "ds"),
            "--radius", "3", "--bits", "512", "--counts", "--split", "scaffold", "--no-progress"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    info = read_dataset_info(tmp_path / "ds")
    assert info.spec == FingerprintSpec(radius=3, n_bits=512, counts=True)
    assert (info.input_rows, info.accepted, info.rejected) == (121, 120, 1)
    for line in ("input rows", "accepted", "rejected", "rejects.parquet", "unparsable SMILES"):
        assert line in out
    assert main(argv) == 0
    assert "already up to date" in capsys.readouterr().out
    assert main([*argv[:-2], "random", "--no-progress"]) == 2  # another dataset is there
    assert "--overwrite" in capsys.readouterr().err


def test_from_arrays_mode(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = np.random.default_rng(0)
    np.save(tmp_path / "x.npy", rng.integers(0, 2, (30, 16)).astype(np.float64))
    np.save(tmp_path / "y.npy", rng.integers(0, 2, (30, 2)).astype(np.float64))
    np.save(tmp_path / "w.npy", rng.integers(0, 2, (30, 2)).astype(np.float64))
    common = ["featurize", "--from-arrays", str(tmp_path / "x.npy"), "--out", str(tmp_path / "ds"),
              "--no-progress"]
    assert main(common) == 2
    assert "--labels, --weights, --tasks" in capsys.readouterr().err
    assert main([*common, "--labels", str(tmp_path / "y.npy"), "--weights", str(tmp_path / "w.npy"),
                 "--tasks", "t1,t2", "--foreign-spec", "test bits"]) == 0
    info = read_dataset_info(tmp_path / "ds")
    assert info.tasks == ["t1", "t2"] and info.spec.kind == "imported"
    assert info.spec.source == "test bits" and info.accepted == 30


@pytest.mark.parametrize(("name", "content", "message"), [
    ("ragged.csv", b"smiles,t1\nCCO,1\nCCN\n", "bad CSV line"),
    ("empty.csv", b"", "empty file"),
    ("folder", None, "is a directory"),
    ("absent.csv", None, "input file not found"),
])
def test_unreadable_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                name: str, content: bytes | None,
                                                message: str) -> None:
    path = tmp_path / name
    if content is not None:
        path.write_bytes(content)
    elif name == "folder":
        path.mkdir()
    assert main(["featurize", "--input", str(path), "--out", str(tmp_path / "ds"),
                 "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(path) in err and message in err
