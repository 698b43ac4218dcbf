"""featurize_file end to end: real RDKit, real Parquet, real local Ray."""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from featurize import ray_stage
from featurize.dataset import read_dataset_info, read_shard_metadata
from featurize.fingerprints import unpack_bits
from featurize.finish import first_of_each_id
from featurize.parquet_runs import merge_runs, sorted_runs
from featurize.pipeline import featurize_file
from featurize.reader import read_all
from featurize.sources.pcba import PCBA_TASKS, pcba_source
from featurize.spec import SPEC_METADATA_KEY, TASKS_METADATA_KEY, FingerprintSpec
from featurize.splits import scaffold_smiles
from featurize.standardize import SizeLimits

BAD_ROWS = [("", "m-empty", "empty SMILES"), ("C1CC(", "m-unparsable", "unparsable SMILES"),
            ("c1cccc1", "m-kekulize", "sanitization failed"), ("CCO", "", "empty id")]


@pytest.fixture()
def library_csv(tmp_path: Path, nci_smiles: list[str]) -> Path:
    """300 real NCI molecules with two labels, the bad rows above and a duplicate id."""
    smiles = nci_smiles[:300]
    rows = [(s, f"nci-{i}", i % 2 if i % 5 else None, None if i % 3 else 1) for i, s in
            enumerate(smiles)]
    rows[10:10] = [(raw, mol_id, 0, 0) for raw, mol_id, _ in BAD_ROWS]
    rows.append(("CCCC", "nci-7", 1, 1))  # duplicate id: the second occurrence is rejected
    rows.append(("CCN", "bad-label", 2, 0))
    path = tmp_path / "library.csv"
    pa.table({"smiles": [r[0] for r in rows], "id": [r[1] for r in rows],
              "assay_a": [r[2] for r in rows], "assay_b": [r[3] for r in rows]}
             ).to_pandas().to_csv(path, index=False)
    return path


def test_every_row_is_accounted_for(library_csv: Path, tmp_path: Path) -> None:
    summary = featurize_file(library_csv, tmp_path / "ds", id_col="id", split="random",
                             progress=False)
    assert summary.input_rows == 306
    assert summary.accepted + summary.rejected == summary.input_rows
    rejects = pq.read_table(summary.rejects_path).to_pylist()
    by_id = {r["mol_id"]: r for r in rejects}
    for raw, mol_id, reason in BAD_ROWS:
        row = by_id[mol_id or None]
        assert row["raw"] == raw and row["reason"].startswith(reason)
    assert by_id["nci-7"]["reason"] == "duplicate id" and by_id["nci-7"]["raw"] == "CCCC"
    assert by_id["bad-label"]["reason"] == "label assay_a=2 is not 0 or 1"
    assert [r["row"] for r in rejects] == sorted(r["row"] for r in rejects)
    assert by_id["m-empty"]["row"] == 10
    info = read_dataset_info(tmp_path / "ds")
    assert (info.input_rows, info.accepted, info.rejected) == (306, summary.accepted, len(rejects))
    assert sum(info.split_counts.values()) == info.accepted


def test_first_of_each_id_matches_a_plain_loop() -> None:
    rng = np.random.default_rng(0)
    rows = rng.permutation(5000)  # the driver's rows, in any order and several chunks
    ids = [f"m{value}" for value in rng.integers(0, 1500, size=len(rows))]
    keys = pa.concat_tables([pa.table({"_row": rows[start:start + 700], "mol_id": ids[start:start + 700]})
                             for start in range(0, len(rows), 700)])
    first_row: dict[str, int] = {}
    for row, mol_id in sorted(zip(rows.tolist(), ids)):
        first_row.setdefault(mol_id, row)
    expected = np.zeros(6000, dtype=bool)
    expected[list(first_row.values())] = True
    assert np.array_equal(first_of_each_id(keys, 6000), expected)


