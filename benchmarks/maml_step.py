"""Time one training step: plain multi-task, fast exact MAML-MTL, reference loop.

    python benchmarks/maml_step.py                  # CPU: the MAML-MTL step table
    python benchmarks/maml_step.py --device cuda    # same table on a GPU
    python benchmarks/maml_step.py --alpha 0        # MMoE: no exclusive experts to skip
    python benchmarks/maml_step.py --variants split full swap   # one row per MAML-MTL variant

The model is MMoEEx with alpha 0.5 (half the experts exclusive) unless --alpha says otherwise.

Median wall time per step for K tasks, d features, batch B and E experts of
one and of two hidden layers, with the ratios the targets are stated in
(fast >= 30x faster than the reference loop; fast <= 3x the plain step with
one-hidden-layer experts, <= 8x with two) and the peak memory of each step
(torch.cuda.max_memory_allocated on CUDA; on CPU the peak growth of the
resident set, sampled every 2 ms after glibc's malloc_trim). The reference
loop is slow: it is timed over --reference-reps runs.

Each MAML-MTL variant (models.maml.MAML_VARIANTS) gets its own row, with
the matrix-product work of its Gram corrections, K E |I| |O| h multiply-adds
per expert layer of width h summed over its evaluations (|I| |O| is 0.16 B^2
for split at p = 0.8, B^2 for full, B^2 / 2 for swap), and that work per
second of the fast step. It counts every expert for every task, as the
formula does; the fast path skips the tasks an expert is closed to, so with
exclusive experts it executes less than this.
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import statistics
import sys
import threading
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Self

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from models.config import ModelConfig
from models.factory import build_model
from models.maml import MAML_VARIANTS
from models.steps import StepConfig, build_step
from pipelines.platform.torch_setup import use_huge_pages
from pipelines.text_tables import format_table
from tests.maml_reference import reference_maml_step

log = logging.getLogger("maml_step")


class PeakMemory:
    """Peak memory above the level at entry, in MiB, for CPU or CUDA."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.peak_mib = 0.0
        self._stop = threading.Event()

    def __enter__(self) -> Self:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self._base = torch.cuda.memory_allocated(self.device)
        else:
            # Hand memory freed by earlier runs back to the OS first, or the
            # allocator reuses it and the resident set does not grow.
            ctypes.CDLL("libc.so.6").malloc_trim(0)
            self._base = _rss_bytes()
            self._peak = self._base
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.002):
            self._peak = max(self._peak, _rss_bytes())

    def __exit__(self, *exc: object) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        else:
            self._stop.set()
            self._thread.join()
            peak = max(self._peak, _rss_bytes())
        self.peak_mib = (peak - self._base) / 2**20


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * 4096


def time_step(run: Callable[[], object], device: torch.device, reps: int,
              warmup: bool = True) -> tuple[float, float]:
    """Median seconds over `reps` runs, and peak MiB of one run (which, without
    `warmup`, is also the warm-up: used for the slow reference loop)."""
    if warmup:
        run()
    with PeakMemory(device) as memory:
        run()
    times = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        run()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times), memory.peak_mib


def inner_outer_pairs(variant: str, batch_size: int) -> int:
    """Sum of |I| |O| over the evaluations of one step of the variant
    (at the default inner_fraction)."""
    rows = range(batch_size)
    return sum(len(rows[inner]) * len(rows[outer])
               for inner, outer in MAML_VARIANTS[variant](batch_size, StepConfig.inner_fraction))


