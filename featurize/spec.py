"""The fingerprint spec: what the bytes in a dataset's `fp` column mean.

A spec travels with every dataset (Parquet schema metadata) and with every
trained model, so screening can refuse a library whose fingerprints were made
another way: a model trained on radius-2 / 2048-bit Morgan bits scores garbage
on 1024-bit or count fingerprints without any error otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import rdkit

from featurize.errors import InputDataError, SpecMismatchError

logger = logging.getLogger(__name__)

#: Parquet schema metadata keys (bytes, as pyarrow stores them).
SPEC_METADATA_KEY = b"pcba.fingerprint_spec"
TASKS_METADATA_KEY = b"pcba.tasks"

#: Bits are packed 8 to a byte, bit i of the fingerprint at bit (i % 8) of
#: byte i // 8: ``np.packbits(bits, bitorder="little")``.
BIT_ORDER = "little"

KINDS = ("morgan", "imported")
# Fields that change the meaning of the bytes; rdkit_version only warns.
_MEANING_FIELDS = ("kind", "radius", "n_bits", "counts", "source")


@dataclass(frozen=True)
class FingerprintSpec:
    """How a fingerprint was made.

    ``kind="morgan"``: RDKit Morgan (ECFP-like) fingerprint of ``radius`` folded
    to ``n_bits``, made by ``rdFingerprintGenerator`` with default atom
    invariants. ``counts=False`` stores presence bits packed 8 per byte;
    ``counts=True`` stores one byte per position (count clipped at 255).
    ``kind="imported"``: fingerprints made elsewhere; ``source`` describes how
    (for example "deepchem CircularFingerprint(size=1024) radius 2").
    """

    kind: str = "morgan"
    radius: int = 2
    n_bits: int = 2048
    counts: bool = False
    rdkit_version: str = field(default_factory=lambda: rdkit.__version__)
    source: str = "rdkit rdFingerprintGenerator.GetMorganGenerator"

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"fingerprint kind must be one of {KINDS}, got {self.kind!r}")
        if self.n_bits <= 0:
            raise ValueError(f"fingerprint n_bits must be positive, got {self.n_bits}")
        if self.radius < 0:
            raise ValueError(f"fingerprint radius must be >= 0, got {self.radius}")

    @property
    def n_bytes(self) -> int:
        """Width of the fixed-size binary `fp` column."""
        return self.n_bits if self.counts else (self.n_bits + 7) // 8

    def describe(self) -> str:
        """One line for error messages and summaries."""
        mode = "counts" if self.counts else "bits"
        return (f"{self.kind} radius {self.radius}, {self.n_bits} {mode} "
                f"({self.source}, rdkit {self.rdkit_version})")

    def to_json(self) -> str:
        payload = dataclasses.asdict(self)
        payload["bit_order"] = BIT_ORDER  # for readers without this code
        return json.dumps(payload, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes) -> FingerprintSpec:
        payload = json.loads(text)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in payload.items() if key in names})

    def check_compatible(self, other: FingerprintSpec, *, what: str = "data",
                         expected: str = "model") -> None:
        """Raise :class:`SpecMismatchError` naming both specs unless ``other``
        produces the same bytes as ``self``; a different RDKit version only
        warns (Morgan fingerprints have been stable across releases)."""
        differing = [name for name in _MEANING_FIELDS
                     if getattr(self, name) != getattr(other, name)]
        if differing:
            raise SpecMismatchError(
                f"fingerprint spec mismatch ({', '.join(differing)} differ): "
                f"{expected} uses [{self.describe()}] but {what} uses [{other.describe()}]; "
                f"re-featurize the {what} with the {expected}'s spec")
        if self.rdkit_version != other.rdkit_version:
            logger.warning("%s fingerprints made with RDKit %s, %s with RDKit %s",
                           what, other.rdkit_version, expected, self.rdkit_version)


def schema_metadata(spec: FingerprintSpec, tasks: Sequence[str]) -> dict[bytes, bytes]:
    """The schema metadata every fingerprint Parquet file carries."""
    return {SPEC_METADATA_KEY: spec.to_json().encode(),
            TASKS_METADATA_KEY: json.dumps(list(tasks)).encode()}


def read_schema_metadata(metadata: Mapping[bytes, bytes] | None,
                         *, source: str) -> tuple[FingerprintSpec, list[str]]:
    """Spec and task names from a Parquet schema's metadata (``source`` names
    the file in the error when they are missing)."""
    metadata = metadata or {}
    if SPEC_METADATA_KEY not in metadata or TASKS_METADATA_KEY not in metadata:
        raise InputDataError(
            f"{source}: not a fingerprint Parquet (schema metadata lacks "
            f"{SPEC_METADATA_KEY.decode()!r} / {TASKS_METADATA_KEY.decode()!r}); "
            "make it with `python -m pipelines featurize`")
    return (FingerprintSpec.from_json(metadata[SPEC_METADATA_KEY]),
            list(json.loads(metadata[TASKS_METADATA_KEY])))
