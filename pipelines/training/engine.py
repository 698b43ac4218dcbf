"""The training loop, without Ray: epochs of steps, evaluation, early
stopping on validation mean AP, best-epoch tracking.

The Ray Train worker (pipelines/training/worker.py) runs this loop on its
data shard with a :class:`~pipelines.training.collective.Collective` that
all-reduces gradients; single-process callers (benchmarks, the baseline of
the Ray overhead measurement) run the very same loop with the default
:class:`~pipelines.training.collective.LocalCollective`. One loop, not two.

Batches arrive as packed fingerprints (uint8) and int8 labels (-1 missing)
and are unpacked on the training device, so host-to-device traffic stays
packed (featurize/tensors.py).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from featurize.spec import FingerprintSpec
from featurize.tensors import labels_to_tensors, unpack_fingerprints
from models.metrics import TaskMetrics, evaluate_tasks
from models.networks.sparse_input import Features, SparseRows
from models.steps import TrainStep
from pipelines.training.collective import Collective, LocalCollective

logger = logging.getLogger(__name__)

#: A batch as the loop receives it: packed fingerprints uint8[B, n_bytes]
#: and labels int8[B, K] (1, 0, -1 missing), numpy or CPU tensors.
Batch = tuple[np.ndarray | torch.Tensor, np.ndarray | torch.Tensor]
#: MAML-MTL splits a batch into inner and outer rows: it needs two rows.
MIN_TRAIN_BATCH_ROWS = 2


@dataclass
class LoopState:
    """What, besides weights and optimizer state, a resumed run needs.

    epoch: epochs completed. best_valid_mean_ap / best_epoch: the best
    validation mean AP so far and its (0-based) epoch. epochs_without_improvement
    counts towards ``patience``. stopped_early: the loop ended on patience.
    """

    epoch: int = 0
    best_valid_mean_ap: float = -math.inf
    best_epoch: int = -1
    epochs_without_improvement: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> LoopState:
        return cls(**values)

    def finished(self, epochs: int) -> bool:
        return self.stopped_early or self.epoch >= epochs


@dataclass(frozen=True)
class EpochResult:
    """One epoch's numbers (train loss averaged over all workers' steps)."""

    epoch: int
    train_loss: float
    train_task_losses: np.ndarray
    train_samples: int
    train_seconds: float
    valid: TaskMetrics
    improved: bool

    def metrics(self, state: LoopState) -> dict[str, float]:
        """Flat metrics for ray.train.report / MLflow."""
        return {
            "epoch": self.epoch,
            "train_loss": self.train_loss,
            "train_samples": self.train_samples,
            "train_seconds": self.train_seconds,
            "train_samples_per_s": self.train_samples / max(self.train_seconds, 1e-9),
            **self.valid.means("valid"),
            "best_valid_mean_ap": state.best_valid_mean_ap,
            "best_epoch": state.best_epoch,
        }


@dataclass
class FitResult:
    """The loop's end: final state and per-epoch history (a caller that
    keeps the best epoch's weights does so in ``on_epoch_end``)."""

    state: LoopState
    history: list[EpochResult] = field(default_factory=list)


