"""Training throughput: the plain single-process loop against Ray Train with
1 and 2 CPU workers on the same data, and (``--pcba-epoch``) one PCBA-sized
MAML-MTL epoch on a device.

    .venv/bin/python benchmarks/train.py                       # CPU table
    .venv/bin/python benchmarks/train.py --pcba-epoch --device cuda

The plain loop and the Ray worker run the same EpochLoop
(pipelines/training/engine.py); the difference is Ray Train itself (worker
actors, Ray Data streaming_split ingest, report + checkpoint per epoch).
Samples/s are per worker, medians over the epochs after the first (the
first pays process and pipeline start-up).
"""
from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurize.dataset import DatasetWriter, read_dataset_info  # noqa: E402
from featurize.spec import FingerprintSpec  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.factory import build_model  # noqa: E402
from models.steps import StepConfig, build_step  # noqa: E402
from pipelines.platform.torch_setup import use_huge_pages  # noqa: E402
from pipelines.text_tables import format_table  # noqa: E402
from pipelines.training.engine import EpochLoop, iter_dataset_batches  # noqa: E402

logger = logging.getLogger("benchmarks.train")
#: The MAML-MTL variant both tables of docs/benchmarks.md ("Training on Ray
#: Train") were measured with; the product's default has since become swap.
MAML_VARIANT = "split"


def synthetic_batches(rows: int, n_tasks: int, spec: FingerprintSpec, batch_size: int,
                      seed: int = 0, active_rate: float = 0.015, present_rate: float = 0.3):
    """PCBA-like packed rows: ~12 % of bits on, most labels missing, ~1.5 % actives."""
    rng = np.random.default_rng(seed)
    for start in range(0, rows, batch_size):
        n = min(batch_size, rows - start)
        bits = (rng.random((n, spec.n_bits)) < 0.12).astype(np.uint8)
        fp = np.packbits(bits, axis=1, bitorder="little")
        labels = np.where(rng.random((n, n_tasks)) < present_rate,
                          (rng.random((n, n_tasks)) < active_rate).astype(np.int8), -1).astype(np.int8)
        yield fp, labels


def write_synthetic_dataset(out_dir: Path, rows: int, n_tasks: int, spec: FingerprintSpec) -> Path:
    """A fingerprint dataset on disk (80/10/10 split) for the CPU comparison."""
    tasks = [f"task_{k:03d}" for k in range(n_tasks)]
    splits = np.random.default_rng(1).choice(["train", "valid", "test"], size=rows, p=[0.8, 0.1, 0.1])
    with DatasetWriter(out_dir, spec, tasks, with_split=True, rows_per_shard=rows // 4 + 1,
                       row_group_size=2048) as writer:
        offset = 0
        for fp, labels in synthetic_batches(rows, n_tasks, spec, 4096):
            n = len(fp)
            columns = {"mol_id": pa.array([f"m{offset + i}" for i in range(n)]),
                       "smiles": pa.nulls(n, pa.string()),
                       "fp": pa.FixedSizeBinaryArray.from_buffers(
                           pa.binary(spec.n_bytes), n, [None, pa.py_buffer(fp.tobytes())]),
                       **{task: labels[:, k] for k, task in enumerate(tasks)},
                       "split": pa.array(splits[offset:offset + n])}
            writer.write_features(pa.table(columns))
            offset += n
        writer.commit(input_rows=rows, input_identity={"synthetic": rows}, options={})
    return out_dir


def plain_loop(dataset: Path, model_config: ModelConfig, step_config: StepConfig,
               batch_size: int, epochs: int) -> list[float]:
    """Samples/s per epoch of the loop without Ray (1 process)."""
    info = read_dataset_info(dataset)
    torch.set_num_threads(1)  # as one Ray worker with 1 CPU
    model = build_model(model_config)
    loop = EpochLoop(model, build_step(step_config), torch.optim.Adam(model.parameters(), 1e-3),
                     info.spec)
    rates = []
    for epoch in range(epochs):
        start = time.perf_counter()
        _, _, samples, _ = loop.train_epoch(
            iter_dataset_batches(info, "train", batch_size, shuffle_seed=epoch), epoch)
        loop.evaluate(iter_dataset_batches(info, "valid", 4096))
        rates.append(samples / (time.perf_counter() - start))
    return rates


def ray_loop(dataset: Path, model_config: ModelConfig, step_config: StepConfig,
             batch_size: int, epochs: int, workers: int, storage: Path) -> list[float]:
    """Samples/s per worker per epoch under Ray Train (train + valid + report
    + checkpoint, as the rank-0 worker timed them)."""
    from ray.train import UserCallback

    from pipelines.training.config import TrainConfig
    from pipelines.training.trainer import build_trainer, prepare_config

    log = storage / f"epochs-{workers}.jsonl"

    class EpochTimes(UserCallback):
        def __init__(self) -> None:
            self.last = None

        def after_report(self, run_context: Any, metrics: list[dict[str, Any]], checkpoint: Any) -> None:
            now = time.time()
            with open(log, "a") as handle:
                handle.write(json.dumps({"time": now, "samples": metrics[0]["train_samples"]}) + "\n")

    config, info = prepare_config(TrainConfig(
        data_dir=str(dataset), model=model_config, step=step_config, batch_size=batch_size,
        epochs=epochs, patience=0, num_workers=workers, resources_per_worker={"CPU": 1.0},
        run_name=f"bench-{workers}w-{int(time.time())}", storage_path=str(storage)))
    build_trainer(config, info, callbacks=[EpochTimes()]).fit()
    reports = [json.loads(line) for line in log.read_text().splitlines()]
    return [later["samples"] / (later["time"] - earlier["time"])
            for earlier, later in zip(reports, reports[1:])]


