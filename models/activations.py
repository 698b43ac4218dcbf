"""Elementwise activations with their derivatives written out.

The fast MAML-MTL path (models/maml.py) back-propagates per-task output
gradients through the experts by hand, batched over all tasks at once, so it
needs sigma'(z) as a tensor. Writing the derivative in closed form (rather
than asking autograd for it) keeps it cheap and keeps it differentiable, which
the second-order path relies on.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class Activation:
    """An elementwise function and its derivative, both on tensors.

    scaled: optional fused fn(z) * scale for a non-negative scale (dropout
    multipliers), where the function allows one cheaper than the two ops.
    """

    name: str
    fn: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    scaled: Callable[[Tensor, Tensor], Tensor] | None = None


def _relu_derivative(z: Tensor) -> Tensor:
    return (z > 0).to(z.dtype)


def _relu_scaled(z: Tensor, scale: Tensor) -> Tensor:
    # relu(z) * c == relu(z * c) for c >= 0, and the ReLU can then run in
    # place on the fresh product: one large allocation instead of two.
    return (z * scale).relu_()


def _tanh_derivative(z: Tensor) -> Tensor:
    return 1.0 - torch.tanh(z).square()


def _gelu_derivative(z: Tensor) -> Tensor:
    # d/dz [z * Phi(z)] = Phi(z) + z * phi(z)  (exact, erf-based GELU)
    cdf = 0.5 * (1.0 + torch.erf(z / math.sqrt(2.0)))
    pdf = torch.exp(-0.5 * z.square()) / math.sqrt(2.0 * math.pi)
    return cdf + z * pdf


def _silu_derivative(z: Tensor) -> Tensor:
    s = torch.sigmoid(z)
    return s * (1.0 + z * (1.0 - s))


ACTIVATIONS: dict[str, Activation] = {
    "relu": Activation("relu", torch.relu, _relu_derivative, scaled=_relu_scaled),
    "tanh": Activation("tanh", torch.tanh, _tanh_derivative),
    "gelu": Activation("gelu", torch.nn.functional.gelu, _gelu_derivative),
    "silu": Activation("silu", torch.nn.functional.silu, _silu_derivative),
}


def get_activation(name: str) -> Activation:
    """The activation called `name`; a clear error lists the known ones."""
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None
