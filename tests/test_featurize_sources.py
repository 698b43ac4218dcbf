"""Readers of every input format, and the PCBA-128 checks (on a small
PCBA-shaped file made here: no network in tests)."""
from __future__ import annotations

import gzip
import re
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from rdkit import Chem

from featurize.errors import InputDataError
from featurize.sources.pcba import (
    PCBA_FILE_NAME,
    PCBA_TASKS,
    PCBA_URL,
    check_pcba_file,
    fetch_pcba,
    pcba_source,
)
from featurize.sources.readers import LibrarySource

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


def _deepchem_pcba() -> tuple[str, str, tuple[str, ...]]:
    """URL, file name and tasks of the installed DeepChem's ``load_pcba``,
    read from its source (importing deepchem costs seconds and prints noise)."""
    import ast
    import importlib.util

    spec = importlib.util.find_spec("deepchem")
    source = Path(spec.submodule_search_locations[0]) / "molnet" / "load_function" / "pcba_datasets.py"
    constants, file_name = {}, None
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name) \
                and node.targets[0].id in ("PCBA_URL", "PCBA_TASKS"):
            constants[node.targets[0].id] = ast.literal_eval(node.value)
        if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_PCBALoader" \
                and node.args and isinstance(node.args[0], ast.Constant):
            file_name = node.args[0].value
    return constants["PCBA_URL"] % file_name, file_name, tuple(constants["PCBA_TASKS"])


def test_the_pcba_reference_is_deepchems() -> None:
    """The URL, file and 128 task names kept as data are DeepChem's own."""
    assert (PCBA_URL, PCBA_FILE_NAME, PCBA_TASKS) == _deepchem_pcba()
    assert len(PCBA_TASKS) == 128 == len(set(PCBA_TASKS)) and PCBA_URL.startswith("https://")


def _pcba_like(path: Path, n_rows: int, tasks: list[str]) -> None:
    columns = {task: [1.0 if i % 7 == 0 else (None if i % 3 else 0.0) for i in range(n_rows)]
               for task in tasks}
    columns.update(mol_id=[f"CID{i}" for i in range(n_rows)],
                   smiles=["CCO" + "C" * (i % 4) for i in range(n_rows)])
    with gzip.open(path, "wt") as handle:
        handle.write(pa.table(columns).to_pandas().to_csv(index=False))


def test_pcba_checks(tmp_path: Path) -> None:
    tasks = list(PCBA_TASKS)
    _pcba_like(tmp_path / "pcba.csv.gz", 50, tasks)
    check_pcba_file(tmp_path / "pcba.csv.gz", expected_rows=50)
    with pytest.raises(InputDataError, match="50 rows, expected about 439,863"):
        check_pcba_file(tmp_path / "pcba.csv.gz")
    with pytest.raises(InputDataError, match="lacks 1 of the 128 task columns"):
        _pcba_like(tmp_path / "short.csv.gz", 50, tasks[:-1])
        check_pcba_file(tmp_path / "short.csv.gz", expected_rows=50)
    with pytest.raises(InputDataError, match="expected about"):
        pcba_source(tmp_path / "pcba.csv.gz")


def test_cells_that_are_not_utf8_are_rejected_row_by_row(tmp_path: Path) -> None:
    latin = b"smiles,mol_id,t1\nCCO,a,1\nCC\xd6,b,0\nCCN,c\xe9,1\nc1ccccc1,d,0\n"
    (tmp_path / "lib.csv").write_bytes(latin)
    (tmp_path / "lib.csv.gz").write_bytes(gzip.compress(latin))
    pq.write_table(pa.table({"smiles": pa.array([b"CCO", b"CC\xd6", b"CCN", b"c1ccccc1"]),
                             "mol_id": ["a", "b", "c\u00e9", "d"], "t1": [1, 0, 1, 0]}),
                   tmp_path / "lib.parquet")
    expected_reasons = [None, "not UTF-8 (column 'smiles': byte 0xd6 at offset 2)", None, None]
    for name in ("lib.csv", "lib.csv.gz", "lib.parquet"):
        rows = _rows(LibrarySource(tmp_path / name))
        assert [r["raw"] for r in rows] == ["CCO", "hex 4343d6", "CCN", "c1ccccc1"], name
        assert [r["reason"] for r in rows][:2] == expected_reasons[:2]
        assert [r["t1"] for r in rows] == [1.0, 0.0, 1.0, 0.0]
    csv_rows = _rows(LibrarySource(tmp_path / "lib.csv"))
    assert csv_rows[2]["mol_id"] == "hex 63e9"
    assert csv_rows[2]["reason"] == "not UTF-8 (column 'mol_id': byte 0xe9 at offset 1)"


