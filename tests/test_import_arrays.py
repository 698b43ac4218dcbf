"""DeepChem-style arrays (features, labels, weights; weight 0 = missing) ->
the fingerprint dataset, bit for bit."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from featurize.dataset import read_dataset_info
from featurize.errors import InputDataError
from featurize.fingerprints import unpack_bits
from featurize.import_arrays import import_deepchem_arrays, part_name
from featurize.reader import read_all

SPEC = "deepchem CircularFingerprint(size=1024) radius 2"
TASKS = ["assay-a", "assay-b", "assay-c"]


def _toy_arrays(rng: np.random.Generator, n_rows: int, n_bits: int = 20) -> tuple[np.ndarray, ...]:
    bits = (rng.random((n_rows, n_bits)) < 0.3).astype(np.uint8)
    y = (rng.random((n_rows, len(TASKS))) < 0.2).astype(np.float64)
    w = np.where(rng.random((n_rows, len(TASKS))) < 0.4, 0.0, rng.uniform(1, 20, (n_rows, len(TASKS))))
    return bits, y, w


def _write_csv(path: Path, array: np.ndarray) -> Path:
    """As DeepChem's pandas export writes them: a header row of column indexes."""
    pd.DataFrame(array).to_csv(path, index=False)
    return path


def _expected_labels(y: np.ndarray, w: np.ndarray) -> np.ndarray:
    return np.where(w > 0, y, -1).astype(np.int8)


def _read_features(out_dir: Path) -> pd.DataFrame:
    return pq.read_table(out_dir / "features").to_pandas()  # stored in input order


@pytest.fixture()
def toy_parts(tmp_path: Path) -> dict:
    """Two aligned CSV.gz parts (37 and 26 rows) and a tasks.csv."""
    rng = np.random.default_rng(1)
    parts = {"bits": [], "y": [], "w": [], "features": [], "labels": [], "weights": []}
    for name, n_rows in (("val", 37), ("test", 26)):
        bits, y, w = _toy_arrays(rng, n_rows)
        parts["bits"].append(bits), parts["y"].append(y), parts["w"].append(w)
        parts["features"].append(_write_csv(tmp_path / f"toy_{name}_features.csv.gz", bits))
        parts["labels"].append(_write_csv(tmp_path / f"toy_{name}_y.csv.gz", y))
        parts["weights"].append(_write_csv(tmp_path / f"toy_{name}_w.csv.gz", w))
    pd.DataFrame(TASKS).to_csv(tmp_path / "tasks.csv", index=False)
    parts["tasks"] = tmp_path / "tasks.csv"
    return parts


