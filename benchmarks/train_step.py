"""Time one training step of each architecture against a plain nn.Sequential.

    python benchmarks/train_step.py                 # 2 CPU threads, the table below
    python benchmarks/train_step.py --threads 16 --reps 20
    python benchmarks/train_step.py --exclusivity exclusive   # the rows before exclusion became the default
    python benchmarks/train_step.py --bf16          # and a swap row under bfloat16 autocast

A step is what the training loop does per batch: forward, masked BCE
(models.losses), backward and an Adam update. Rows: a plain PyTorch MLP
(Linear d -> h, ReLU, Dropout 0.25, Linear h -> K), our shared bottom of the
same shape with linear towers and the plain step, MMoEEx (E experts of h,
alpha 0.5, the product's exclusion unless --exclusivity says otherwise,
linear towers) with the plain step and with each MAML-MTL
variant (first order; models/maml.py), and with --bf16 swap once more under
bfloat16 autocast, where the fused outer pass lowers its correction products
(opt-in: a CPU without bfloat16 matrix instructions, such as the AVX2-only
development machine, emulates them, about 45 s a step there). Rows marked
"sparse" feed SparseRows built from the dense batch inside the timed step
(the conversion the training loop would do), so they pay for it. The rows
take turns within each repetition; the table gives medians.

GFLOP is the matrix-product work counted analytically, 2 x the multiply-adds
of forward and backward (no input gradient for the first layer):

* dense layer d -> n on B rows: 2 B d n (forward, weight gradient), a later
  layer 3 B d n (plus the input gradient); sparse input: 2 nnz n, nnz the
  on-bits of the batch;
* MMoEEx: experts B d E h, gates B d K E, linear towers on the expert
  outputs E B h K (Towers.mixture_logits);
* MAML-MTL (first order): the plain count (first layers on the on-bits,
  as its fused path reads them), plus, for each evaluation of
  the variant (inner rows I, outer rows O: one for split and full, two for
  swap), the per-task inner corrections of the expert layer on the outer
  rows, (x_O x_I^T) Delta_k: |O| |I| d for the Gram and |O_k| |I| h for
  each task k and expert open to it (the model's open mask: with
  exclusion every expert serves K - 1 or K tasks, an exclusive one its
  own task only), O_k the outer rows where task k is labelled: the
  fused path (models/outer_expert_scores.py) computes only those, as
  nothing else reaches the loss; docs/method.md.
"""
from __future__ import annotations

import argparse
import logging
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.maml_step import PeakMemory
from models.config import EXCLUSIVITY_KINDS, ModelConfig
from models.factory import build_model
from models.losses import masked_bce_per_task
from models.maml import MAML_VARIANTS
from models.networks.sparse_input import SparseRows
from models.steps import StepConfig, build_step
from pipelines.platform.torch_setup import use_huge_pages
from pipelines.text_tables import format_table

log = logging.getLogger("train_step")


@dataclass(frozen=True)
class Batch:
    """One synthetic PCBA-like batch: 0/1 bits, ~2 % actives, 60 % of the
    labels present (the real PCBA subset has 60.5 %)."""

    x: Tensor
    labels: Tensor
    mask: Tensor

    @classmethod
    def draw(cls, rows: int, bits: int, tasks: int, density: float) -> Batch:
        generator = torch.Generator().manual_seed(0)
        return cls((torch.rand(rows, bits, generator=generator) < density).float(),
                   (torch.rand(rows, tasks, generator=generator) < 0.02).float(),
                   torch.rand(rows, tasks, generator=generator) < 0.6)

    @property
    def on_bits(self) -> int:
        return int(self.x.count_nonzero())


