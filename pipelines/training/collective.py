"""How the training loop talks to the other data-parallel workers.

Why not ``DistributedDataParallel``: DDP averages gradients from autograd
hooks that fire during the ``backward()`` of a forward pass through the
wrapped module, once per parameter per iteration. A MAML-MTL step takes
per-task inner gradients, evaluates temporary weights and runs its outer
backward outside that pattern (models/maml.py), and the step leaves the
finished outer gradient in ``.grad`` (models/steps.py). So the gradients are
averaged here, by hand, after the step and before ``optimizer.step()``: one
flat buffer, one ``all_reduce`` per step (what DDP's bucketing achieves, in
a single bucket), the same for the plain step. Every worker starts from rank
0's weights and applies the same averaged gradient, so weights stay
bit-identical across workers; :meth:`Collective.weight_spread` checks it.
"""
from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn


class Collective:
    """The single-process no-op; subclasses talk to other workers."""

    rank: int = 0
    world_size: int = 1

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        """Replace each ``.grad`` by its mean over workers."""

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Elementwise sum over workers (a new tensor)."""
        return values.clone()

    def broadcast_parameters(self, module: nn.Module) -> None:
        """Make every worker's weights and buffers rank 0's."""

    def weight_spread(self, module: nn.Module) -> float:
        """Max minus min over workers of a checksum of the weights: 0 when
        all workers hold the same weights."""
        return 0.0


class LocalCollective(Collective):
    """One process: nothing to exchange."""


class TorchDistributedCollective(Collective):
    """Over the default ``torch.distributed`` process group (gloo on CPU,
    NCCL on GPU), as set up by Ray Train's TorchTrainer."""

    def __init__(self) -> None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized; run inside a TorchTrainer "
                               "worker or call init_process_group first")
        self._dist = dist
        self.rank = dist.get_rank()
        self.world_size = dist.get_world_size()

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        params = [param for param in parameters if param.requires_grad]
        missing = [index for index, param in enumerate(params) if param.grad is None]
        if missing:
            raise RuntimeError(f"{len(missing)} parameters have no .grad after the step; every "
                               "worker must hand over the same gradient tensors")
        flat = torch.cat([param.grad.reshape(-1) for param in params])
        self._dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for param in params:
            count = param.grad.numel()
            param.grad.copy_(flat[offset:offset + count].view_as(param.grad))
            offset += count

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        total = values.clone()
        self._dist.all_reduce(total)
        return total

    def broadcast_parameters(self, module: nn.Module) -> None:
        for tensor in [*module.parameters(), *module.buffers()]:
            self._dist.broadcast(tensor.data, src=0)

    def weight_spread(self, module: nn.Module) -> float:
        checksum = weights_checksum(module).reshape(1)
        high, low = checksum.clone(), -checksum
        self._dist.all_reduce(high, op=self._dist.ReduceOp.MAX)
        self._dist.all_reduce(low, op=self._dist.ReduceOp.MAX)
        return float(high + low)


@torch.no_grad()
def weights_checksum(module: nn.Module) -> torch.Tensor:
    """A float64 checksum of all parameters (position-weighted, so swapped
    values change it too)."""
    total = torch.zeros((), dtype=torch.float64, device=next(module.parameters()).device)
    for index, param in enumerate(module.parameters(), start=1):
        flat = param.detach().reshape(-1).double()
        weights = torch.arange(1, flat.numel() + 1, dtype=torch.float64, device=flat.device)
        total += index * (flat * weights).sum() / flat.numel()
    return total
