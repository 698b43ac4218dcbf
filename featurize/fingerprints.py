"""Morgan fingerprints with RDKit's generator API, packed for storage.

Bits are stored 8 to a byte (``np.packbits(..., bitorder="little")``: bit i
at bit i % 8 of byte i // 8) so a 2048-bit fingerprint is 256 bytes on disk
and on the wire to the training device, where :mod:`featurize.tensors`
unpacks it. Count fingerprints keep one byte per position, clipped at 255.
"""
from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np
from rdkit import Chem
from rdkit.Chem import rdFingerprintGenerator

from featurize.spec import BIT_ORDER, FingerprintSpec


@lru_cache(maxsize=8)
def morgan_generator(radius: int, n_bits: int) -> rdFingerprintGenerator.FingerprintGenerator64:
    """One generator per (radius, n_bits) and process: building one costs
    more than fingerprinting a molecule, and generators do not pickle, so
    each Ray worker builds its own on first use."""
    return rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)


def fingerprint_matrix(mols: Sequence[Chem.Mol], spec: FingerprintSpec) -> np.ndarray:
    """Fingerprints of ``mols`` as stored: ``uint8[len(mols), spec.n_bytes]``."""
    if spec.kind != "morgan":
        raise ValueError(f"cannot compute fingerprints of kind {spec.kind!r} with RDKit")
    generator = morgan_generator(spec.radius, spec.n_bits)
    dense = np.zeros((len(mols), spec.n_bits), dtype=np.uint8)
    if spec.counts:
        for index, mol in enumerate(mols):
            np.minimum(generator.GetCountFingerprintAsNumPy(mol), 255, out=dense[index],
                       casting="unsafe")
        return dense
    for index, mol in enumerate(mols):
        dense[index] = generator.GetFingerprintAsNumPy(mol)
    return pack_bits(dense)


def pack_bits(bits: np.ndarray) -> np.ndarray:
    """0/1 ``[n, n_bits]`` -> packed ``uint8[n, ceil(n_bits / 8)]``."""
    return np.packbits(np.asarray(bits, dtype=np.uint8), axis=-1, bitorder=BIT_ORDER)


def unpack_bits(packed: np.ndarray, n_bits: int) -> np.ndarray:
    """Packed ``uint8[n, n_bytes]`` -> 0/1 ``uint8[n, n_bits]`` (numpy twin of
    :func:`featurize.tensors.unpack_fingerprints`)."""
    return np.unpackbits(packed, axis=-1, count=n_bits, bitorder=BIT_ORDER)