def sequential_step(args: argparse.Namespace, batch: Batch) -> Callable[[], object]:
    """The straightforward PyTorch MLP and its training step."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(args.bits, args.hidden), nn.ReLU(), nn.Dropout(args.dropout),
                          nn.Linear(args.hidden, args.tasks)).train()
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        masked_bce_per_task(model(batch.x), batch.labels, batch.mask).mean().backward()
        optimizer.step()
    return step


def project_config(args: argparse.Namespace, architecture: str) -> ModelConfig:
    """The network a project row trains (E experts of h, alpha 0.5, linear towers)."""
    return ModelConfig(architecture=architecture, n_features=args.bits, n_tasks=args.tasks,
                       n_experts=args.experts, expert_hidden=(args.hidden,), tower_hidden=0,
                       alpha=0.5, exclusivity=args.exclusivity, dropout=args.dropout, seed=0)


def project_step(args: argparse.Namespace, batch: Batch, architecture: str, optimizer: str,
                 variant: str | None, sparse: bool, autocast: str | None) -> Callable[[], object]:
    """A network from models.factory and a step from models.steps, then Adam."""
    model = build_model(project_config(args, architecture)).train()
    variant_field = {} if variant is None else {"maml_variant": variant}
    train_step = build_step(StepConfig(optimizer=optimizer, inner_lr=0.05, pos_weight=None, autocast=autocast,
                                       **variant_field))
    adam = torch.optim.Adam(model.parameters(), 1e-3)

    def step() -> None:
        x = SparseRows.from_dense(batch.x) if sparse else batch.x
        train_step(model, x, batch.labels, batch.mask)
        adam.step()
    return step


def gflop(args: argparse.Namespace, batch: Batch, architecture: str, optimizer: str, variant: str | None,
          sparse: bool) -> float:
    """Matrix-product work of one step (module docstring), in GFLOP."""
    rows, bits, hidden, tasks, experts = args.batch, args.bits, args.hidden, args.tasks, args.experts
    # B d, or nnz: MAML-MTL's fused path (one expert layer, linear heads, CPU)
    # reads the on-bits in its first layers whatever the batch's form
    first_layer_rows = batch.on_bits if sparse or optimizer == "maml-mtl" else rows * bits
    if architecture in ("sequential", "shared-bottom"):
        multiply_adds = 2 * first_layer_rows * hidden + 3 * rows * hidden * tasks
    else:
        multiply_adds = (2 * first_layer_rows * experts * (hidden + tasks)
                         + 3 * experts * rows * hidden * tasks)
    if optimizer == "maml-mtl":
        open_to = build_model(project_config(args, architecture)).gates.open_mask().float()  # [K, E]
        for inner, outer in MAML_VARIANTS[variant](rows, StepConfig().inner_fraction):
            n_inner, n_outer = inner.stop - inner.start, outer.stop - outer.start
            labelled = batch.mask[outer].sum(0).float()  # |O_k|
            pairs = float(labelled @ open_to.sum(1))  # (task, labelled outer row) pairs, over the experts
            multiply_adds += n_outer * n_inner * bits + pairs * n_inner * hidden
    return 2 * multiply_adds / 1e9


CASES = [  # (label, architecture, optimizer, MAML-MTL variant, sparse input, autocast)
    ("nn.Sequential", "sequential", "plain", None, False, None),
    ("shared bottom, plain", "shared-bottom", "plain", None, False, None),
    ("shared bottom, plain, sparse", "shared-bottom", "plain", None, True, None),
    ("MMoEEx, plain", "mmoeex", "plain", None, False, None),
    ("MMoEEx, plain, sparse", "mmoeex", "plain", None, True, None),
    *((f"MMoEEx, MAML-MTL {variant}", "mmoeex", "maml-mtl", variant, False, None) for variant in MAML_VARIANTS),
]
BF16_CASE = ("MMoEEx, MAML-MTL swap, bf16", "mmoeex", "maml-mtl", "swap", False, "bfloat16")


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch", type=int, default=512)
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--bits", type=int, default=1024)
    parser.add_argument("--density", type=float, default=0.03, help="share of bits on")
    parser.add_argument("--hidden", type=int, default=1500, help="trunk / expert width")
    parser.add_argument("--experts", type=int, default=4, help="MMoEEx experts")
    parser.add_argument("--dropout", type=float, default=0.25)
    parser.add_argument("--exclusivity", choices=EXCLUSIVITY_KINDS, default=ModelConfig.exclusivity,
                        help="MMoEEx's assigned experts: open to their task only (exclusive) or "
                             "closed to it (exclusion)")
    parser.add_argument("--bf16", action="store_true",
                        help="add a MAML-MTL swap row under bfloat16 autocast (slow on CPUs "
                             "without bfloat16 matrix instructions)")
    parser.add_argument("--reps", type=int, default=10, help="timed steps per row (median)")
    return parser.parse_args()


def main() -> int:
    use_huge_pages()  # as the jobs run; THP_MEM_ALLOC_ENABLE=0 to compare
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    args = parse_args()
    torch.set_num_threads(args.threads)
    batch = Batch.draw(args.batch, args.bits, args.tasks, args.density)
    cases = [*CASES, BF16_CASE] if args.bf16 else CASES
    steps, peaks = [], []
    for label, architecture, optimizer, variant, sparse, autocast in cases:
        log.info("%s: warm-up and peak memory", label)
        step = (sequential_step(args, batch) if architecture == "sequential"
                else project_step(args, batch, architecture, optimizer, variant, sparse, autocast))
        step()
        with PeakMemory(torch.device("cpu")) as memory:
            step()
        steps.append(step)
        peaks.append(memory.peak_mib)
    # Rows take turns within each repetition, so load from other jobs on a
    # shared machine lands on every row alike, and the medians stay comparable.
    seconds: list[list[float]] = [[] for _ in cases]
    for rep in range(args.reps):
        log.info("repetition %d of %d", rep + 1, args.reps)
        for step, times in zip(steps, seconds):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
    medians = [statistics.median(times) for times in seconds]
    rows = []
    for (label, architecture, optimizer, variant, sparse, _), median, peak_mib in zip(cases, medians, peaks):
        work = gflop(args, batch, architecture, optimizer, variant, sparse)
        rows.append({"step": label, "ms/step": 1e3 * median, "x nn.Sequential": median / medians[0],
                     "GFLOP": work, "GFLOP/s": work / median, "peak MiB": peak_mib})
    print(format_table(rows, title=(
        f"One training step (forward, masked BCE, backward, Adam): batch {args.batch}, "
        f"K={args.tasks}, d={args.bits} at {args.density:.0%} bits on, h={args.hidden}, "
        f"E={args.experts}, dropout {args.dropout}, CPU {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, median of {args.reps}")))
    by_label = {row["step"]: row for row in rows}
    plain_rate = by_label["MMoEEx, plain"]["GFLOP/s"]
    sparse_rate = by_label["MMoEEx, plain, sparse"]["GFLOP/s"]
    for label in (row["step"] for row in rows if "MAML-MTL" in row["step"]):
        maml_rate = by_label[label]["GFLOP/s"]
        print(f"{label.removeprefix('MMoEEx, ')} runs at {maml_rate / plain_rate:.2f}x the GFLOP/s of the "
              f"dense plain step ({'below' if maml_rate < plain_rate / 2 else 'not below'} half), "
              f"{maml_rate / sparse_rate:.2f}x the sparse one's")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