class EpochLoop:
    """Runs steps of ``step`` with ``optimizer`` on ``model`` (on ``device``)
    and evaluates it; ``collective`` makes it data parallel."""

    def __init__(self, model: torch.nn.Module, step: TrainStep, optimizer: torch.optim.Optimizer,
                 spec: FingerprintSpec, device: torch.device | str = "cpu", *,
                 collective: Collective | None = None, seed: int = 0) -> None:
        self.model = model
        self.step = step
        self.optimizer = optimizer
        self.spec = spec
        self.device = torch.device(device)
        self.collective = collective or LocalCollective()
        self.seed = seed

    def to_device(self, batch: Batch) -> tuple[Features, torch.Tensor, torch.Tensor]:
        """(x float[B, n_bits] or its on-bits, labels float[B, K], mask
        bool[B, K]) on the device. On a CPU a step that gains from it gets
        the fingerprint's on-bits (2-5 % of them) as SparseRows: its first
        layers touch only those rows of their weights, forward and backward."""
        fp, labels = batch
        fp = torch.as_tensor(fp).to(self.device, non_blocking=True)
        y, mask = labels_to_tensors(labels, self.device)
        return model_input(unpack_fingerprints(fp, self.spec), self.step.gains_from_sparse_rows), y, mask

    def train_epoch(self, batches: Iterable[Batch], epoch: int) -> tuple[float, np.ndarray, int, float]:
        """One pass over ``batches``: (mean loss over all workers' steps, mean
        per-task loss, rows trained on by this worker, seconds).

        RNG (dropout, MAML-MTL task sampling) is reseeded from (seed, epoch,
        rank) so an epoch replayed after a restart draws the same numbers.
        """
        torch.manual_seed(epoch_seed(self.seed, epoch, self.collective.rank))
        self.model.train()
        n_tasks = self.model.config.n_tasks
        loss_sum = torch.zeros((), dtype=torch.float64, device=self.device)
        task_loss_sum = torch.zeros(n_tasks, dtype=torch.float64, device=self.device)
        steps = samples = 0
        start = time.perf_counter()
        for batch in batches:
            if len(batch[0]) < MIN_TRAIN_BATCH_ROWS:
                continue  # same on every worker: equal shards give equal batch sizes
            x, y, mask = self.to_device(batch)
            output = self.step(self.model, x, y, mask)
            self.collective.average_gradients(self.model.parameters())
            self.optimizer.step()
            loss_sum += output.loss.double()
            task_loss_sum += torch.nan_to_num(output.task_losses.double())
            steps += 1
            samples += len(x)
        seconds = time.perf_counter() - start
        totals = self.collective.sum(torch.cat([loss_sum.reshape(1), task_loss_sum,
                                                torch.tensor([steps], dtype=torch.float64,
                                                             device=self.device)]))
        total_steps = max(float(totals[-1]), 1.0)
        return (float(totals[0]) / total_steps, (totals[1:-1] / total_steps).cpu().numpy(),
                samples, seconds)

    def evaluate(self, batches: Iterable[Batch]) -> TaskMetrics:
        return evaluate(self.model, batches, self.spec, self.device)

    def fit(self, train_batches: Callable[[int], Iterable[Batch]],
            valid_batches: Callable[[], Iterable[Batch]], *, epochs: int, patience: int,
            state: LoopState | None = None,
            on_epoch_end: Callable[[EpochResult, LoopState], None] | None = None) -> FitResult:
        """Train from ``state`` (a fresh one by default) until ``epochs`` or
        ``patience`` epochs without a better validation mean AP.

        ``train_batches(epoch)`` gives the epoch's batches (shuffled as the
        caller likes); ``valid_batches()`` the validation set, evaluated in
        full on every worker so every worker takes the same early-stopping
        decision. ``on_epoch_end`` runs after the state is updated (the Ray
        worker reports and checkpoints there, a comparison run keeps its best
        weights).
        """
        state = state or LoopState()
        result = FitResult(state=state)
        while not state.finished(epochs):
            epoch = state.epoch
            loss, task_losses, samples, seconds = self.train_epoch(train_batches(epoch), epoch)
            valid = self.evaluate(valid_batches())
            improved = _finite(valid.mean_ap) > state.best_valid_mean_ap
            if improved:
                state.best_valid_mean_ap = _finite(valid.mean_ap)
                state.best_epoch = epoch
                state.epochs_without_improvement = 0
            else:
                state.epochs_without_improvement += 1
            state.epoch = epoch + 1
            state.stopped_early = 0 < patience <= state.epochs_without_improvement
            epoch_result = EpochResult(epoch, loss, task_losses, samples, seconds, valid, improved)
            result.history.append(epoch_result)
            if on_epoch_end is not None:
                on_epoch_end(epoch_result, state)
        return result


@torch.inference_mode()
def cpu_state_dict(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A copy of the model's weights on the CPU, detached: the best epoch's,
    kept while training goes on."""
    return {key: value.detach().to("cpu", copy=True) for key, value in model.state_dict().items()}


def model_input(x: torch.Tensor, sparse: bool = True) -> Features:
    """Dense bits as the network reads them fastest: SparseRows on a CPU
    (the same numbers as dense within float tolerance), dense on a GPU."""
    return SparseRows.from_dense(x) if sparse and x.device.type == "cpu" else x


@torch.no_grad()
def predict(model: torch.nn.Module, batches: Iterable[Batch], spec: FingerprintSpec,
            device: torch.device | str = "cpu") -> tuple[np.ndarray, np.ndarray]:
    """(probabilities float32[N, K], labels int8[N, K]) in eval mode."""
    model.eval()
    probs, labels = [], []
    for fp, batch_labels in batches:
        x = model_input(unpack_fingerprints(torch.as_tensor(fp).to(device, non_blocking=True), spec))
        probs.append(torch.sigmoid(model(x)).float().cpu().numpy())
        labels.append(np.asarray(batch_labels, dtype=np.int8))
    n_tasks = model.config.n_tasks
    if not probs:
        return np.zeros((0, n_tasks), np.float32), np.zeros((0, n_tasks), np.int8)
    return np.concatenate(probs), np.concatenate(labels)


def evaluate(model: torch.nn.Module, batches: Iterable[Batch], spec: FingerprintSpec,
             device: torch.device | str = "cpu") -> TaskMetrics:
    """Per-task AP and ROC-AUC over present labels (models.metrics)."""
    probs, labels = predict(model, batches, spec, device)
    return evaluate_tasks(labels > 0, probs, labels >= 0)


def epoch_seed(seed: int, epoch: int, rank: int) -> int:
    """A distinct, reproducible seed per (run seed, epoch, worker rank)."""
    return int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1)[0])


def iter_dataset_batches(dataset: Any, split: str, batch_size: int,
                         shuffle_seed: int | None = None) -> Iterator[Batch]:
    """Single-process batches straight from the Parquet files (featurize's
    streaming reader), for callers running the loop without Ray."""
    from featurize.reader import iter_batches

    for batch in iter_batches(dataset, split=split, batch_size=batch_size, columns=(),
                              shuffle_seed=shuffle_seed):
        yield batch.fp, batch.labels


def _finite(value: float) -> float:
    """NaN (no task with both classes) ranks below every real score."""
    return value if math.isfinite(value) else -math.inf
