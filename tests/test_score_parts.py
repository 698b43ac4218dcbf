"""What a killed screen leaves behind, and what the same screen run again
keeps: committed parts survive with their rows, half-written ones are
dropped, new parts follow the last one, the rejects merge in row order;
the staged folder is found again by the screening's identity."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from featurize.publishing import StagedFolder
from pipelines.screening.outputs import scores_schema
from pipelines.screening.score_parts import ScoreParts

ASSAYS = ["A", "B"]


def _block(rows: range, rejected_every: int = 7) -> tuple[pa.Table, pa.Table]:
    rows = np.array(rows, dtype=np.int64)
    bad = rows % rejected_every == 0
    good = rows[~bad]
    scores = pa.table({"row": good, "mol_id": [f"M{row}" for row in good], "smiles": ["CCO"] * len(good),
                       "A": np.full(len(good), 0.5, np.float32), "B": (good / 1000).astype(np.float32)})
    rejects = pa.table({"row": rows[bad], "raw": ["x"] * int(bad.sum()),
                        "mol_id": [f"M{row}" for row in rows[bad]], "reason": ["unparsable SMILES"] * int(bad.sum())})
    return scores, rejects


def test_a_killed_writer_keeps_its_committed_parts_and_the_next_run_goes_on(tmp_path: Path) -> None:
    schema = scores_schema(ASSAYS)
    first = ScoreParts(tmp_path, schema, rows_per_part=100)
    for start in range(0, 250, 50):  # parts commit after 100 rows: 0-99, 100-199; 200-249 open
        first.write(*_block(range(start, start + 50)))
    assert [path.name for path in first.score_files] == ["part-00000.parquet", "part-00001.parquet"]
    assert sorted(path.name for path in (tmp_path / "scores").glob(".*.tmp")) == [".part-00002.parquet.tmp"]
    # The kill: the open part's files stay half-written; say its rejects were renamed, its scores not.
    (tmp_path / "rejects" / ".part-00002.parquet.tmp").rename(tmp_path / "rejects" / "part-00002.parquet")

    second = ScoreParts(tmp_path, schema, rows_per_part=100)
    done = second.committed()
    assert sorted(done.rows.tolist()) == list(range(200))
    assert (done.scored, done.rejected) == (200 - 29, 29)  # every 7th row of 0..199 rejected
    assert not list(tmp_path.rglob(".*.tmp")) and not (tmp_path / "rejects" / "part-00002.parquet").exists()
    mask = done.mask()
    assert mask.shape == (200,) and mask.all()
    for start in range(200, 300, 50):
        second.write(*_block(range(start, start + 50)))
    second.close()
    assert [path.name for path in second.score_files][-1] == "part-00002.parquet"
    scored = pa.concat_tables([pq.read_table(path) for path in second.score_files])
    rejected_count = second.merge_rejects(tmp_path / "rejects.parquet")
    rejects = pq.read_table(tmp_path / "rejects.parquet")
    assert sorted(scored["row"].to_pylist() + rejects["row"].to_pylist()) == list(range(300))
    assert rejects["row"].to_pylist() == sorted(rejects["row"].to_pylist()) and rejected_count == 43
    assert not (tmp_path / "rejects").exists()


def test_an_empty_screen_still_writes_a_readable_score_part(tmp_path: Path) -> None:
    parts = ScoreParts(tmp_path, scores_schema(ASSAYS))
    parts.close()
    assert [pq.read_table(path).num_rows for path in parts.score_files] == [0]
    assert parts.merge_rejects(tmp_path / "rejects.parquet") == 0


def test_a_resumable_staged_folder_is_found_again_by_its_key(tmp_path: Path) -> None:
    out = tmp_path / "screen"
    first = StagedFolder(out, resume_key="aaaa")
    (first.path / "kept.txt").write_text("committed")
    with first:
        pass  # leaving unpublished keeps a resumable folder
    again = StagedFolder(out, resume_key="aaaa")
    assert again.resumed and (again.path / "kept.txt").read_text() == "committed"
    other = StagedFolder(out, resume_key="bbbb")  # another screening for the same folder
    assert not other.resumed and not again.path.exists()
    other.publish()
    assert out.is_dir() and not list(tmp_path.glob(".screen.*"))