def cpu_comparison(args: argparse.Namespace) -> None:
    import ray

    spec = FingerprintSpec(n_bits=args.bits)
    model_config = ModelConfig(architecture="mmoeex", n_features=args.bits, n_tasks=args.tasks, n_experts=args.experts,
                               expert_hidden=tuple(args.expert_hidden), alpha=0.5)
    step_config = StepConfig(optimizer=args.optimizer, maml_variant=MAML_VARIANT, pos_weight=None)
    with tempfile.TemporaryDirectory(prefix="bench-train-") as scratch:
        dataset = write_synthetic_dataset(Path(scratch) / "data", args.rows, args.tasks, spec)
        plain = plain_loop(dataset, model_config, step_config, args.batch_size, args.epochs)
        ray.init(address="local", num_cpus=args.ray_cpus, include_dashboard=False,
                 log_to_driver=False, configure_logging=False)
        results = {"plain loop (no Ray)": (1, plain)}
        for workers in (1, 2):
            results[f"Ray Train, {workers} worker{'s' * (workers > 1)}"] = (
                workers, ray_loop(dataset, model_config, step_config, args.batch_size,
                                  args.epochs, workers, Path(scratch) / "ray"))
        ray.shutdown()
    baseline = statistics.median(plain[1:])
    rows = []
    for name, (workers, rates) in results.items():
        # Plain: epochs 2.. of its own timing; Ray: intervals between reports
        # 2.. (the first interval after the first report spans one epoch).
        steady = statistics.median(rates[1:] if name.startswith("plain") else rates)
        rows.append({"setup": name, "workers": workers, "samples/s/worker": steady,
                     "total samples/s": steady * workers,
                     "per-sample time vs plain": f"{baseline / steady - 1:+.1%}"})
    print(format_table(rows, title=(f"training throughput: {args.rows:,} rows, K={args.tasks}, "
                                    f"{args.bits} bits, {args.optimizer}, E={args.experts}, "
                                    f"batch {args.batch_size}, {args.epochs} epochs")))


def pcba_epoch(args: argparse.Namespace) -> None:
    """One PCBA-sized epoch (440k rows, K=128) of MAML-MTL through the same
    EpochLoop, data generated in memory (no disk in the timing)."""
    device = torch.device(args.device)
    spec = FingerprintSpec(n_bits=args.bits)
    model_config = ModelConfig(architecture="mmoeex", n_features=args.bits, n_tasks=128, n_experts=args.experts,
                               expert_hidden=tuple(args.expert_hidden), alpha=0.5)
    rows = []
    for optimizer in ("plain", "maml-mtl"):
        model = build_model(model_config).to(device)
        step = build_step(StepConfig(optimizer=optimizer, maml_variant=MAML_VARIANT, pos_weight=None,
                                     autocast=args.autocast))
        loop = EpochLoop(model, step, torch.optim.Adam(model.parameters(), 3e-3), spec, device)
        batches = list(synthetic_batches(args.pcba_rows, 128, spec, args.batch_size))
        loop.train_epoch(batches[:3], epoch=0)  # warm-up (kernels, allocator)
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        _, _, samples, _ = loop.train_epoch(batches, epoch=1)
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
        rows.append({"optimizer": optimizer, "device": str(device), "rows": samples,
                     "epoch s": seconds, "samples/s": samples / seconds})
    print(format_table(rows, title=(f"PCBA-sized epoch: K=128, {args.bits} bits, E={args.experts}, "
                                    f"experts {args.expert_hidden}, batch {args.batch_size}, "
                                    f"autocast {args.autocast}")))


def main() -> None:
    use_huge_pages()  # as the jobs run; THP_MEM_ALLOC_ENABLE=0 to compare
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=48_000,
                        help="dataset rows (CPU comparison: ~15 s epochs on 2 cores; "
                             "shorter ones are dominated by host noise)")
    parser.add_argument("--tasks", type=int, default=32)
    parser.add_argument("--bits", type=int, default=1024)
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--expert-hidden", type=int, nargs="+", default=[256])
    parser.add_argument("--optimizer", default="maml-mtl", choices=["maml-mtl", "plain"])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--ray-cpus", type=int, default=3,
                        help="CPUs of the local Ray (2 workers + room for the readers)")
    parser.add_argument("--pcba-epoch", action="store_true",
                        help="time one PCBA-sized epoch instead (440k rows, K=128)")
    parser.add_argument("--pcba-rows", type=int, default=440_000)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--autocast", default=None, choices=["bfloat16", "float16"])
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.pcba_epoch:
        if args.expert_hidden == [256]:
            args.expert_hidden = [2000, 2000]  # the reference PCBA experts
        args.batch_size = max(args.batch_size, 2000) if args.batch_size == 256 else args.batch_size
        pcba_epoch(args)
    else:
        cpu_comparison(args)


if __name__ == "__main__":
    main()
