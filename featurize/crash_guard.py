"""Find the rows that crash RDKit, in child processes, so one bad row is
rejected instead of taking its whole block (or job) down.

A segmentation fault in RDKit's C++ ends the process: no ``except`` sees
it. On Ray the task's worker dies and Ray Data retries the task without
limit, so a row that crashes every time would fail every retry and the job
would never end. :mod:`featurize.ray_stage` therefore marks each Ray task's
row range before featurizing it; a retry that finds the mark knows the last
attempt died and first runs :func:`crashing_rows`, which featurizes the rows
one by one in a child process. When the child dies, the row it was on is the
culprit; a new child goes on from the next row. The parent then featurizes
the block with those rows rejected. The size limits of
:mod:`featurize.standardize` keep the known crashes from happening at all;
this is the net for the ones nobody knows yet.
"""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pyarrow as pa


def crashing_rows(batch: pa.Table, batch_kwargs: dict[str, object]) -> dict[int, str]:
    """Index -> reason ("RDKit crashed (signal 11)") for each row of
    ``batch`` whose featurization kills the process; empty if none does."""
    crashed: dict[int, str] = {}
    first = 0
    while first < batch.num_rows:
        finished, returncode = _probe(batch, first, batch_kwargs)
        if returncode == 0:
            break
        culprit = first + finished
        how = f"signal {-returncode}" if returncode < 0 else f"exit code {returncode}"
        crashed[culprit] = f"RDKit crashed ({how})"
        first = culprit + 1
    return crashed


def _probe(batch: pa.Table, first: int, batch_kwargs: dict[str, object]) -> tuple[int, int]:
    """Featurize rows ``first..`` of ``batch`` one at a time in a child
    process; returns how many rows it finished and its exit status."""
    package_root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        filter(None, [package_root, os.environ.get("PYTHONPATH")]))}
    child = subprocess.run([sys.executable, "-m", "featurize.crash_guard"],
                           input=pickle.dumps((batch.slice(first), batch_kwargs)),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, check=False)
    return child.stdout.count(b"\n"), child.returncode


def _probe_child() -> None:
    """The child's side: one line on stdout after each finished row."""
    from featurize.batch import featurize_batch

    batch, batch_kwargs = pickle.loads(sys.stdin.buffer.read())
    for index in range(batch.num_rows):
        featurize_batch(batch.slice(index, 1), **batch_kwargs)
        sys.stdout.write("\n")
        sys.stdout.flush()


if __name__ == "__main__":
    _probe_child()
