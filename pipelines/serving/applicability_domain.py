"""Applicability domain: the training molecule nearest each scored molecule.

A score means most for molecules like those the model learnt from. For every
scored fingerprint :class:`TrainingDomain` gives the largest Tanimoto
similarity to the training split (on the model's own fingerprints), which
training molecule that is, and whether the fingerprint is a training one
(similarity 1.0: identical bits).

Two searches, one answer format:

- exact, for training sets up to ``EXACT_MAX_ROWS`` rows: the intersections of a
  block of queries with every training fingerprint, summed over the queries'
  on-bits (an embedding-bag over the transposed training bits: 2-5 % of the
  bits are on, so this is ~30 adds per pair instead of a 1024-long product);
- approximate, above that: a USearch HNSW graph with the Tanimoto metric on
  the packed bits, built once and shipped with the model. It returns the true
  similarity of the neighbour it finds; what it can miss is a closer one
  (recall@1 and the similarity error are in docs/benchmarks.md). Whether a
  query is a training fingerprint never rests on the graph: a sorted table
  of 64-bit fingerprint hashes answers it exactly, and a hash match is
  checked against the graph's stored bits before it counts.

On disk (a folder of the model bundle)::

    mol_ids.json        training mol_ids, in row order
    fingerprints.npy    uint8[N, n_bytes] packed bits (exact search)
    index.usearch       the HNSW graph with its vectors (approximate search)
    hashes.npy          uint64[N] fingerprint hashes, in row order (approximate search)
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

#: The columns a score gets from the domain (screening outputs, the pyfunc).
NN_SIMILARITY_COLUMN = "nn_similarity"
NN_MOL_ID_COLUMN = "nn_mol_id"
IN_TRAINING_SET_COLUMN = "in_training_set"
DOMAIN_COLUMNS = (NN_SIMILARITY_COLUMN, NN_MOL_ID_COLUMN, IN_TRAINING_SET_COLUMN)

MOL_IDS_FILE = "mol_ids.json"
FINGERPRINTS_FILE = "fingerprints.npy"
INDEX_FILE = "index.usearch"
HASHES_FILE = "hashes.npy"
#: Largest training set searched exactly. Exact costs ~30 adds per training
#: molecule and query, the graph a few thousand distances whatever the size;
#: they meet near here (docs/benchmarks.md, "Applicability domain").
EXACT_MAX_ROWS = 2_000
#: Candidates the graph keeps while searching (USearch's default is 64). On
#: the PCBA subset half the default keeps nearly all of the recall at well
#: under the time, which keeps the domain columns a small part of a screen
#: (docs/benchmarks.md has the curve).
EXPANSION_SEARCH = 32
#: Training-fingerprint cells one exact block may hold (64 MiB of float32).
EXACT_BLOCK_CELLS = 1 << 24


@dataclass(frozen=True)
class Neighbours:
    """For each query: the largest Tanimoto similarity to a training
    fingerprint (0 where the query has no on-bit) and that molecule's id."""

    similarity: np.ndarray  # float32 [M]
    mol_id: list[str]

    @property
    def in_training_set(self) -> np.ndarray:
        """True where the fingerprint is a training molecule's (bits identical)."""
        return self.similarity >= 1.0