def test_mol_id_column_is_the_default_id(library_csv: Path, tmp_path: Path) -> None:
    """With no --id-col, a table's mol_id column is the id: its duplicates are
    rejected and it is never mistaken for a task, even when numeric."""
    table = pacsv.read_csv(library_csv).to_pandas().rename(columns={"id": "mol_id"})
    table["mol_id"] = range(len(table))
    table.loc[len(table)] = {"smiles": "CCCCO", "mol_id": 0, "assay_a": 1, "assay_b": 0}
    path = tmp_path / "numeric_ids.csv"
    table.to_csv(path, index=False)
    summary = featurize_file(path, tmp_path / "ds", progress=False)
    rejects = pq.read_table(summary.rejects_path).to_pylist()
    assert rejects[-1]["mol_id"] == "0" and rejects[-1]["reason"] == "duplicate id"
    assert read_dataset_info(tmp_path / "ds").tasks == ["assay_a", "assay_b"]


def test_round_trip_equals_rdkit(library_csv: Path, tmp_path: Path) -> None:
    spec = FingerprintSpec(radius=3, n_bits=1024)
    featurize_file(library_csv, tmp_path / "ds", id_col="id", spec=spec, progress=False)
    info = read_dataset_info(tmp_path / "ds")
    schema = pq.read_schema(info.shards[0])
    assert SPEC_METADATA_KEY in schema.metadata and TASKS_METADATA_KEY in schema.metadata
    assert read_shard_metadata(info.shards[0]) == (spec, ["assay_a", "assay_b"])
    assert schema.field("fp").type == pa.binary(128)
    data = read_all(info)
    assert len(set(data.mol_id)) == len(data.mol_id) == info.accepted
    generator = rdFingerprintGenerator.GetMorganGenerator(radius=3, fpSize=1024)
    bits = unpack_bits(data.fp, 1024)
    for smiles, row in zip(data.smiles, bits):
        expected = generator.GetFingerprintAsNumPy(Chem.MolFromSmiles(smiles))
        np.testing.assert_array_equal(row, expected)
    source = pacsv.read_csv(library_csv).to_pandas().drop_duplicates("id").set_index("id")
    for mol_id, labels in zip(data.mol_id[:50], data.labels[:50]):
        expected = [-1 if v is None or v != v else int(v)
                    for v in source.loc[mol_id, ["assay_a", "assay_b"]].tolist()]
        assert labels.tolist() == expected


def test_scaffold_split_and_rerun_noop(library_csv: Path, tmp_path: Path) -> None:
    first = featurize_file(library_csv, tmp_path / "ds", id_col="id", split="scaffold",
                           progress=False)
    assert not first.skipped_existing
    table = pq.read_table(read_dataset_info(tmp_path / "ds").shards)
    scaffolds = [scaffold_smiles(Chem.MolFromSmiles(s)) for s in table["smiles"].to_pylist()]
    splits_of: dict[str, set[str]] = {}
    for scaffold, split in zip(scaffolds, table["split"].to_pylist()):
        splits_of.setdefault(scaffold, set()).add(split)
    assert all(len(s) == 1 for s in splits_of.values())
    mtime = (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns
    again = featurize_file(library_csv, tmp_path / "ds", id_col="id", split="scaffold",
                           progress=False)
    assert again.skipped_existing and again.accepted == first.accepted
    assert (tmp_path / "ds" / "manifest.json").stat().st_mtime_ns == mtime


def test_unlabeled_sdf_library(tmp_path: Path, nci_smiles: list[str]) -> None:
    writer = Chem.SDWriter(str(tmp_path / "lib.sdf"))
    for smiles in nci_smiles[:40]:
        mol = Chem.MolFromSmiles(smiles)
        if mol is not None:
            writer.write(mol)
    writer.close()
    summary = featurize_file(tmp_path / "lib.sdf", tmp_path / "ds", progress=False,
                             rows_per_shard=10)
    assert summary.shards == (summary.accepted + 9) // 10 and summary.rejected == 0
    data = read_all(tmp_path / "ds")
    assert data.labels is None and data.fp.shape == (summary.accepted, 256)


def test_small_pcba_shaped_file(tmp_path: Path) -> None:
    tasks = list(PCBA_TASKS)
    columns = {task: [1.0, 0.0, None] * 20 for task in tasks}
    columns.update(mol_id=[f"CID{i}" for i in range(60)],
                   smiles=["CCO" + "C" * i for i in range(60)])
    with gzip.open(tmp_path / "pcba.csv.gz", "wt") as handle:
        handle.write(pa.table(columns).to_pandas().to_csv(index=False))
    summary = featurize_file(pcba_source(tmp_path / "pcba.csv.gz", expected_rows=60),
                             tmp_path / "ds", progress=False)
    info = read_dataset_info(tmp_path / "ds")
    assert summary.accepted == 60 and info.tasks == tasks
    assert read_all(info).labels[:3, :2].tolist() == [[1, 1], [0, 0], [-1, -1]]


def test_merge_restores_source_order_across_interleaved_files(tmp_path: Path) -> None:
    order = np.random.default_rng(0).permutation(1000)  # Ray may write blocks like this
    files = []
    for index, rows in enumerate(np.array_split(order, 7)):
        files.append(tmp_path / f"{index}.parquet")
        pq.write_table(pa.table({"_row": rows, "value": rows * 2}), files[-1])
    merged = pa.concat_tables(list(merge_runs(sorted_runs(files), chunk_rows=37)))
    assert merged["_row"].to_pylist() == list(range(1000))
    assert merged["value"].to_pylist() == list(range(0, 2000, 2))


@pytest.mark.parametrize("n_rows, n_cpus, block_rows", [
    (50_000, 2, 4096), (50_000, 1, 4096), (440_000, 16, 4096), (3, 2, 4096), (1, 4, 4096), (0, 2, 10)])
def test_ray_task_ranges_cover_every_row_in_equal_shares(n_rows: int, n_cpus: int, block_rows: int) -> None:
    ranges = ray_stage.task_row_ranges(n_rows, n_cpus, block_rows)
    bounds = [0, *(stop for _, stop in ranges)]  # contiguous, from row 0 to the last row
    assert [start for start, _ in ranges] == bounds[:-1] and bounds[-1] == n_rows
    sizes = [stop - start for start, stop in ranges]
    assert all(0 < size <= block_rows for size in sizes) and max(sizes, default=0) - min(sizes, default=0) <= 1
    if n_rows >= n_cpus:  # every CPU gets the same number of tasks
        assert len(ranges) % n_cpus == 0


def test_read_rows_reads_a_range_across_row_groups(tmp_path: Path) -> None:
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"value": list(range(100))}), path, row_group_size=16)
    for start, stop in [(0, 100), (10, 40), (16, 32), (95, 100), (7, 8)]:
        assert ray_stage._read_rows(str(path), start, stop)["value"].to_pylist() == list(range(start, stop))


