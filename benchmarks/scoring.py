"""Model scoring speed on a CPU: dense bits vs bags of on-bits, by chunk size.

    python benchmarks/scoring.py                 # docs/benchmarks.md (one thread)
    python benchmarks/scoring.py --threads 2 --experts 8 --hidden 256
    python benchmarks/scoring.py --hidden 1500 --chunks 256 --members 5   # a deep ensemble of 5

What a screening actor does per molecule once featurization is done: packed
fingerprints -> model input -> probabilities. Rows are random fingerprints
with the on-bit density of drug-like Morgan fingerprints (2 %, ~40 of 2048
bits); speed does not depend on which bits are on. "dense" unpacks to float
bits and runs the first layers as matrix products (the path before
models.networks.sparse_input); "sparse" is what pipelines.serving.scorer.Scorer runs
on a CPU. With ``--members N`` the rows are repeated for a deep ensemble of
N such networks (models/ensemble.py): on dense input all members run as one
stacked forward, on sparse rows member by member over the same batch (what
the Scorer runs on a CPU). Times are medians of --repeats runs, in
microseconds per molecule.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from featurize.spec import FingerprintSpec  # noqa: E402
from featurize.tensors import unpack_fingerprints  # noqa: E402
from models.config import ModelConfig  # noqa: E402
from models.ensemble import Ensemble, member_probabilities  # noqa: E402
from models.factory import build_model  # noqa: E402
from models.networks.sparse_input import SparseRows  # noqa: E402
from pipelines.platform.torch_setup import use_huge_pages  # noqa: E402
from pipelines.text_tables import format_table  # noqa: E402


def main() -> None:
    use_huge_pages()  # as the jobs run; THP_MEM_ALLOC_ENABLE=0 to compare
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--molecules", type=int, default=8192)
    parser.add_argument("--chunks", type=int, nargs="+", default=[8192, 1024, 256])
    parser.add_argument("--experts", type=int, default=4)
    parser.add_argument("--hidden", type=int, default=128)
    parser.add_argument("--tasks", type=int, default=128)
    parser.add_argument("--bits", type=int, default=2048)
    parser.add_argument("--density", type=float, default=0.02)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--members", type=int, default=1, help="also time a deep ensemble of N networks")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    spec = FingerprintSpec(n_bits=args.bits)
    config = ModelConfig(architecture="mmoeex", n_features=args.bits, n_tasks=args.tasks,
                         n_experts=args.experts, expert_hidden=(args.hidden,))
    models = {1: build_model(config).eval()}
    if args.members > 1:
        models[args.members] = Ensemble.initialised(config, args.members)
    bits = np.random.default_rng(0).random((args.molecules, args.bits)) < args.density
    packed = torch.from_numpy(np.packbits(bits, axis=1, bitorder="little"))
    inputs = {
        "dense": lambda chunk: unpack_fingerprints(chunk, spec),
        "sparse": lambda chunk: SparseRows.from_dense(unpack_fingerprints(chunk, spec)),
    }

    rows, baseline = [], None
    for (networks, model), chunk_rows in ((item, chunk) for item in models.items() for chunk in args.chunks):
        for name, to_input in inputs.items():
            per_molecule = median_us_per_molecule(model, packed, to_input, chunk_rows, args.repeats)
            baseline = baseline or per_molecule
            rows.append({"networks": networks, "input": name, "rows per forward": f"{chunk_rows:,}",
                         "us / molecule": f"{per_molecule:.1f}",
                         "molecules/s": f"{1e6 / per_molecule:,.0f}",
                         "speed-up": f"{baseline / per_molecule:.2f}x"})
    print(f"scoring on CPU, {args.threads} thread(s): {args.experts}x{args.hidden} experts, "
          f"{args.tasks} tasks, {args.bits} bits at {args.density:.0%} density, "
          f"{args.molecules:,} molecules; speed-up vs the first row")
    print(format_table(rows))


@torch.inference_mode()
def median_us_per_molecule(model: torch.nn.Module, packed: torch.Tensor, to_input,
                           chunk_rows: int, repeats: int) -> float:
    """Median over ``repeats`` of the time to score every row, chunk by chunk."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        for start in range(0, len(packed), chunk_rows):
            member_probabilities(model, to_input(packed[start:start + chunk_rows])).mean(dim=0)
        times.append(time.perf_counter() - started)
    return float(np.median(times)) / len(packed) * 1e6


if __name__ == "__main__":
    main()
