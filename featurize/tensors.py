"""Packed fingerprints and int8 labels -> torch tensors, on the training device.

The only torch code in featurize/: the reader hands out packed uint8 rows
(256 bytes for 2048 bits), the training loop moves them to its device and
unpacks there, so the host-to-device copy is 32x smaller than float32 bits.
"""
from __future__ import annotations

import numpy as np
import torch

from featurize.spec import FingerprintSpec

# Bit i of the fingerprint is bit (i % 8) of byte i // 8 (little bit order,
# as featurize.fingerprints packs them).
_SHIFTS = torch.arange(8, dtype=torch.uint8)


def unpack_fingerprints(fp: torch.Tensor, spec: FingerprintSpec | int, *,
                        counts: bool | None = None) -> torch.Tensor:
    """uint8 ``[B, n_bytes]`` -> float32 ``[B, n_bits]`` on ``fp``'s device.

    ``spec`` is the dataset's :class:`FingerprintSpec` or a bit count; with a
    bit count, ``counts=True`` says each byte is already a count.
    """
    if isinstance(spec, FingerprintSpec):
        n_bits, counts = spec.n_bits, spec.counts if counts is None else counts
    else:
        n_bits, counts = int(spec), bool(counts)
    if fp.dtype != torch.uint8 or fp.dim() != 2:
        raise ValueError(f"fingerprints must be a uint8 [B, n_bytes] tensor, "
                         f"got {fp.dtype} {tuple(fp.shape)}")
    expected_bytes = n_bits if counts else (n_bits + 7) // 8
    if fp.shape[1] != expected_bytes:
        raise ValueError(f"fingerprints have {fp.shape[1]} bytes per row, the spec "
                         f"({n_bits} {'counts' if counts else 'bits'}) needs {expected_bytes}")
    if counts:
        return fp.to(torch.float32)
    bits = (fp.unsqueeze(-1) >> _SHIFTS.to(fp.device)) & 1
    return bits.reshape(fp.shape[0], -1)[:, :n_bits].to(torch.float32)


def labels_to_tensors(labels: np.ndarray | torch.Tensor,
                      device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 labels (1, 0, -1 missing) -> (float32 labels with missing as 0,
    bool mask of present labels), on ``device``. Masked losses must use the
    mask: the 0 written at missing entries is not an inactive."""
    labels = torch.as_tensor(labels).to(device)
    mask = labels >= 0
    return torch.where(mask, labels, torch.zeros_like(labels)).to(torch.float32), mask
