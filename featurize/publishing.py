"""Publishing outputs all at once: a job writes into a hidden sibling of its
destination and renames it into place when complete, so a reader (or a
re-run checking what is there) never sees half an output, and a killed job
leaves the previous output whole.

One mechanism for every job that publishes (featurize's dataset folder,
screen's output folder, the run job's stage records and library file).
Replacing an existing folder moves it aside first, renames the new one in,
then deletes the old: at every moment the destination is the old output or
the new one, never missing and never mixed.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any


class StagedFolder:
    """A hidden folder beside ``destination`` that :meth:`publish` renames
    into place. As a context manager, leaving the block unpublished (an
    exception) removes it.

    With ``resume_key`` (what the output is made from, hashed) the folder
    is named by it and outlives a failed or killed job: the same job run
    again finds it (``resumed``) and can keep what was committed there; a
    staged folder of another key for the same destination is stale and is
    removed."""

    def __init__(self, destination: str | os.PathLike[str], resume_key: str | None = None) -> None:
        self.destination = Path(destination).resolve()
        self.destination.parent.mkdir(parents=True, exist_ok=True)
        self.resume_key = resume_key
        if resume_key is None:
            self.path = self._sibling("tmp")
            self.resumed = False
        else:
            self.path = self.destination.parent / f".{self.destination.name}.partial-{resume_key}"
            for stale in self.destination.parent.glob(f".{self.destination.name}.partial-*"):
                if stale != self.path:
                    shutil.rmtree(stale, ignore_errors=True)
            self.resumed = self.path.is_dir()
        self.path.mkdir(exist_ok=self.resumed)
        self.published = False

    def __enter__(self) -> StagedFolder:
        return self

    def __exit__(self, *_: object) -> None:
        if not self.published and self.resume_key is None:
            self.discard()

    def publish(self) -> None:
        """Make the staged folder the destination (an empty or missing one is
        simply replaced; the caller decides beforehand whether an occupied one
        may be)."""
        if self.destination.exists() and any(self.destination.iterdir()):
            old = self._sibling("old")
            self.destination.rename(old)
            self.path.rename(self.destination)
            shutil.rmtree(old)
        else:
            if self.destination.exists():
                self.destination.rmdir()
            self.path.rename(self.destination)
        self.published = True

    def discard(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)

    def _sibling(self, kind: str) -> Path:
        return self.destination.parent / f".{self.destination.name}.{kind}-{uuid.uuid4().hex[:8]}"


@contextlib.contextmanager
def staged_file(destination: str | os.PathLike[str]) -> Iterator[Path]:
    """A hidden path beside ``destination`` to write; renamed into place when
    the block ends normally, removed when it raises."""
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    temporary = destination.with_name(f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        yield temporary
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)


def jsonable(value: Any) -> Any:
    """``value`` as it reads back from the JSON a manifest is written as (keys
    sorted, paths and other objects as text), so a stored identity and a
    fresh one compare equal exactly when they would be written the same."""
    return json.loads(json.dumps(value, sort_keys=True, default=str))
