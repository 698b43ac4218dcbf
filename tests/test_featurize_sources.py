"""Readers of every input format, and the PCBA-128 checks (on a small
PCBA-shaped file made here: no network in tests)."""
from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rdkit import Chem

from featurize.errors import InputDataError
from featurize.sources import LibrarySource, check_pcba_file, pcba_reference, pcba_source

SMILES = ["CCO", "c1ccccc1O", "C1CC(", "", "CC(=O)Nc1ccc(O)cc1"]


def _rows(source: LibrarySource) -> list[dict]:
    return [row for batch in source.iter_batches(batch_rows=2) for row in batch.to_pylist()]


def test_csv_gz_and_parquet_read_the_same(tmp_path: Path) -> None:
    table = pa.table({"name": ["a", "b", "c", " ", "e"], "SMILES": SMILES,
                      "t1": [1.0, 0.0, None, 1.0, 0.0], "t2": [None, 1, 0, 0, None],
                      "vendor": ["x"] * 5})
    pq.write_table(table, tmp_path / "lib.parquet")
    csv_text = table.to_pandas().to_csv(index=False)
    (tmp_path / "lib.csv").write_text(csv_text)
    with gzip.open(tmp_path / "lib.csv.gz", "wt") as handle:
        handle.write(csv_text)
    results = []
    for name in ("lib.parquet", "lib.csv", "lib.csv.gz"):
        source = LibrarySource(tmp_path / name, smiles_col="SMILES", id_col="name")
        assert source.task_names() == ["t1", "t2"]  # numeric columns only
        results.append(_rows(source))
    assert results[0] == results[1] == results[2]
    rows = results[0]
    assert [r["_row"] for r in rows] == [0, 1, 2, 3, 4]
    assert [r["raw"] for r in rows] == SMILES
    assert [r["mol_id"] for r in rows] == ["a", "b", "c", None, "e"]  # blank id -> null
    assert [r["t1"] for r in rows] == [1.0, 0.0, None, 1.0, 0.0]
    unlabeled = LibrarySource(tmp_path / "lib.csv", smiles_col="SMILES", tasks=None)
    assert unlabeled.task_names() == []
    assert [r["mol_id"] for r in _rows(unlabeled)] == [f"MOL00000{i}" for i in range(1, 6)]


def test_missing_columns_are_named(tmp_path: Path) -> None:
    (tmp_path / "lib.csv").write_text("smi,id\nCCO,1\n")
    with pytest.raises(InputDataError, match="no SMILES column 'smiles'.*smi, id"):
        LibrarySource(tmp_path / "lib.csv").task_names()
    with pytest.raises(InputDataError, match="task columns not found"):
        LibrarySource(tmp_path / "lib.csv", smiles_col="smi", tasks=["t9"]).task_names()
    with pytest.raises(FileNotFoundError):
        LibrarySource(tmp_path / "absent.csv")
    (tmp_path / "lib.xyz").write_text("")
    with pytest.raises(InputDataError, match="unknown input format"):
        LibrarySource(tmp_path / "lib.xyz")


def test_smi_reader(tmp_path: Path, nci_smiles: list[str]) -> None:
    (tmp_path / "lib.smi").write_text("CCO ethanol\n\nc1ccccc1\n  CCN  amine one \n")
    rows = _rows(LibrarySource(tmp_path / "lib.smi"))
    assert [(r["_row"], r["raw"], r["mol_id"]) for r in rows] == [
        (0, "CCO", "ethanol"), (1, "c1ccccc1", "MOL000002"), (2, "CCN", "amine one")]


def test_sdf_reader_keeps_bad_records_as_raw_text(tmp_path: Path) -> None:
    writer = Chem.SDWriter(str(tmp_path / "lib.sdf"))
    for index, smiles in enumerate(["CCO", "c1ccccc1O"]):
        mol = Chem.MolFromSmiles(smiles)
        mol.SetProp("_Name", f"title{index}")
        mol.SetProp("catalog_id", f"CAT-{index}")
        writer.write(mol)
    writer.close()
    text = (tmp_path / "lib.sdf").read_text()
    broken = "broken\n  junk\n\n  2  1  0  0  0  0  0  0  0  0999 V2000\nnot atoms\nM  END\n$$$$\n"
    (tmp_path / "lib.sdf").write_text(text + broken)
    rows = _rows(LibrarySource(tmp_path / "lib.sdf", id_col="catalog_id"))
    assert [r["mol_id"] for r in rows] == ["CAT-0", "CAT-1", None]
    assert Chem.MolToSmiles(Chem.MolFromMolBlock(rows[1]["raw"])) == "Oc1ccccc1"
    assert rows[2]["raw"].startswith("broken")
    titles = _rows(LibrarySource(tmp_path / "lib.sdf", id_col="_Name"))
    assert [r["mol_id"] for r in titles] == ["title0", "title1", "broken"]


def test_pcba_reference_comes_from_deepchem() -> None:
    reference = pcba_reference()
    assert len(reference.tasks) == 128 == len(set(reference.tasks))
    assert reference.tasks[0] == "PCBA-1030"
    assert reference.url.endswith("/pcba.csv.gz") and reference.url.startswith("https://")


def _pcba_like(path: Path, n_rows: int, tasks: list[str]) -> None:
    columns = {task: [1.0 if i % 7 == 0 else (None if i % 3 else 0.0) for i in range(n_rows)]
               for task in tasks}
    columns.update(mol_id=[f"CID{i}" for i in range(n_rows)],
                   smiles=["CCO" + "C" * (i % 4) for i in range(n_rows)])
    with gzip.open(path, "wt") as handle:
        handle.write(pa.table(columns).to_pandas().to_csv(index=False))


def test_pcba_checks(tmp_path: Path) -> None:
    tasks = list(pcba_reference().tasks)
    _pcba_like(tmp_path / "pcba.csv.gz", 50, tasks)
    check_pcba_file(tmp_path / "pcba.csv.gz", expected_rows=50)
    with pytest.raises(InputDataError, match="50 rows, expected about 439,863"):
        check_pcba_file(tmp_path / "pcba.csv.gz")
    with pytest.raises(InputDataError, match="lacks 1 of the 128 task columns"):
        _pcba_like(tmp_path / "short.csv.gz", 50, tasks[:-1])
        check_pcba_file(tmp_path / "short.csv.gz", expected_rows=50)
    with pytest.raises(InputDataError, match="expected about"):
        pcba_source(tmp_path / "pcba.csv.gz")