def test_smi_and_sdf_lines_that_are_not_utf8_are_rejected_row_by_row(tmp_path: Path) -> None:
    # .smi fields split on ASCII whitespace only: a no-break space stays in the SMILES
    (tmp_path / "lib.smi").write_bytes(b"CCO a\nCC\xd6 b\n\nCCN n\xe9\nCCO\xc2\xa0x\n")
    rows = _rows(LibrarySource(tmp_path / "lib.smi"))
    assert [(r["raw"], r["mol_id"], r["reason"]) for r in rows] == [
        ("CCO", "a", None),
        ("hex 4343d6", "b", "not UTF-8 (SMILES field: byte 0xd6 at offset 2)"),
        ("CCN", "hex 6ee9", "not UTF-8 (name field: byte 0xe9 at offset 1)"),
        ("CCO\u00a0x", "MOL000004", None)]
    good = Chem.MolToMolBlock(Chem.MolFromSmiles("CCO"))
    record = "title\xd6" + good[good.index("\n"):]
    (tmp_path / "lib.sdf").write_bytes(good.encode() + b"$$$$\n" + record.encode("latin-1")
                                       + b"$$$$\n")
    rows = _rows(LibrarySource(tmp_path / "lib.sdf", id_col="_Name"))
    assert [r["reason"] for r in rows] == [None, "not UTF-8 (record: byte 0xd6 at offset 5)"]
    assert rows[1]["raw"].startswith("hex 7469746c65d6") and rows[1]["mol_id"] == "title\ufffd"


def _truncated_gzip(path: Path, text: str) -> None:
    data = gzip.compress(text.encode())
    path.write_bytes(data[:len(data) // 2])


@pytest.mark.parametrize(("name", "content", "message"), [
    ("empty.csv", b"", "empty file; a CSV needs a header line"),
    ("ragged.csv", b"smiles,t1\nCCO,1\nCCN\n", "bad CSV line near the start: Expected 2 columns, got 1: CCN"),
    ("header.csv", b"smi\xd6les,t1\nCCO,1\n", "the header line is not UTF-8 (byte 0xd6 at offset 3)"),
    ("fake.parquet", b"smiles\nCCO\n", "not a readable Parquet file"),
    ("cut.csv.gz", None, "the gzip data is cut short or damaged"),
    ("cut.smi.gz", None, "the gzip data is cut short or damaged"),
    ("cut.sdf.gz", None, "the gzip data is cut short or damaged"),
])
def test_unreadable_files_give_one_line_naming_file_and_fix(tmp_path: Path, name: str,
                                                            content: bytes | None,
                                                            message: str) -> None:
    path = tmp_path / name
    if content is None:  # random text does not compress to nothing, so half is mid-stream
        lines = [f"C{i * 7919 % 100003}CC,{i}" for i in range(20_000)]
        _truncated_gzip(path, "smiles,t1\n" + "\n".join(lines) + "\n")
    else:
        path.write_bytes(content)
    with pytest.raises(InputDataError) as error:
        list(LibrarySource(path).iter_batches())
    text = str(error.value)
    # pyarrow names the CSV row ("Row #3: ") only where it parses serially
    # (one CPU, e.g. OMP_NUM_THREADS=1); the rest of the line is the same.
    assert text.startswith(f"{path}: ") and message in re.sub(r"Row #\d+: ", "", text) and "\n" not in text
    if name.startswith("cut"):
        assert f"ends at byte {path.stat().st_size}" in text


def test_a_directory_is_not_an_input(tmp_path: Path) -> None:
    with pytest.raises(InputDataError, match="is a directory; give one molecule file"):
        LibrarySource(tmp_path)


def test_fetch_pcba_downloads_once_over_http_and_keeps_no_partial_file(tmp_path: Path) -> None:
    """The real download path (urllib, a .part file renamed when complete,
    the check) against a small PCBA-shaped file served on a loopback port."""
    import functools
    import http.server
    import threading

    served = tmp_path / "served"
    served.mkdir()
    _pcba_like(served / PCBA_FILE_NAME, 40, list(PCBA_TASKS))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/{PCBA_FILE_NAME}"
    cache = tmp_path / "cache"
    try:
        path = fetch_pcba(cache, url=url, expected_rows=40)
    finally:
        server.shutdown()
        server.server_close()  # refused from now on
        thread.join()
    assert path == cache / PCBA_FILE_NAME and path.read_bytes() == (served / PCBA_FILE_NAME).read_bytes()
    assert sorted(item.name for item in cache.iterdir()) == [PCBA_FILE_NAME]
    assert fetch_pcba(cache, url=url, expected_rows=40) == path  # cached: the server is gone
    with pytest.raises(InputDataError, match="cannot download PCBA-128 from .*--pcba-path"):
        fetch_pcba(tmp_path / "empty", url=url, expected_rows=40)
