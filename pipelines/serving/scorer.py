"""A trained model ready to score, without MLflow: packed fingerprints or
SMILES in, one probability per assay out (calibrated where the bundle has a
calibration, see pipelines/serving/calibration.py; raw on request).

:class:`Scorer` is the one scoring code path. The MLflow pyfunc
(:mod:`pipelines.serving.pyfunc_model`) wraps it; screening actors build it straight
from a :class:`~pipelines.serving.bundle.ModelBundle` folder, so they import
neither MLflow nor its model-loading machinery (seconds per actor).
"""
from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from featurize.fingerprints import FingerprintRows
from featurize.spec import FingerprintSpec
from featurize.standardize import standardize_smiles
from featurize.tensors import unpack_fingerprints
from models.ensemble import member_probabilities
from models.networks.sparse_input import Features, SparseRows
from pipelines.serving.applicability_domain import Neighbours, TrainingDomain
from pipelines.serving.bundle import ModelBundle
from pipelines.serving.calibration import Calibration, members_spread


def resolve_device(device: torch.device | str = "auto") -> torch.device:
    """"auto" is the first CUDA device where there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


@dataclass(frozen=True)
class SmilesScores:
    """Scores of a list of SMILES, one row per input: ``probabilities``
    ``float32[N, K]`` (NaN rows where a SMILES failed), ``errors`` (None
    where it scored), when the model carries its training domain, the
    nearest training molecule of each scored row (``neighbours.similarity``
    NaN and ``neighbours.mol_id`` None on failed rows), and when asked of
    an ensemble, the members' ``spread`` ``float32[N, K]`` (NaN rows where
    a SMILES failed)."""

    probabilities: np.ndarray
    errors: list[str | None]
    neighbours: Neighbours | None
    spread: np.ndarray | None = None


class Scorer:
    """A trained model ready to score: ``spec``, ``tasks``, ``score_packed``,
    ``score_smiles``, ``neighbours``. Cheap to call from many threads' worth of batches; build
    one per process (e.g. in a Ray Data actor's ``__init__``).

    Scores are the bundle's calibrated probabilities unless ``raw_scores``
    (or the per-call ``raw_scores`` of the scoring methods) asks for the
    model's own sigmoid outputs; a bundle without calibration scores raw.
    An ensemble's score is its members' mean probability, calibrated as one
    network's is; its spread (:meth:`score_packed_with_spread`) is the
    standard deviation of the members' probabilities, each calibrated by the
    same maps (raw with raw scores): a spread in the units of the score."""

    def __init__(self, bundle: ModelBundle, device: torch.device | str = "auto",
                 batch_size: int | None = None, raw_scores: bool = False) -> None:
        self.device = resolve_device(device)
        self.model = bundle.model.to(self.device).eval()
        self.spec: FingerprintSpec = bundle.spec
        self.tasks: list[str] = list(bundle.tasks)
        self.domain: TrainingDomain | None = bundle.domain
        self.calibration: Calibration | None = bundle.calibration
        self.raw_scores = raw_scores
        self.n_members = bundle.n_members
        # Rows per forward pass. A CPU is memory-bound on the per-task
        # activations ([K, B, h] floats, hundreds of MB at 4096 rows); 256
        # rows keep them in cache (benchmarks/scoring.py). A GPU wants big batches.
        self.batch_size = batch_size or (256 if self.device.type == "cpu" else 8192)

    @property
    def has_spread(self) -> bool:
        """Whether the model is an ensemble, whose members' spread means something."""
        return self.n_members > 1

    def require_spread(self) -> None:
        """Refuse to make up an uncertainty: one network has no spread."""
        if not self.has_spread:
            raise ValueError("the model is one network, which has no members' spread; train "
                             "an ensemble (train --ensemble N) for an uncertainty")

    @classmethod
    def from_bundle(cls, directory: str | os.PathLike[str], device: torch.device | str = "auto",
                    raw_scores: bool = False) -> Scorer:
        return cls(ModelBundle.load(directory, resolve_device(device)), device,
                   raw_scores=raw_scores)

    def calibrates(self, raw_scores: bool | None = None) -> bool:
        """Whether a call with this ``raw_scores`` (None: the scorer's own
        setting) returns calibrated probabilities."""
        raw = self.raw_scores if raw_scores is None else raw_scores
        return self.calibration is not None and not raw

    def score_packed(self, fp: np.ndarray, raw_scores: bool | None = None) -> np.ndarray:
        """Packed fingerprints ``uint8[N, spec.n_bytes]`` -> probabilities
        ``float32[N, K]`` (see :meth:`calibrates`). Only packed bytes cross
        to the device."""
        return self.score_packed_with_spread(fp, raw_scores, spread=False)[0]

    @torch.inference_mode()
    def score_packed_with_spread(self, fp: np.ndarray, raw_scores: bool | None = None,
                                 spread: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities as :meth:`score_packed`, the members' spread
        ``float32[N, K]``, or None without ``spread``); one forward per batch
        gives both."""
        fp = np.asarray(fp)
        if fp.dtype != np.uint8 or fp.ndim != 2 or fp.shape[1] != self.spec.n_bytes:
            raise ValueError(f"expected packed fingerprints uint8[N, {self.spec.n_bytes}] "
                             f"({self.spec.describe()}), got {fp.dtype}{list(fp.shape)}")
        if spread:
            self.require_spread()
        calibrates = self.calibrates(raw_scores)
        out = np.empty((len(fp), len(self.tasks)), dtype=np.float32)
        spreads = np.empty_like(out) if spread else None
        for start in range(0, len(fp), self.batch_size):
            chunk = torch.from_numpy(np.ascontiguousarray(fp[start:start + self.batch_size]))
            x = self._features(chunk.to(self.device, non_blocking=True))
            members = member_probabilities(self.model, x).float().cpu().numpy()
            out[start:start + len(chunk)] = members.mean(axis=0)
            if spreads is not None:
                spreads[start:start + len(chunk)] = members_spread(
                    members, self.calibration if calibrates else None)
        return (self.calibration.apply(out) if calibrates else out), spreads

    def _features(self, packed: torch.Tensor) -> Features:
        """The model's input for packed fingerprints. On a CPU, bags of on-bits:
        the first layers then add the few weight rows whose bits are on
        instead of multiplying all of them (benchmarks/scoring.py). A GPU
        keeps the dense product."""
        x = unpack_fingerprints(packed, self.spec)
        return SparseRows.from_dense(x) if self.device.type == "cpu" else x

    def featurize_smiles(self, smiles: Sequence[Any]) -> tuple[np.ndarray, list[str | None]]:
        """:func:`featurize_smiles` with this model's spec."""
        return featurize_smiles(smiles, self.spec)

    def neighbours(self, fp: np.ndarray) -> Neighbours | None:
        """The nearest training molecule of each packed fingerprint, or None
        when the model was saved without its training domain."""
        if self.domain is None:
            return None
        return self.domain.nearest(fp, threads=torch.get_num_threads())

    def score_smiles(self, smiles: Sequence[Any], raw_scores: bool | None = None,
                     uncertainty: bool = False) -> SmilesScores:
        """Probabilities (calibrated as in :meth:`score_packed`), errors,
        nearest training molecules of ``smiles`` and, with ``uncertainty``
        (an ensemble's), the members' spread."""
        fp, errors = self.featurize_smiles(smiles)
        probs = np.full((len(errors), len(self.tasks)), np.nan, dtype=np.float32)
        spreads = np.full_like(probs, np.nan) if uncertainty else None
        ok = np.array([error is None for error in errors], dtype=bool)
        if uncertainty:
            self.require_spread()
        if ok.any():
            probs[ok], spread = self.score_packed_with_spread(fp, raw_scores, spread=uncertainty)
            if spreads is not None:
                spreads[ok] = spread
        found = self.neighbours(fp)
        return SmilesScores(probs, errors, None if found is None else spread_neighbours(found, errors),
                            spreads)


def featurize_smiles(smiles: Sequence[Any], spec: FingerprintSpec) -> tuple[np.ndarray, list[str | None]]:
    """Packed fingerprints of the SMILES that featurize (rows in input order,
    failures left out) and one error per input (None where fine)."""
    if spec.kind != "morgan":
        reason = (f"model uses {spec.describe()} fingerprints, which cannot be "
                  "computed from SMILES; score its packed fingerprints instead")
        return np.zeros((0, spec.n_bytes), np.uint8), [reason] * len(smiles)
    fingerprints, errors = FingerprintRows(spec), []
    for raw in smiles:
        standardized = standardize_smiles(raw if isinstance(raw, str) else None, canonical=False)
        errors.append(standardized.reason)
        if standardized.mol is not None:
            fingerprints.add(standardized.mol)
    return fingerprints.matrix(), errors


def spread_neighbours(found: Neighbours, errors: list[str | None]) -> Neighbours:
    """``found`` (one per featurized row) at its inputs' positions: NaN
    similarity and None mol_id where an input failed."""
    ok = np.array([error is None for error in errors], dtype=bool)
    similarity = np.full(len(errors), np.nan, dtype=np.float32)
    similarity[ok] = found.similarity
    mol_ids: list[str | None] = [None] * len(errors)
    for position, mol_id in zip(np.flatnonzero(ok).tolist(), found.mol_id):
        mol_ids[position] = mol_id
    return Neighbours(similarity, mol_ids)


def neighbours_of_smiles(smiles: Sequence[Any], spec: FingerprintSpec,
                         domain: TrainingDomain) -> Neighbours:
    """The nearest training molecule of each SMILES (see :func:`spread_neighbours`)."""
    fp, errors = featurize_smiles(smiles, spec)
    return spread_neighbours(domain.nearest(fp, threads=torch.get_num_threads()), errors)