def test_csv_parts_round_trip_bits_and_labels(toy_parts: dict, tmp_path: Path) -> None:
    out_dir = tmp_path / "dataset"
    summary = import_deepchem_arrays(toy_parts["features"], toy_parts["labels"], toy_parts["weights"],
                                     toy_parts["tasks"], out_dir, SPEC, seed=3, chunk_rows=16,
                                     progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (63, 63, 0)
    assert summary.split_counts == {"train": 50, "valid": 6, "test": 7}

    info = read_dataset_info(out_dir)
    assert info.tasks == TASKS
    assert (info.spec.kind, info.spec.n_bits, info.spec.source) == ("imported", 20, SPEC)
    metadata = pq.read_schema(info.shards[0]).metadata
    assert json.loads(metadata[b"pcba.fingerprint_spec"])["source"] == SPEC

    table = _read_features(out_dir)
    expected_ids = [f"toy-val-{i:06d}" for i in range(1, 38)] + [f"toy-test-{i:06d}" for i in range(1, 27)]
    assert table["mol_id"].tolist() == expected_ids
    assert table["smiles"].isna().all()
    fp = np.stack([np.frombuffer(value, dtype=np.uint8) for value in table["fp"]])
    np.testing.assert_array_equal(unpack_bits(fp, 20), np.concatenate(toy_parts["bits"]))
    expected = _expected_labels(np.concatenate(toy_parts["y"]), np.concatenate(toy_parts["w"]))
    np.testing.assert_array_equal(table[TASKS].to_numpy(), expected)
    assert (expected == -1).any()  # weight 0 really became missing

    batch = read_all(out_dir, split="train")  # the reader training uses
    assert batch.fp.shape == (50, 3) and (batch.labels >= -1).all()


def test_npy_arrays_and_a_task_list_give_the_same_dataset(toy_parts: dict, tmp_path: Path) -> None:
    npy = {}
    for key, array_key in (("features", "bits"), ("labels", "y"), ("weights", "w")):
        npy[key] = []
        for name, array in zip(("val", "test"), toy_parts[array_key]):
            path = tmp_path / f"toy_{name}_{key}.npy"
            np.save(path, array)
            npy[key].append(path)
    from_csv = tmp_path / "from_csv"
    from_npy = tmp_path / "from_npy"
    import_deepchem_arrays(toy_parts["features"], toy_parts["labels"], toy_parts["weights"],
                           toy_parts["tasks"], from_csv, SPEC, progress=False)
    import_deepchem_arrays(npy["features"], npy["labels"], npy["weights"], TASKS, from_npy, SPEC,
                           progress=False)
    csv_table, npy_table = _read_features(from_csv), _read_features(from_npy)
    assert csv_table.drop(columns="mol_id").equals(npy_table.drop(columns="mol_id"))


def test_rerun_is_a_no_op_and_max_rows_limits(toy_parts: dict, tmp_path: Path) -> None:
    args = (toy_parts["features"], toy_parts["labels"], toy_parts["weights"], toy_parts["tasks"],
            tmp_path / "dataset", SPEC)
    first = import_deepchem_arrays(*args, max_rows=40, split="none", progress=False)
    again = import_deepchem_arrays(*args, max_rows=40, split="none", progress=False)
    assert first.accepted == 40 and not first.split_counts
    assert again.skipped_existing and again.accepted == 40


def test_unusable_inputs_are_named(toy_parts: dict, tmp_path: Path) -> None:
    features, labels, weights, tasks = (toy_parts[key] for key in ("features", "labels", "weights", "tasks"))
    with pytest.raises(InputDataError, match="no SMILES"):
        import_deepchem_arrays(features, labels, weights, tasks, tmp_path / "a", SPEC, split="scaffold")
    with pytest.raises(InputDataError, match="not aligned"):
        import_deepchem_arrays(features, labels[::-1], weights, tasks, tmp_path / "b", SPEC, progress=False)
    with pytest.raises(InputDataError, match="not aligned"):  # found while the features stream
        import_deepchem_arrays(features[::-1], labels, weights, tasks, tmp_path / "b", SPEC, progress=False)
    assert not (tmp_path / "b").exists()
    with pytest.raises(InputDataError, match="task names"):
        import_deepchem_arrays(features, labels, weights, TASKS[:2], tmp_path / "c", SPEC, progress=False)
    counts = toy_parts["bits"][0].copy()
    counts[5, 3] = 2
    bad = _write_csv(tmp_path / "counts_features.csv", counts)
    with pytest.raises(InputDataError, match="row 5 holds values other than 0/1"):
        import_deepchem_arrays(bad, labels[0], weights[0], tasks, tmp_path / "d", SPEC, progress=False)
    assert not (tmp_path / "d").exists()  # nothing half-written
    halves = _write_csv(tmp_path / "halves_features.csv", toy_parts["bits"][0] * 0.5)
    with pytest.raises(InputDataError, match="other than 0/1"):
        import_deepchem_arrays(halves, labels[0], weights[0], tasks, tmp_path / "e", SPEC, progress=False)


def test_float_written_bits_import_like_integer_ones(toy_parts: dict, tmp_path: Path) -> None:
    """pandas writes a float array's bits as "1.0": same dataset as "1"."""
    as_float = [_write_csv(tmp_path / f"float_{i}_features.csv", bits.astype(np.float64))
                for i, bits in enumerate(toy_parts["bits"])]
    args = (toy_parts["labels"], toy_parts["weights"], toy_parts["tasks"])
    import_deepchem_arrays(as_float, *args, tmp_path / "float", SPEC, progress=False)
    import_deepchem_arrays(toy_parts["features"], *args, tmp_path / "int", SPEC, progress=False)
    columns = ["fp", *TASKS, "split"]
    assert _read_features(tmp_path / "float")[columns].equals(_read_features(tmp_path / "int")[columns])


def test_part_names() -> None:
    assert part_name("x/pcba_val_features.csv.gz") == "pcba-val"
    assert part_name("shard-0-X.npy") == "shard-0"


def _subset_files(root: Path, kind: str) -> list[Path]:
    return [root / f"pcba_{part}_{kind}.csv.gz" for part in ("val", "test")]


def test_real_pcba_subset_first_rows(pcba_subset_dir: Path, tmp_path: Path) -> None:
    out_dir = tmp_path / "pcba"
    summary = import_deepchem_arrays(_subset_files(pcba_subset_dir, "features"),
                                     _subset_files(pcba_subset_dir, "y"), _subset_files(pcba_subset_dir, "w"),
                                     pcba_subset_dir / "tasks.csv", out_dir, SPEC, max_rows=2000,
                                     progress=False)
    assert summary.accepted == 2000
    info = read_dataset_info(out_dir)
    assert len(info.tasks) == 128 and info.tasks[0] == "PCBA-1030" and info.spec.n_bits == 1024
    table = pq.read_table(out_dir / "features").to_pandas()
    raw_bits = pd.read_csv(pcba_subset_dir / "pcba_val_features.csv.gz", nrows=2000).to_numpy()
    raw_y = pd.read_csv(pcba_subset_dir / "pcba_val_y.csv.gz", nrows=2000).to_numpy()
    raw_w = pd.read_csv(pcba_subset_dir / "pcba_val_w.csv.gz", nrows=2000).to_numpy()
    fp = np.stack([np.frombuffer(value, dtype=np.uint8) for value in table["fp"]])
    np.testing.assert_array_equal(unpack_bits(fp, 1024), raw_bits)
    labels = table[info.tasks].to_numpy()
    np.testing.assert_array_equal(labels, _expected_labels(raw_y, raw_w))
    present = labels >= 0
    assert 0.5 < present.mean() < 0.7            # the real subset has about 60 % of its labels present
    assert 0.005 < (labels == 1).sum() / present.sum() < 0.03  # about 1.4 % active


@pytest.mark.slow
def test_real_pcba_subset_in_full(pcba_subset_dir: Path, tmp_path: Path) -> None:
    summary = import_deepchem_arrays(_subset_files(pcba_subset_dir, "features"),
                                     _subset_files(pcba_subset_dir, "y"), _subset_files(pcba_subset_dir, "w"),
                                     pcba_subset_dir / "tasks.csv", tmp_path / "pcba", SPEC, progress=False)
    assert (summary.input_rows, summary.accepted, summary.rejected) == (87_973, 87_973, 0)
    assert summary.split_counts == {"train": 70_378, "valid": 8_797, "test": 8_798}
    ids = pq.read_table(tmp_path / "pcba" / "features", columns=["mol_id"])["mol_id"].to_pylist()
    assert ids[0] == "pcba-val-000001" and ids[43_986] == "pcba-test-000001" and len(set(ids)) == 87_973
