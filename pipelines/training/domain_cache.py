"""The training split's applicability domain, built once per dataset.

Every model trained on a dataset has the same training molecules, so the
searchable domain (an HNSW graph for large sets: minutes to build for the
PCBA subset's 70k molecules on 2 cores) is built on first use and kept in the
dataset folder, keyed by the dataset's manifest: a sweep's trials, reruns and
the models registered from them all reuse it. A dataset folder that cannot
be written still gets its domain, built for the run.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
import uuid
from pathlib import Path

from featurize.dataset import MANIFEST_FILE, DatasetInfo
from featurize.reader import read_all
from pipelines.serving.applicability_domain import TrainingDomain

logger = logging.getLogger(__name__)

CACHE_DIR = "domain"
TRAIN_SPLIT = "train"


def training_domain(info: DatasetInfo) -> TrainingDomain | None:
    """The domain of ``info``'s training split (cached in ``DIR/domain/``),
    or None for count fingerprints, whose bits Tanimoto does not compare."""
    if info.spec.counts:
        logger.info("%s: count fingerprints, models get no applicability domain", info.path)
        return None
    cached = cache_path(info)
    if TrainingDomain.saved_in(cached):
        return TrainingDomain.load(cached)
    started = time.perf_counter()
    train = read_all(info, split=TRAIN_SPLIT, columns=("mol_id",))
    domain = TrainingDomain.build(train.fp, train.mol_id, n_bits=info.spec.n_bits)
    logger.info("applicability domain of %d training molecules (%s) built in %.1f s",
                domain.rows, domain.method, time.perf_counter() - started)
    try:
        _save_atomically(domain, cached)
    except OSError as error:
        logger.warning("could not keep the applicability domain in %s (%s); "
                       "the next run builds it again", cached, error)
    return domain


def cache_path(info: DatasetInfo) -> Path:
    """Where the domain of this version of the dataset is kept."""
    digest = hashlib.sha256((Path(info.path) / MANIFEST_FILE).read_bytes()).hexdigest()[:16]
    return Path(info.path) / CACHE_DIR / digest


def _save_atomically(domain: TrainingDomain, destination: Path) -> None:
    """Save beside ``destination`` and rename: runs that build at the same
    time each write whole folders, and the first rename wins."""
    scratch = destination.with_name(f".{destination.name}.tmp-{uuid.uuid4().hex[:8]}")
    domain.save(scratch)
    try:
        os.rename(scratch, destination)
    except OSError:
        if not TrainingDomain.saved_in(destination):
            raise
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
