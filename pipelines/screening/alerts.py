"""Structural alerts on hits: RDKit's FilterCatalog (PAINS A/B/C, Brenk, NIH).

A hit that matches a PAINS pattern (assay interference: redox cyclers,
aggregators, covalent modifiers) or a Brenk/NIH unwanted group is a weaker
lead however well it scores, so every molecule of the hit lists carries the
names of the filters it matches. Alerts run on the hit lists only (a few
thousand molecules), never on the whole library: about 765 substructure
searches per molecule cost milliseconds each.

Each alert is ``<filter set>:<filter name>`` as RDKit names them
(``PAINS_A:ene_rhod_A(235)``, ``Brenk:Michael_acceptor_1``,
``NIH:rhodanine``), ordered by catalog (:data:`CATALOGS`), then by name.
The molecule checked is the one that was scored: the library SMILES
standardized as featurize does (largest fragment, sanitized). A SMILES that
does not standardize cannot be checked and gets the single alert
``unchecked:<reason>``, so it is flagged rather than passed as clean.

Matching every entry of the catalog costs about 4 ms for a drug-sized
molecule, and a default screen's hit lists hold about 12,000 distinct
molecules. Most entries cannot match a given molecule, and RDKit's pattern
fingerprint proves it cheaply: a substructure's fingerprint bits are all set
in the fingerprint of any molecule that contains it (the screen behind
RDKit's SubstructLibrary). :class:`AlertMatcher` checks an entry only where
the bits allow, and the screen splits a large batch into Ray tasks over the
cluster's CPUs (:func:`match_on_ray`; the matching holds Python's lock, so
threads would not help). The result is RDKit's ``RunFilterCatalog``'s,
which the tests compare against.
"""
from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable, Sequence

import numpy as np
from rdkit import Chem, DataStructs, rdBase
from rdkit.Chem import FilterCatalog

from featurize.standardize import standardize_smiles

logger = logging.getLogger(__name__)

CATALOGS = ("PAINS_A", "PAINS_B", "PAINS_C", "BRENK", "NIH")
UNCHECKED_PREFIX = "unchecked:"


@functools.cache
def alert_catalog() -> FilterCatalog.FilterCatalog:
    """The combined catalog, built once per process (hundreds of SMARTS)."""
    params = FilterCatalog.FilterCatalogParams()
    for name in CATALOGS:
        params.AddCatalog(getattr(FilterCatalog.FilterCatalogParams.FilterCatalogs, name))
    return FilterCatalog.FilterCatalog(params)


PATTERN_BITS = 2048
#: The smallest batch a Ray task gets: a task costs milliseconds to start,
#: a molecule's alerts about one.
MIN_CHUNK = 250
_PICKLE_START = b"\xef\xbe\xad\xde"  # RDKit's molecule pickles begin with 0xDEADBEEF
_COUNTS_AFTER_PICKLE = re.compile(rb" (\d+) (\d+) ")


def entry_query(entry: FilterCatalog.FilterCatalogEntry) -> Chem.Mol | None:
    """The query molecule of a catalog entry that needs at least one match
    of a single SMARTS, or None (then the entry is checked on every molecule).

    RDKit exposes no entry's matcher in Python; its serialization holds a
    SmartsMatcher as ``<pickle length> <query pickle> <min count> <max count>``.
    Anything else (another matcher, a minimum count of 0, a format this
    parser does not know) gives None: slower, never wrong."""
    data = entry.Serialize()
    start = data.find(_PICKLE_START)
    length = re.search(rb"(\d+) $", data[:start]) if start > 0 else None
    if length is None:
        return None
    end = start + int(length.group(1))
    counts = _COUNTS_AFTER_PICKLE.match(data, end)
    if counts is None or int(counts.group(1)) < 1:
        return None
    try:
        return Chem.Mol(data[start:end])
    except RuntimeError:
        return None


def _pattern_words(mol: Chem.Mol) -> np.ndarray:
    """``mol``'s pattern fingerprint as 64-bit words."""
    fingerprint = Chem.PatternFingerprint(mol, fpSize=PATTERN_BITS)
    return np.frombuffer(DataStructs.BitVectToBinaryText(fingerprint), np.uint8).view(np.uint64)


