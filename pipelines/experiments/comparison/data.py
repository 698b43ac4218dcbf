"""The comparison's data in memory, cut into the same batches for every row."""
from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from featurize.dataset import DatasetInfo, read_dataset_info
from featurize.errors import InputDataError
from featurize.reader import read_all
from pipelines.training.engine import (
    Batch,
    epoch_seed,
)

SPLITS = ("train", "valid", "test")
VALID_BATCH_SIZE = 4096


@dataclass(frozen=True)
class ComparisonData:
    """The dataset with its train and valid splits in memory (packed, so a
    1024-bit PCBA row is 128 + K bytes). On a GPU the train split lives on
    the device and batches are cut there, so no epoch waits on the host."""

    info: DatasetInfo
    train_fp: torch.Tensor
    train_labels: torch.Tensor
    valid_fp: np.ndarray
    valid_labels: np.ndarray

    @classmethod
    def load(cls, data_dir: str | Path, device: torch.device | str = "cpu") -> ComparisonData:
        info = read_dataset_info(data_dir)
        if not info.has_labels:
            raise InputDataError(f"{info.path}: dataset has no task labels to compare models on")
        empty = [split for split in SPLITS if not info.split_counts.get(split)]
        if empty:
            raise InputDataError(f"{info.path}: the {' and '.join(empty)} split is empty or missing; "
                                 "the comparison needs train, valid and test (featurize with --split)")
        train, valid = (read_all(info, split=split, columns=()) for split in ("train", "valid"))
        return cls(info=info, train_fp=torch.from_numpy(train.fp).to(device),
                   train_labels=torch.from_numpy(train.labels).to(device),
                   valid_fp=valid.fp, valid_labels=valid.labels)

    def train_batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[Batch]:
        """The epoch's shuffled batches (a permutation seeded by seed and epoch,
        the same for every configuration); the last partial batch is kept."""
        generator = torch.Generator().manual_seed(epoch_seed(seed, epoch, 0))
        order = torch.randperm(len(self.train_fp), generator=generator).to(self.train_fp.device)
        for start in range(0, len(order), batch_size):
            rows = order[start:start + batch_size]
            yield self.train_fp[rows], self.train_labels[rows]

    def valid_batches(self) -> Iterator[Batch]:
        for start in range(0, len(self.valid_fp), VALID_BATCH_SIZE):
            stop = start + VALID_BATCH_SIZE
            yield self.valid_fp[start:stop], self.valid_labels[start:stop]