@pytest.mark.parametrize("backend", ["local", "ray"])
def test_an_input_without_rows_gives_an_empty_dataset(tmp_path: Path, backend: str) -> None:
    path = tmp_path / "empty.csv"
    path.write_text("smiles,id\n")
    summary = featurize_file(path, tmp_path / "out", backend=backend, id_col="id", progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (0, 0, 0)
    assert read_all(read_dataset_info(tmp_path / "out")).fp.shape[0] == 0


@pytest.mark.slow
def test_ray_path_writes_the_same_bytes(ray_local: None, library_csv: Path, tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    # 306 rows: 8 tasks of 38-39 rows on 2 CPUs, each reading across raw row groups of 16
    monkeypatch.setattr(ray_stage, "RAY_BLOCK_ROWS", 40)
    monkeypatch.setattr(ray_stage, "RAW_ROW_GROUP", 16)
    kwargs = {"id_col": "id", "split": "scaffold", "rows_per_shard": 100, "progress": False}
    local = featurize_file(library_csv, tmp_path / "local", backend="local", **kwargs)
    ray = featurize_file(library_csv, tmp_path / "ray", backend="ray", num_cpus=2, **kwargs)
    assert (ray.input_rows, ray.accepted, ray.rejected) == \
        (local.input_rows, local.accepted, local.rejected)
    names = sorted(p.relative_to(tmp_path / "local") for p in (tmp_path / "local").rglob("*.parquet"))
    assert names == sorted(p.relative_to(tmp_path / "ray") for p in (tmp_path / "ray").rglob("*.parquet"))
    assert len(names) == (local.accepted + 99) // 100 + 1  # feature shards + rejects
    for name in names:
        assert (tmp_path / "local" / name).read_bytes() == (tmp_path / "ray" / name).read_bytes()


HOSTILE_ROWS = [  # (raw bytes of the SMILES cell, mol_id, reason prefix)
    (b"C" * 20_000, "chain", "too large (20000 heavy atoms > 1000)"),
    ("CCÖ".encode(), "umlaut", "not a SMILES: non-ASCII character 'Ö' at position 2"),
    (b'"CC\nO"', "newline", "not a SMILES: whitespace '\\n' at position 2"),
    (b"CCO\tCCN", "tab", "not a SMILES: whitespace '\\t' at position 3"),
    (b"[#6]~[#7]", "smarts", "not a SMILES: query feature '#' at position 1"),
    (b"CC\xd6", "latin1", "not UTF-8 (column 'smiles': byte 0xd6 at offset 2)"),
]


def test_hostile_rows_are_rejected_with_reasons_and_the_rest_kept(tmp_path: Path) -> None:
    good = [b"CCO", b"c1ccccc1O", b"CC(=O)Nc1ccc(O)cc1"]
    lines = [b"smiles,mol_id,t1"] + [cell + b"," + mol_id.encode() + b",1"
                                     for cell, mol_id, _ in HOSTILE_ROWS]
    lines += [cell + b",good-%d,0" % i for i, cell in enumerate(good)]
    (tmp_path / "hostile.csv").write_bytes(b"\n".join(lines) + b"\n")
    summary = featurize_file(tmp_path / "hostile.csv", tmp_path / "ds", backend="local",
                             progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (9, 3, 6)
    rejects = {r["mol_id"]: r for r in pq.read_table(summary.rejects_path).to_pylist()}
    for _, mol_id, reason in HOSTILE_ROWS:
        assert rejects[mol_id]["reason"].startswith(reason), mol_id
    assert rejects["latin1"]["raw"] == "hex 4343d6"
    assert summary.reject_reasons == {"not a SMILES": 4, "too large": 1, "not UTF-8": 1}
    limited = featurize_file(tmp_path / "hostile.csv", tmp_path / "small", backend="local",
                             limits=SizeLimits(max_heavy_atoms=9), progress=False)
    assert limited.accepted == 2  # paracetamol has 11 heavy atoms


def _raw_file(tmp_path: Path, smiles: list[str]) -> Path:
    path = tmp_path / "raw.parquet"
    pq.write_table(pa.table({"_row": np.arange(len(smiles)), "raw": smiles,
                             "mol_id": [f"m{i}" for i in range(len(smiles))],
                             "reason": pa.nulls(len(smiles), pa.string())}), path)
    return path


# Limits high enough to let the 20,000-carbon chain reach RDKit's canonical
# SMILES, which kills the process after ~6 s; only child processes meet it here.
UNGUARDED = {"spec": FingerprintSpec(n_bits=64), "tasks": [], "kind": "smiles",
             "with_scaffold": True, "limits": SizeLimits(max_heavy_atoms=10**6)}


def test_a_retried_row_range_rejects_the_row_that_crashed(tmp_path: Path) -> None:
    raw_path = _raw_file(tmp_path, ["CCO", "C" * 20_000, "CCN"])
    first = ray_stage.featurize_row_range(raw_path, 0, 1, UNGUARDED)  # no mark: in process
    assert first["reason"].to_pylist() == [None] and not list((tmp_path / "attempts").iterdir())
    (tmp_path / "attempts" / "0-3").touch()  # what a task whose worker died leaves behind
    # One child dies on row 1, a second one probes row 2 and finishes.
    retried = ray_stage.featurize_row_range(raw_path, 0, 3, UNGUARDED)
    assert retried["reason"].to_pylist() == [None, "RDKit crashed (signal 11)", None]
    assert retried["smiles"].to_pylist() == ["CCO", None, "CCN"]
    assert not (tmp_path / "attempts" / "0-3").exists()


@pytest.mark.slow
def test_ray_job_survives_a_row_that_crashes_its_worker(ray_local: None, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ray_stage, "RAY_BLOCK_ROWS", 2)
    path = tmp_path / "lib.smi"
    path.write_text("CCO a\nCCN b\n" + "C" * 20_000 + " chain\nc1ccccc1 d\n")
    summary = featurize_file(path, tmp_path / "ds", backend="ray", num_cpus=2,
                             limits=SizeLimits(max_heavy_atoms=10**6), progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (4, 3, 1)
    rejects = pq.read_table(summary.rejects_path).to_pylist()
    assert [(r["mol_id"], r["reason"]) for r in rejects] == [("chain", "RDKit crashed (signal 11)")]
