"""Per-run checkpoints of a comparison, so that a killed or time-capped
compare picks up where it stopped.

A comparison of MAML-MTL rows on a CPU runs for hours; the machine it runs
on may not. With a checkpoint directory every (configuration, seed) run
writes, after each epoch, its weights, optimizer state, loop state,
per-epoch history and best weights; a finished run adds its outcome. A
rerun with the same rows and settings reuses finished runs, resumes the
others from their last epoch, and continues a run its time budget stopped
once the budget is raised. The epoch loop reseeds every epoch from (seed,
epoch) and the batches are a function of them too, so a resumed run takes
the same steps as an uninterrupted one.

A checkpoint is plain data (tensors, dicts, lists, numbers; records through
:mod:`plain_data`), read with ``torch.load(weights_only=True)``; a file
written before that (a pickled ``RunProgress``) is still read, once, and
rewritten plain on the run's next save.
"""
from __future__ import annotations

import dataclasses
import os
import pickle
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.experiments.comparison.plain_data import from_plain, to_plain
from pipelines.training.engine import EpochResult, LoopState

#: Fields of :class:`RunProgress` that hold records (the rest are tensors and plain values).
RECORD_FIELDS = ("history", "outcome")


@dataclass
class RunProgress:
    """What a run has done so far: enough to resume it, or to reuse it."""

    identity: dict[str, Any]
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict[str, Any]
    loop_state: dict[str, Any]
    history: list[EpochResult] = field(default_factory=list)
    best_state_dict: dict[str, torch.Tensor] | None = None
    wall_seconds: float = 0.0
    outcome: RunOutcome | None = None  # once the run has finished

    @property
    def trained_seconds(self) -> float:
        return sum(epoch.train_seconds for epoch in self.history)

    def loop(self) -> LoopState:
        return LoopState.from_dict(dict(self.loop_state))


class RunCheckpoints:
    """One file per (configuration, seed) under ``directory``."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, configuration: str, seed: int) -> Path:
        slug = re.sub(r"[^A-Za-z0-9.=-]+", "_", configuration).strip("_")
        return self.directory / f"{slug}-seed{seed}.pt"

    def load(self, configuration: str, seed: int, identity: dict[str, Any],
             defaults: Mapping[str, Any] | None = None) -> RunProgress | None:
        """The run's progress, None if it has none; an error if the file was
        written by a run with other settings (resuming it would mix them).

        ``defaults``: the values of settings added since the file may have
        been written. A setting the file does not name is taken to have had
        its default there, so adding a setting (whose default keeps the old
        behaviour) does not orphan the runs in flight; a setting given
        another value than its default still refuses them.
        """
        path = self.path(configuration, seed)
        if not path.exists():
            return None
        progress = read_progress(path)
        defaults = defaults or {}
        saved = {**{key: defaults[key] for key in identity.keys() & defaults.keys()},
                 **progress.identity}
        changed = sorted(key for key in {*identity, *saved} if identity.get(key) != saved.get(key))
        if changed:
            shown = ", ".join(f"{key}: {saved.get(key)!r} there, {identity.get(key)!r} now"
                              for key in changed[:5])
            raise ValueError(f"{path} is a checkpoint of {configuration} seed {seed} with other settings "
                             f"({shown}{', ...' if len(changed) > 5 else ''}); give another "
                             "--checkpoint-dir or delete the file to start that run over")
        progress.identity = dict(identity)  # its next save names the added settings too
        return progress

    def save(self, configuration: str, seed: int, progress: RunProgress) -> None:
        """Write atomically: a run killed while saving keeps its last checkpoint."""
        path = self.path(configuration, seed)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        saved = {item.name: getattr(progress, item.name) for item in dataclasses.fields(progress)}
        torch.save({**saved, **{name: to_plain(saved[name]) for name in RECORD_FIELDS}}, partial)
        os.replace(partial, path)


def read_progress(path: Path) -> RunProgress:
    """A checkpoint file: plain data, or a pickled RunProgress from before."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # Written by this module before checkpoints were plain data, on the
        # user's own file system.
        return torch.load(path, map_location="cpu", weights_only=False)
    return RunProgress(**{**saved, **{name: from_plain(saved[name]) for name in RECORD_FIELDS}})
