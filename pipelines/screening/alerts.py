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
"""
from __future__ import annotations

import functools
import logging
from collections.abc import Sequence

import numpy as np
from rdkit import rdBase
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

    ``num_threads``: RDKit matching threads (0: every core of this machine)."""

    def __init__(self, num_threads: int = 0):
        self.num_threads = num_threads
        self._alerts: dict[str | None, list[str]] = {}

    def alerts(self, smiles: Sequence[str | None]) -> list[list[str]]:
        """The alerts of each SMILES, in order (an empty list when none)."""
        self._compute([text for text in dict.fromkeys(smiles) if text not in self._alerts])
        return [self._alerts[text] for text in smiles]

    def flagged(self, smiles: Sequence[str | None]) -> np.ndarray:
        """Whether each SMILES has at least one alert (bool array)."""
        return np.array([bool(names) for names in self.alerts(smiles)], dtype=bool)

    def _compute(self, fresh: list[str | None]) -> None:
        checkable: list[str | None] = []
        canonical: list[str] = []
        for text in fresh:
            standardized = standardize_smiles(text)
            if standardized.mol is None:
                self._alerts[text] = [f"{UNCHECKED_PREFIX}{standardized.reason}"]
            else:
                checkable.append(text)
                canonical.append(standardized.smiles)
        if len(checkable) < len(fresh):
            logger.warning("%d hit SMILES could not be standardized for the alert check; "
                           "they are flagged %s<reason>", len(fresh) - len(checkable),
                           UNCHECKED_PREFIX)
        if not canonical:
            return
        # RunFilterCatalog re-parses (cheap next to ~765 substructure searches)
        # and matches on num_threads C++ threads.
        with rdBase.BlockLogs():
            matches = FilterCatalog.RunFilterCatalog(alert_catalog(), canonical,
                                                     numThreads=self.num_threads)
        for text, entries in zip(checkable, matches):
            self._alerts[text] = _alert_names(list(entries))


def structural_alerts(smiles: Sequence[str | None]) -> list[list[str]]:
    """The alerts of each SMILES (see the module docstring)."""
    return AlertCache().alerts(smiles)