class TrainingDomain:
    """The training split's fingerprints, searchable by Tanimoto similarity."""

    def __init__(self, n_bits: int, mol_ids: list[str], fingerprints: np.ndarray | None = None,
                 index: Any = None, hashes: np.ndarray | None = None) -> None:
        if (fingerprints is None) == (index is None) or (index is None) != (hashes is None):
            raise ValueError("a training domain searches either fingerprints, or an index "
                             "with its fingerprint hashes")
        self.n_bits = n_bits
        self.mol_ids = mol_ids
        self.index = index
        self.hashes = hashes
        self._hash_table: tuple[np.ndarray, np.ndarray] | None = None  # order, sorted hashes
        self._bits: torch.Tensor | None = None  # [n_bits, N] float32, built on first exact search
        self._counts: torch.Tensor | None = None
        self.fingerprints = fingerprints

    @property
    def rows(self) -> int:
        return len(self.mol_ids)

    @property
    def method(self) -> str:
        return "exact" if self.index is None else "approximate (HNSW)"

    @classmethod
    def build(cls, fingerprints: np.ndarray, mol_ids: list[str], *, n_bits: int,
              exact_max_rows: int = EXACT_MAX_ROWS, threads: int = 0) -> TrainingDomain:
        """The domain of packed training fingerprints ``uint8[N, n_bits / 8]``:
        exact up to ``exact_max_rows`` rows, else an HNSW index built here
        (``threads`` 0: all cores)."""
        fingerprints = np.ascontiguousarray(fingerprints, dtype=np.uint8)
        if fingerprints.ndim != 2 or fingerprints.shape[1] * 8 != n_bits:
            raise ValueError(f"expected packed fingerprints uint8[N, {n_bits // 8}], "
                             f"got {list(fingerprints.shape)}")
        if len(fingerprints) != len(mol_ids):
            raise ValueError(f"{len(fingerprints)} fingerprints but {len(mol_ids)} mol_ids")
        if len(fingerprints) <= exact_max_rows:
            return cls(n_bits, list(mol_ids), fingerprints=fingerprints)
        index = _new_index(n_bits)
        index.add(np.arange(len(fingerprints), dtype=np.uint64), fingerprints, threads=threads)
        return cls(n_bits, list(mol_ids), index=index, hashes=fingerprint_hashes(fingerprints))

    def nearest(self, packed: np.ndarray, threads: int = 1) -> Neighbours:
        """The nearest training molecule of each packed query fingerprint."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        if packed.ndim != 2 or packed.shape[1] * 8 != self.n_bits:
            raise ValueError(f"expected packed fingerprints uint8[M, {self.n_bits // 8}], "
                             f"got {packed.dtype}{list(packed.shape)}")
        if not len(packed):
            return Neighbours(np.zeros(0, np.float32), [])
        similarity, rows = self._search_exact(packed) if self.index is None \
            else self._search_index(packed, threads)
        return Neighbours(similarity, [self.mol_ids[row] for row in rows.tolist()])

    def _search_index(self, packed: np.ndarray, threads: int) -> tuple[np.ndarray, np.ndarray]:
        found = self.index.search(packed, 1, threads=threads)
        distances = found.distances.reshape(len(packed), -1)[:, 0]
        keys = found.keys.reshape(len(packed), -1)[:, 0].astype(np.int64)
        similarity = np.clip(np.nan_to_num(1.0 - distances.astype(np.float32), nan=0.0), 0.0, 1.0)
        # A query without on-bits is like nothing, as in the exact search (USearch
        # puts it at distance 0 from an empty training fingerprint).
        similarity[~packed.any(axis=1)] = 0.0
        rows = np.where(keys < 0, 0, keys)
        identical, row_of = self._identical_rows(packed)
        similarity[identical], rows[identical] = 1.0, row_of
        return similarity, rows

    def identical(self, packed: np.ndarray) -> np.ndarray:
        """Whether each packed query fingerprint is a training molecule's
        (bits identical): :attr:`Neighbours.in_training_set` at the cost of
        a hash lookup, for callers that need no similarity."""
        packed = np.ascontiguousarray(packed, dtype=np.uint8)
        return self._identical_rows(packed)[0] if len(packed) else np.zeros(0, bool)

    def _identical_rows(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Which queries are a training fingerprint, and its row: the graph
        can miss even an identical molecule, a hash table cannot (and its
        float distance of identical bits can be a rounding above 0)."""
        order, sorted_hashes = self._hashes_sorted()
        hashes = fingerprint_hashes(packed)
        slot = np.minimum(np.searchsorted(sorted_hashes, hashes), len(sorted_hashes) - 1)
        candidate = order[slot]
        matched = np.flatnonzero((sorted_hashes[slot] == hashes) & packed.any(axis=1))
        if len(matched):  # a 64-bit hash match is checked against the stored bits
            stored = self.fingerprints[candidate[matched]] if self.index is None else \
                np.asarray(self.index.get(candidate[matched].astype(np.uint64)), dtype=np.uint8)
            matched = matched[(stored.reshape(len(matched), -1) == packed[matched]).all(axis=1)]
        identical = np.zeros(len(packed), dtype=bool)
        identical[matched] = True
        return identical, candidate[matched]

    def _hashes_sorted(self) -> tuple[np.ndarray, np.ndarray]:
        """The training hashes' sort order and the sorted hashes, built on
        first use (an exact domain hashes its fingerprints then), not per search."""
        if self._hash_table is None:
            hashes = self.hashes if self.hashes is not None else fingerprint_hashes(self.fingerprints)
            order = np.argsort(hashes, kind="stable")
            self._hash_table = order, hashes[order]
        return self._hash_table

    def _search_exact(self, packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        bits, counts = self._exact_tables()
        block = max(1, EXACT_BLOCK_CELLS // max(1, self.rows))
        similarity = np.empty(len(packed), np.float32)
        rows = np.empty(len(packed), np.int64)
        with torch.inference_mode():
            for start in range(0, len(packed), block):
                query = torch.from_numpy(np.unpackbits(packed[start:start + block], axis=1))
                member, on_bit = query.nonzero(as_tuple=True)
                offsets = torch.searchsorted(member, torch.arange(len(query)))
                shared = torch.nn.functional.embedding_bag(on_bit, bits, offsets, mode="sum")
                union = query.sum(dim=1, keepdim=True, dtype=torch.float32) + counts - shared
                tanimoto = torch.where(union > 0, shared / union.clamp_min(1.0), 0.0)
                best, best_row = tanimoto.max(dim=1)
                similarity[start:start + len(query)] = best.numpy()
                rows[start:start + len(query)] = best_row.numpy()
        return similarity, rows

    def _exact_tables(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training bits transposed (one row of N per bit, for the bag sums)
        and each training molecule's on-bit count."""
        if self._bits is None:
            unpacked = torch.from_numpy(np.unpackbits(self.fingerprints, axis=1))
            self._bits = unpacked.T.contiguous().float()
            self._counts = unpacked.sum(dim=1, dtype=torch.float32)
        return self._bits, self._counts

    def save(self, directory: str | os.PathLike[str]) -> Path:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        (directory / MOL_IDS_FILE).write_text(json.dumps({"n_bits": self.n_bits, "mol_ids": self.mol_ids}))
        if self.index is None:
            np.save(directory / FINGERPRINTS_FILE, self.fingerprints, allow_pickle=False)
        else:
            self.index.save(str(directory / INDEX_FILE))
            np.save(directory / HASHES_FILE, self.hashes, allow_pickle=False)
        return directory

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> TrainingDomain:
        """Load a saved domain; the index is memory-mapped, not read."""
        directory = Path(directory)
        saved = json.loads((directory / MOL_IDS_FILE).read_text())
        if (directory / INDEX_FILE).is_file():
            index = _new_index(saved["n_bits"])
            index.view(str(directory / INDEX_FILE))
            return cls(saved["n_bits"], saved["mol_ids"], index=index,
                       hashes=np.load(directory / HASHES_FILE, allow_pickle=False))
        fingerprints = np.load(directory / FINGERPRINTS_FILE, allow_pickle=False)
        return cls(saved["n_bits"], saved["mol_ids"], fingerprints=fingerprints)

    @staticmethod
    def saved_in(directory: str | os.PathLike[str]) -> bool:
        return (Path(directory) / MOL_IDS_FILE).is_file()


def fingerprint_hashes(packed: np.ndarray) -> np.ndarray:
    """A 64-bit hash of each packed fingerprint (FNV-style over its 8-byte
    words, vectorized over rows; uint64 arithmetic wraps)."""
    width = -(-packed.shape[1] // 8) * 8
    words = np.zeros((len(packed), width), np.uint8)
    words[:, :packed.shape[1]] = packed
    words = words.view("<u8")
    hashes = np.full(len(packed), 0xCBF29CE484222325, dtype=np.uint64)
    prime = np.uint64(0x100000001B3)
    with np.errstate(over="ignore"):
        for column in range(words.shape[1]):
            hashes = (hashes ^ words[:, column]) * prime
    return hashes


def _new_index(n_bits: int) -> Any:
    """An empty HNSW index over ``n_bits``-bit vectors, Tanimoto metric,
    searching with ``EXPANSION_SEARCH`` candidates (USearch's defaults
    otherwise: 16 links a node, 128 candidates when adding)."""
    from usearch.index import Index, MetricKind, ScalarKind

    return Index(ndim=n_bits, metric=MetricKind.Tanimoto, dtype=ScalarKind.B1,
                 expansion_search=EXPANSION_SEARCH)
