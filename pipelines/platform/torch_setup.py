"""Process-wide PyTorch settings the jobs run with.

Transparent huge pages for large CPU tensors. A MAML-MTL step allocates
tensors of 50-400 MB afresh every step (per-task expert deltas and outer
activations, `[E, K, B, h]`); with 4 KiB pages each costs one page fault per
page, which on a 2-core machine was 16-45 % of the step.
PyTorch's allocator asks the kernel for 2 MiB pages when
THP_MEM_ALLOC_ENABLE=1. Measured on the 2-core development machine
(`benchmarks/maml_step.py --threads 2`, one run): fast step 0.677 ->
0.37-0.38 s (E = 8, one layer), 3.45 -> 2.50-2.89 s (E = 16, two layers).
Scoring gained 120 -> 109 us/molecule (`benchmarks/scoring.py --chunks
256`) before the gates' softmax change; after it, two alternating runs
showed no difference beyond noise (57.6 / 64.6 us without, 60.3 / 60.5 with).
"""
from __future__ import annotations

import os

THP_VARIABLE = "THP_MEM_ALLOC_ENABLE"


def use_huge_pages() -> None:
    """Turn huge pages on unless the user set the variable either way.

    PyTorch reads it once, at the process's first large CPU allocation, so
    call this before any heavy tensor work (it is inherited by child
    processes, such as the workers of a local Ray started afterwards).
    """
    os.environ.setdefault(THP_VARIABLE, "1")
