"""The function every Ray Train worker runs (``train_loop_per_worker``).

Each worker builds the model from the config (same seed, so the same
initial weights, then rank 0's are broadcast to be sure), restores the
latest checkpoint when Ray Train hands one over (after a worker failure, or
a re-run with the same run name), streams its own shard of the train split
through Ray Data (and the whole valid split from the Parquet files), and
runs the shared loop (pipelines/training/engine.py) with gradients averaged
across workers (pipelines/training/collective.py).

After every epoch each worker calls ``ray.train.report``; rank 0 attaches a
checkpoint of model + optimizer + loop state (epoch, best so far, patience
count), so a failure loses at most the epoch in progress.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from featurize.dataset import read_dataset_info
from featurize.reader import fixed_binary_to_numpy
from models.factory import build_model
from models.steps import build_step
from pipelines.platform.torch_setup import use_huge_pages
from pipelines.training.collective import Collective, LocalCollective, TorchDistributedCollective
from pipelines.training.config import TrainConfig, optimizer_for
from pipelines.training.engine import (
    Batch,
    EpochLoop,
    EpochResult,
    LoopState,
    epoch_seed,
    iter_dataset_batches,
)

logger = logging.getLogger("pipelines.training")

TRAIN_SPLIT, VALID_SPLIT = "train", "valid"
CHECKPOINT_FILE = "training_state.pt"
#: Rows held by the per-epoch local shuffle, in batches.
SHUFFLE_BUFFER_BATCHES = 16
VALID_BATCH_SIZE = 4096


def train_loop_per_worker(loop_config: dict[str, Any]) -> None:
    """Ray Train entry point; ``loop_config["train"]`` is TrainConfig.to_dict()."""
    import ray.train
    import ray.train.torch

    use_huge_pages()  # cluster workers too, where the job's env may not have it
    _configure_worker_logging()
    config = TrainConfig.from_dict(loop_config["train"])
    info = read_dataset_info(config.data_dir)
    spec, tasks = info.spec, info.tasks
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()

    model = build_model(config.model).to(device)
    optimizer = optimizer_for(model, config)
    state = restore_checkpoint(ray.train.get_checkpoint(), model, optimizer, device)
    collective: Collective = TorchDistributedCollective() if world_size > 1 else LocalCollective()
    collective.broadcast_parameters(model)
    loop = EpochLoop(model, build_step(config.step), optimizer, spec, device,
                     collective=collective, seed=config.seed)
    if state.epoch:
        logger.info("resuming at epoch %d (best valid mean AP %.4f at epoch %d)",
                    state.epoch, state.best_valid_mean_ap, state.best_epoch)

    train_shard = ray.train.get_dataset_shard(TRAIN_SPLIT)

    def train_batches(epoch: int) -> Iterator[Batch]:
        if rank == 0:
            maybe_inject_failure(config, epoch)
        # Same shuffle seed on every rank: each shuffles its own shard.
        return shard_batches(train_shard, config.batch_size, tasks, spec.n_bytes,
                             shuffle_seed=epoch_seed(config.seed, epoch, 0))

    def valid_batches() -> Iterator[Batch]:
        return iter_dataset_batches(info, VALID_SPLIT, VALID_BATCH_SIZE)

    def report(result: EpochResult, loop_state: LoopState) -> None:
        metrics = result.metrics(loop_state)
        metrics["weight_spread"] = collective.weight_spread(model)
        metrics["stopped_early"] = float(loop_state.stopped_early)
        metrics.update(result.valid.per_task("valid", tasks))
        if metrics["weight_spread"] != 0.0:
            raise RuntimeError(f"workers' weights diverged (checksum spread "
                               f"{metrics['weight_spread']:.3g}) at epoch {result.epoch}")
        if rank == 0:
            logger.info("epoch %d/%d  train_loss %.4f  valid mean AP %.4f  ROC-AUC %.4f  "
                        "%.0f samples/s/worker%s", result.epoch + 1, config.epochs,
                        result.train_loss, result.valid.mean_ap, result.valid.mean_roc_auc,
                        metrics["train_samples_per_s"], "  (best)" if result.improved else "")
        report_with_checkpoint(metrics, rank, result.epoch, model, optimizer, loop_state)

    loop.fit(train_batches, valid_batches, epochs=config.epochs, patience=config.patience,
             state=state, on_epoch_end=report)


def shard_batches(shard: Any, batch_size: int, tasks: list[str], n_bytes: int, *,
                  shuffle_seed: int | None = None) -> Iterator[Batch]:
    """Packed (fp, labels) batches from a Ray Data iterator; with a seed, rows
    are shuffled in a bounded local buffer (memory stays bounded however
    large the split)."""
    shuffle = {} if shuffle_seed is None else {
        "local_shuffle_buffer_size": SHUFFLE_BUFFER_BATCHES * batch_size,
        "local_shuffle_seed": shuffle_seed}
    for table in shard.iter_batches(batch_size=batch_size, batch_format="pyarrow",
                                    prefetch_batches=2, **shuffle):
        labels = np.column_stack([table[task].to_numpy() for task in tasks]).astype(np.int8)
        yield fixed_binary_to_numpy(table["fp"], n_bytes), labels


def report_with_checkpoint(metrics: dict[str, float], rank: int, epoch: int,
                           model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                           state: LoopState) -> None:
    """``ray.train.report`` on every rank (it is a barrier); rank 0 attaches
    the checkpoint (the weights are identical on all ranks)."""
    import ray.train

    if rank != 0:
        ray.train.report(metrics)
        return
    with tempfile.TemporaryDirectory(prefix="pcba-ckpt-") as directory:
        torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                    "loop_state": state.to_dict()}, Path(directory) / CHECKPOINT_FILE)
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(directory),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")


def restore_checkpoint(checkpoint: Any, model: torch.nn.Module,
                       optimizer: torch.optim.Optimizer | None,
                       device: torch.device | str = "cpu") -> LoopState:
    """Load a training checkpoint into ``model`` (and ``optimizer``) and
    return its loop state; a fresh state without a checkpoint."""
    if checkpoint is None:
        return LoopState()
    with checkpoint.as_directory() as directory:
        saved = torch.load(Path(directory) / CHECKPOINT_FILE, map_location=device,
                           weights_only=True)
    model.load_state_dict(saved["model"])
    if optimizer is not None:
        optimizer.load_state_dict(saved["optimizer"])
    return LoopState.from_dict(saved["loop_state"])


def failure_marker(config: TrainConfig) -> Path:
    return Path(config.storage_path) / str(config.run_name) / f".failed_at_epoch_{config.fail_at_epoch}"


def maybe_inject_failure(config: TrainConfig, epoch: int) -> None:
    """The ``fail_at_epoch`` testing knob: raise once per run name."""
    if config.fail_at_epoch != epoch:
        return
    marker = failure_marker(config)
    if marker.exists():
        return
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()
    raise RuntimeError(f"injected failure at epoch {epoch} (TrainConfig.fail_at_epoch, a testing knob)")


def _configure_worker_logging() -> None:
    """Ray workers start with bare logging; show our INFO lines (forwarded
    to the driver's console by Ray)."""
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(handler)
        logger.setLevel(os.environ.get("PCBA_LOG_LEVEL", "INFO"))
        logger.propagate = False
    # Ray Train V2 logs every ray.train.report at INFO, our 256 per-task
    # metrics included, under a logger named by its source file path. The
    # metrics reach MLflow anyway; keep the console to our epoch lines.
    from ray.train.v2._internal.execution import context as ray_train_context

    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)
