"""The on-disk dataset (atomic writer, manifest, schema metadata) and the
streaming reader."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from featurize.dataset import DatasetWriter, find_finished, read_dataset_info, read_shard_metadata
from featurize.errors import InputDataError
from featurize.reader import iter_batches, read_all
from featurize.spec import FingerprintSpec

TASKS = ["assay-a", "assay-b", "assay-c"]
SPEC = FingerprintSpec(n_bits=64)


def _features(n: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    fp = rng.integers(0, 256, (n, SPEC.n_bytes), dtype=np.uint8)
    columns = {
        "mol_id": [f"M{i:05d}" for i in range(n)],
        "smiles": ["C" * (1 + i % 5) for i in range(n)],
        "fp": pa.array([row.tobytes() for row in fp], pa.binary(SPEC.n_bytes)),
        **{task: rng.integers(-1, 2, n).astype(np.int8) for task in TASKS},
        "split": rng.choice(["train", "valid", "test"], n),
    }
    return pa.table(columns)


def _write(out: Path, table: pa.Table, **kwargs: object) -> None:
    with DatasetWriter(out, SPEC, TASKS, with_split=True, rows_per_shard=250,
                       row_group_size=100) as writer:
        for offset in range(0, table.num_rows, 37):  # many small batches
            writer.write_features(table.slice(offset, 37))
        writer.write_rejects(pa.table({"row": [7], "raw": ["C1CC("], "mol_id": [None],
                                       "reason": ["unparsable SMILES"]}))
        writer.commit(input_rows=table.num_rows + 1, input_identity={"path": "x"},
                      options={"split": "random"}, **kwargs)


def test_written_dataset_round_trips(tmp_path: Path) -> None:
    table = _features(600)
    _write(tmp_path / "ds", table)
    info = read_dataset_info(tmp_path / "ds")
    assert (info.accepted, info.rejected, info.input_rows) == (600, 1, 601)
    assert len(info.shards) == 3 and info.spec == SPEC and info.tasks == TASKS
    assert sum(info.split_counts.values()) == 600
    assert pq.ParquetFile(info.shards[0]).metadata.num_row_groups == 3  # buffered row groups
    for shard in info.shards:
        assert read_shard_metadata(shard) == (SPEC, TASKS)
    assert pq.read_table(info.rejects_path).to_pylist()[0]["reason"] == "unparsable SMILES"
    assert [p.name for p in tmp_path.iterdir()] == ["ds"]  # no temp dir left

    everything = read_all(info)
    expected_fp = np.stack([np.frombuffer(b, np.uint8) for b in table["fp"].to_pylist()])
    np.testing.assert_array_equal(everything.fp, expected_fp)
    np.testing.assert_array_equal(everything.labels,
                                  np.column_stack([table[t].to_numpy() for t in TASKS]))
    np.testing.assert_array_equal(everything.mask, everything.labels >= 0)
    assert everything.mol_id == table["mol_id"].to_pylist()


def test_reader_batches_splits_and_shuffle(tmp_path: Path) -> None:
    table = _features(600)
    _write(tmp_path / "ds", table)
    train_ids = [m for m, s in zip(table["mol_id"].to_pylist(), table["split"].to_pylist())
                 if s == "train"]
    batches = list(iter_batches(tmp_path / "ds", split="train", batch_size=64))
    assert [len(b) for b in batches[:-1]] == [64] * (len(batches) - 1)
    assert [m for b in batches for m in b.mol_id] == train_ids
    assert list(iter_batches(tmp_path / "ds", split="train", batch_size=64, drop_last=True))[-1].fp.shape == (64, 8)

    def shuffled(seed: int) -> list[str]:
        return [m for b in iter_batches(tmp_path / "ds", batch_size=50, shuffle_seed=seed,
                                        columns=["mol_id"]) for m in b.mol_id]
    assert shuffled(1) == shuffled(1) != shuffled(2)
    assert sorted(shuffled(1)) == sorted(table["mol_id"].to_pylist())
    only_fp = next(iter_batches(tmp_path / "ds", columns=()))
    assert only_fp.mol_id is None and only_fp.smiles is None


def test_failed_write_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError, match="row accounting"):
        _write_wrong_count(tmp_path / "ds")
    assert list(tmp_path.iterdir()) == []


def _write_wrong_count(out: Path) -> None:
    with DatasetWriter(out, SPEC, TASKS, with_split=True) as writer:
        writer.write_features(_features(10))
        writer.commit(input_rows=11, input_identity={}, options={})


def test_finished_dataset_detection(tmp_path: Path) -> None:
    _write(tmp_path / "ds", _features(20))
    assert find_finished(tmp_path / "ds", {"path": "x"}, {"split": "random"}) is not None
    with pytest.raises(InputDataError, match="--overwrite"):
        find_finished(tmp_path / "ds", {"path": "y"}, {"split": "random"})
    assert find_finished(tmp_path / "ds", {"path": "y"}, {}, overwrite=True) is None
    _write(tmp_path / "ds", _features(30), overwrite=True)
    assert read_dataset_info(tmp_path / "ds").accepted == 30
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "file.txt").write_text("x")
    with pytest.raises(InputDataError, match="not a fingerprint dataset"):
        find_finished(tmp_path / "junk", {}, {})
    with pytest.raises(InputDataError, match="no split column"):
        with DatasetWriter(tmp_path / "nosplit", SPEC, [], with_split=False) as writer:
            writer.commit(input_rows=0, input_identity={}, options={})
        next(iter_batches(tmp_path / "nosplit", split="train"))
