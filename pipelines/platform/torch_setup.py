"""Process-wide PyTorch settings the jobs run with.

Transparent huge pages for large CPU tensors. A MAML-MTL step allocates
tensors of 50-400 MB afresh every step (per-task expert deltas and outer
activations, `[E, K, B, h]`); with 4 KiB pages each costs one page fault per
page, a large share of the step on a small machine. PyTorch's allocator
asks the kernel for 2 MiB pages when THP_MEM_ALLOC_ENABLE=1, which shortens
the MAML-MTL step and does not slow scoring (`benchmarks/maml_step.py
--threads 2`, `benchmarks/scoring.py`; docs/benchmarks.md, "The MAML-MTL step").
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