class AlertMatcher:
    """The catalog with each entry's pattern fingerprint: a molecule is
    matched against the entries whose bits its own fingerprint holds (all
    bits clear for an entry without a query, so it is always checked)."""

    def __init__(self) -> None:
        catalog = alert_catalog()
        self.entries = [catalog.GetEntryWithIdx(index) for index in range(catalog.GetNumEntries())]
        queries = [entry_query(entry) for entry in self.entries]
        self.entry_words = np.stack([
            _pattern_words(query) if query is not None else np.zeros(PATTERN_BITS // 64, np.uint64)
            for query in queries])

    def alerts(self, smiles: Sequence[str | None]) -> list[list[str]]:
        """The alert names of each SMILES, checked on its standardized
        molecule (``unchecked:<reason>`` where it does not standardize)."""
        found = []
        with rdBase.BlockLogs():
            for text in smiles:
                mol, _, reason = standardize_smiles(text, canonical=False)
                if mol is None:
                    found.append([f"{UNCHECKED_PREFIX}{reason}"])
                    continue
                words = _pattern_words(mol)
                possible = np.flatnonzero(~(self.entry_words & ~words).any(axis=1))
                found.append(_alert_names([self.entries[index] for index in possible
                                           if self.entries[index].HasFilterMatch(mol)]))
        return found


@functools.cache
def alert_matcher() -> AlertMatcher:
    """One matcher per process (765 query fingerprints, built in milliseconds)."""
    return AlertMatcher()


def match_in_process(smiles: Sequence[str | None]) -> list[list[str]]:
    """:meth:`AlertMatcher.alerts` with this process's matcher."""
    return alert_matcher().alerts(smiles)


def match_on_ray(smiles: Sequence[str | None]) -> list[list[str]]:
    """:func:`match_in_process` as Ray tasks, about four per CPU of the
    cluster this process joined, each of at least :data:`MIN_CHUNK`
    molecules (a worker builds its matcher once, in milliseconds)."""
    import ray

    cpus = int(ray.cluster_resources().get("CPU", 1))
    chunk = max(MIN_CHUNK, -(-len(smiles) // (4 * cpus)))
    if len(smiles) <= chunk:
        return match_in_process(smiles)
    task = ray.remote(num_cpus=1)(match_in_process)
    parts = [task.remote(list(smiles[start:start + chunk]))
             for start in range(0, len(smiles), chunk)]
    return [names for part in ray.get(parts) for names in part]


def _catalog_position(filter_set: str) -> int:
    """Sort key of an entry's filter set (RDKit spells BRENK ``Brenk``)."""
    try:
        return CATALOGS.index(filter_set.upper())
    except ValueError:
        return len(CATALOGS)


def _alert_names(entries: Sequence[FilterCatalog.FilterCatalogEntry]) -> list[str]:
    keys = {(_catalog_position(entry.GetProp("FilterSet")), entry.GetProp("FilterSet"),
             entry.GetDescription()) for entry in entries}
    return [f"{filter_set}:{name}" for _, filter_set, name in sorted(keys)]


class AlertCache:
    """Alerts per distinct SMILES, each computed once however many assays'
    hit lists (or ranking rounds) the molecule appears in.

    ``match``: how a batch of SMILES is matched (in this process, or
    :func:`match_on_ray` while the screen holds a Ray cluster: the
    standardization runs there too)."""

    def __init__(self, match: Callable[[Sequence[str | None]], list[list[str]]] = match_in_process):
        self.match = match
        self._alerts: dict[str | None, list[str]] = {}

    def alerts(self, smiles: Sequence[str | None]) -> list[list[str]]:
        """The alerts of each SMILES, in order (an empty list when none)."""
        self._compute([text for text in dict.fromkeys(smiles) if text not in self._alerts])
        return [self._alerts[text] for text in smiles]

    def flagged(self, smiles: Sequence[str | None]) -> np.ndarray:
        """Whether each SMILES has at least one alert (bool array)."""
        return np.array([bool(names) for names in self.alerts(smiles)], dtype=bool)

    def _compute(self, fresh: list[str | None]) -> None:
        if not fresh:
            return
        found = self.match(fresh)
        unchecked = sum(bool(names) and names[0].startswith(UNCHECKED_PREFIX) for names in found)
        if unchecked:
            logger.warning("%d hit SMILES could not be standardized for the alert check; "
                           "they are flagged %s<reason>", unchecked, UNCHECKED_PREFIX)
        self._alerts.update(zip(fresh, found))


def structural_alerts(smiles: Sequence[str | None]) -> list[list[str]]:
    """The alerts of each SMILES (see the module docstring)."""
    return AlertCache().alerts(smiles)