def bench_case(args: argparse.Namespace, n_experts: int, hidden: tuple[int, ...]) -> list[dict[str, object]]:
    """One row per MAML-MTL variant for E experts of widths `hidden`, all
    against the same plain step."""
    device = torch.device(args.device)
    config = ModelConfig(architecture="mmoeex", n_features=args.features, n_tasks=args.tasks, n_experts=n_experts,
                         expert_hidden=hidden, tower_hidden=args.tower_hidden, alpha=args.alpha, seed=0)
    model = build_model(config).to(device).train()
    generator = torch.Generator().manual_seed(0)
    x = (torch.rand(args.batch, args.features, generator=generator) < 0.03).float().to(device)
    labels = (torch.rand(args.batch, args.tasks, generator=generator) < 0.02).float().to(device)
    mask = (torch.rand(args.batch, args.tasks, generator=generator) < 0.5).to(device)
    autocast = "bfloat16" if args.bf16 else None
    plain = build_step(StepConfig(optimizer="plain", pos_weight=None, autocast=autocast))
    log.info("E=%d hidden=%s: plain step", n_experts, hidden)
    plain_s, plain_mib = time_step(lambda: plain(model, x, labels, mask), device, args.reps)
    rows = []
    for variant in args.variants:
        fast = build_step(StepConfig(optimizer="maml-mtl", inner_lr=0.05, pos_weight=None, maml_variant=variant,
                                     autocast=autocast))
        log.info("E=%d hidden=%s: fast MAML-MTL, %s", n_experts, hidden, variant)
        fast_s, fast_mib = time_step(partial(fast, model, x, labels, mask), device, args.reps)
        pairs = inner_outer_pairs(variant, args.batch)
        correction_gmac = args.tasks * n_experts * pairs * sum(hidden) / 1e9
        row: dict[str, object] = {
            "E": n_experts, "expert layers": "x".join(map(str, hidden)), "variant": variant,
            "plain s": plain_s, "fast s": fast_s, "fast/plain": fast_s / plain_s,
            "|I||O|/B^2": pairs / args.batch**2, "correction GMAC": correction_gmac,
            "correction GFLOP/s": 2 * correction_gmac / fast_s,
        }
        if args.reference_reps > 0:
            log.info("E=%d hidden=%s: reference loop, %s (%d tasks)", n_experts, hidden, variant, args.tasks)
            ref_s, ref_mib = time_step(
                partial(reference_maml_step, model, x, labels, mask, inner_lr=0.05, variant=variant),
                device, args.reference_reps, warmup=False)
            row |= {"reference s": ref_s, "ref/fast": ref_s / fast_s}
        row |= {"plain MiB": plain_mib, "fast MiB": fast_mib}
        if args.reference_reps > 0:
            row["reference MiB"] = ref_mib
        rows.append(row)
    return rows


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default: cpu)")
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--features", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--experts", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--hidden", nargs="+", default=["256", "256,256"],
                        help="expert layer widths, one comma-separated list per case")
    parser.add_argument("--tower-hidden", type=int, default=ModelConfig.tower_hidden,
                        help="width of each task tower's hidden layer; 0 = linear towers "
                             f"(default: {ModelConfig.tower_hidden})")
    parser.add_argument("--variants", nargs="+", choices=tuple(MAML_VARIANTS), default=["split"],
                        help="MAML-MTL variants, one row each (default: split)")
    parser.add_argument("--alpha", type=float, default=0.5,
                        help="share of exclusive experts (0 = MMoE, whose experts all serve every task)")
    parser.add_argument("--reps", type=int, default=5, help="timed runs of plain and fast steps")
    parser.add_argument("--reference-reps", type=int, default=1,
                        help="timed runs of the reference loop (0 skips it)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast for plain and fast steps")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    return parser.parse_args()


def main() -> int:
    use_huge_pages()  # as the jobs run; THP_MEM_ALLOC_ENABLE=0 to compare
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = [row for hidden in args.hidden for n_experts in args.experts
            for row in bench_case(args, n_experts, tuple(int(w) for w in hidden.split(",")))]
    device_name = torch.cuda.get_device_name(args.device) if args.device.startswith("cuda") else (
        f"CPU, {torch.get_num_threads()} threads")
    print(format_table(rows, title=(
        f"One training step, K={args.tasks}, d={args.features}, batch {args.batch}, alpha {args.alpha}, "
        f"tower hidden {args.tower_hidden}, "
        f"{device_name}, torch {torch.__version__}{', bf16 autocast' if args.bf16 else ''} "
        f"(median of {args.reps}; reference: median of {args.reference_reps})")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
