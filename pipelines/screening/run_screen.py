"""``screen_library``: one screening run from a registered model to hit lists."""
from __future__ import annotations

import contextlib
import functools
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from featurize.sources.readers import file_sha256
from pipelines.errors import UserError
from pipelines.names import SCREEN_ROWS_PER_PART, SIMILARITY_SAMPLE_EVERY
from pipelines.screening.alerts import AlertCache, match_on_ray
from pipelines.screening.hits import HitSpread, rank_hits
from pipelines.screening.library_source import (
    ScreeningLibrary,
    check_library_spec,
    resolve_library,
)
from pipelines.screening.model import ScreeningModel, fetch_model, source_run_id
from pipelines.screening.outputs import (
    HITS_FILE,
    MULTI_ASSAY_FILE,
    REJECTS_FILE,
    SCORES_DIR,
    SIMILARITY_PICTURE,
    StagedOutput,
    check_out_dir,
    identity_digest,
    scores_schema,
)
from pipelines.screening.pictures import (
    draw_hit_pictures,
    similarity_histogram_png,
    similarity_histogram_text,
)
from pipelines.screening.score_parts import ScoreParts
from pipelines.screening.scoring import DomainScope, Resources, scored_dataset, write_scores
from pipelines.serving.applicability_domain import IN_TRAINING_SET_COLUMN, NN_SIMILARITY_COLUMN, Neighbours
from pipelines.serving.scorer import Scorer, neighbours_of_smiles

logger = logging.getLogger(__name__)

BLOCK_BYTES = 256 * 1024


@dataclass(frozen=True)
class ScreeningConfig:
    """Everything a screening run depends on (the screen job's flags)."""

    model_uri: str
    library: Path
    out_dir: Path
    tracking_uri: str | None = None
    assays: tuple[str, ...] = ()  # empty: every assay the model predicts
    top_k: int = 100
    threshold: float | None = None  # multi-assay view: None = in the assay's top_k
    min_active_assays: int = 2
    exclude_alerts: bool = False  # rank only molecules without structural alerts
    smiles_col: str = "smiles"
    id_col: str | None = None
    resources: Resources = field(default_factory=Resources)
    address: str | None = None  # Ray cluster; None: RAY_ADDRESS or a local instance
    num_cpus: int | None = None  # CPUs of a local Ray instance started here
    overwrite: bool = False
    progress: bool = True
    raw_scores: bool = False  # the model's uncalibrated probabilities
    rows_per_part: int = SCREEN_ROWS_PER_PART  # library rows per committed part (what a kill can lose)
    domain: DomainScope = "hits"  # rows that get the nearest training molecule (see scoring.DomainScope)
    max_spread: float | None = None  # an ensemble's hits whose members' spread exceeds it are dropped

    def __post_init__(self) -> None:
        problems = []
        if self.top_k < 1:
            problems.append(f"--top-k must be >= 1, got {self.top_k}")
        if self.threshold is not None and not 0.0 <= self.threshold <= 1.0:
            problems.append(f"--threshold is a probability in [0, 1], got {self.threshold}")
        if self.min_active_assays < 1:
            problems.append(f"--min-active-assays must be >= 1, got {self.min_active_assays}")
        if (self.resources.num_actors is not None and self.resources.num_actors < 1) \
                or self.resources.batch_size < 1 or self.rows_per_part < 1:
            problems.append("--num-actors, --batch-size and --rows-per-part must be >= 1")
        if self.domain not in ("hits", "all"):
            problems.append(f"--domain is hits or all, got {self.domain!r}")
        if self.max_spread is not None and not 0.0 <= self.max_spread <= 0.5:
            problems.append(f"--max-spread is a standard deviation of probabilities, in [0, 0.5], "
                            f"got {self.max_spread}")
        if problems:
            raise UserError("; ".join(problems))


@dataclass(frozen=True)
class ScreeningResult:
    out_dir: Path
    model_uri: str
    library_rows: int
    scored: int
    rejected: int
    hits: int
    multi_assay_hits: int
    elapsed_s: float  # the whole run: model download, Ray start, scoring, hits
    streaming_s: float  # the Ray Data pass alone (read, featurize, score, write)
    featurize_seconds: float  # summed over featurize tasks (this process's rows)
    score_seconds: float  # summed over scoring actors (this process's rows)
    resumed_rows: int = 0  # rows an earlier, killed run of this screening had committed
    #: Wall seconds of each phase (model, Ray start, pass, rejects, hits, pictures, MLflow):
    #: where a screen's time goes beyond the pass.
    phase_seconds: dict[str, float] = field(default_factory=dict)
    driver_cpu_seconds: dict[str, float] = field(default_factory=dict)  # per phase, this process
    hits_with_alerts: int = 0  # rows of hits.parquet with a structural alert
    excluded_for_alerts: int = 0  # flagged molecules left out (--exclude-alerts)
    dropped_for_spread: int = 0  # an ensemble's hits over --max-spread
    pictures: tuple[str, ...] = ()  # PNG files in out_dir
    pictures_logged_to: str | None = None  # runs:/<run_id>/<path> of the model's run
    # With a model that carries its training domain: the library's nearest-
    # training-molecule similarities, as a text histogram, and exact repeats.
    similarity_histogram: str | None = None
    in_training_set: int | None = None
    skipped_existing: bool = False

    @property
    def molecules_per_second(self) -> float:
        return self.library_rows / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def files(self) -> dict[str, Path]:
        return {"scores": self.out_dir / SCORES_DIR, "hits": self.out_dir / HITS_FILE,
                "multi-assay hits": self.out_dir / MULTI_ASSAY_FILE,
                "rejects": self.out_dir / REJECTS_FILE}

    def manifest(self) -> dict[str, Any]:
        return {key: value for key, value in self.__dict__.items()
                if key not in ("out_dir", "skipped_existing")}

    @classmethod
    def from_manifest(cls, out_dir: Path, manifest: dict[str, Any]) -> ScreeningResult:
        counts = dict(manifest["result"])
        counts["pictures"] = tuple(counts.get("pictures", ()))
        return cls(out_dir=out_dir, skipped_existing=True, **counts)


def screen_library(config: ScreeningConfig) -> ScreeningResult:
    """Score ``config.library`` with the registered model and rank hits.

    Re-running with the same model (by content), library (by content) and
    options finds the finished output and returns it without work; after a
    killed run it keeps the parts that run committed and scores the rest.
    """
    from pipelines.platform.tracking import resolve_tracking_uri

    started = time.perf_counter()
    phases = PhaseClock()
    tracking_uri = resolve_tracking_uri(config.tracking_uri)
    library = resolve_library(config.library, config.smiles_col, config.id_col)
    model = fetch_model(config.model_uri, tracking_uri)
    check_library_spec(library, model.spec)
    assays = list(config.assays) or list(model.tasks)
    model.assay_indices(assays)  # unknown assays fail before any work
    if config.max_spread is not None and model.ensemble is None:
        raise UserError(f"--max-spread needs an ensemble; {config.model_uri} is one network "
                        "(train --ensemble N)")
    identity = screening_identity(config, model.sha256, library_identity(library), assays)
    phases.lap("model and library")
    finished = check_out_dir(config.out_dir, identity, config.overwrite)
    if finished is not None:
        logger.info("%s already holds this screening: nothing to do", config.out_dir)
        return ScreeningResult.from_manifest(config.out_dir, finished)

    logger.info("screening %s with %s (%d assays)", library.describe(), config.model_uri, len(assays))
    # Kept when the run fails or is killed: the same command resumes from its parts.
    staged = StagedOutput(config.out_dir, identity)
    parts = ScoreParts(staged.path, scores_schema(assays, model.has_domain), config.rows_per_part)
    done = parts.committed()
    if len(done.rows):
        logger.info("resuming %s: %d library rows committed by an earlier run are kept",
                    config.out_dir, len(done.rows))
    with ray_session(config.address, config.num_cpus), quiet_ray_data():
        phases.lap("Ray start")
        streaming_started = time.perf_counter()
        dataset = scored_dataset(library, model, assays, config.resources, config.raw_scores, done,
                                 domain_scope=config.domain)
        counts = write_scores(
            dataset.iter_batches(batch_format="pyarrow", batch_size=None, prefetch_batches=2),
            assays, parts, expected_rows=library.rows, progress=config.progress,
            with_domain=model.has_domain, done=done)
        streaming_s = time.perf_counter() - streaming_started
        phases.lap("Ray Data pass")
        parts.merge_rejects(staged.path / REJECTS_FILE)
        phases.lap("rejects")
        # The structural alerts of the hits run as Ray tasks on the cluster's CPUs.
        hits = rank_hits(counts.score_files, assays, staged.path, top_k=config.top_k,
                         threshold=config.threshold, min_active_assays=config.min_active_assays,
                         exclude_alerts=config.exclude_alerts, alerts=AlertCache(match_on_ray),
                         nearest=hit_neighbours(model) if config.domain == "hits" else None,
                         spread=hit_spread(model, assays, config.max_spread, config.raw_scores))
        phases.lap("hit lists and alerts")
    phases.lap("Ray shutdown")
    pictures = draw_hit_pictures(pq.read_table(staged.path / HITS_FILE), staged.path,
                                 per_assay=config.assays)
    similarity, in_training_set = library_domain(counts.score_files) if model.has_domain else (None, None)
    sample = "" if config.domain == "all" else \
        f" (a seeded sample of 1 row in {SIMILARITY_SAMPLE_EVERY})"
    if similarity is not None:
        pictures.append(similarity_histogram_png(
            similarity, staged.path / SIMILARITY_PICTURE,
            title=f"similarity of the library to the training set{sample}"))
    phases.lap("pictures")
    logged_to = log_pictures(pictures, config.model_uri, tracking_uri,
                             f"screenings/{config.out_dir.name}-{identity_digest(identity)[:12]}")
    phases.lap("MLflow logging")
    result = ScreeningResult(
        out_dir=config.out_dir, model_uri=config.model_uri,
        library_rows=counts.library_rows, scored=counts.scored, rejected=counts.rejected,
        hits=hits.hits, multi_assay_hits=hits.multi_assay_hits,
        hits_with_alerts=hits.hits_with_alerts, excluded_for_alerts=hits.excluded_for_alerts,
        dropped_for_spread=hits.dropped_for_spread,
        pictures=tuple(path.name for path in pictures), pictures_logged_to=logged_to,
        similarity_histogram=None if similarity is None else similarity_histogram_text(
            similarity, title=f"library similarity to the training set{sample}"),
        in_training_set=in_training_set,
        elapsed_s=time.perf_counter() - started, streaming_s=streaming_s,
        featurize_seconds=counts.featurize_seconds, score_seconds=counts.score_seconds,
        resumed_rows=counts.resumed_rows, phase_seconds=phases.seconds,
        driver_cpu_seconds=phases.driver_cpu_seconds)
    staged.commit({"identity": identity, "result": result.manifest(),
                   "tracking_uri": tracking_uri, "library": str(library.path)})
    return result


class PhaseClock:
    """Wall seconds between successive :meth:`lap` calls, by phase name, and
    the CPU seconds this (driver) process spent in each: during the pass,
    what the driver takes from the workers' CPUs."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.driver_cpu_seconds: dict[str, float] = {}
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def lap(self, phase: str) -> None:
        now, cpu = time.perf_counter(), time.process_time()
        self.seconds[phase] = round(now - self._last, 3)
        self.driver_cpu_seconds[phase] = round(cpu - self._last_cpu, 3)
        self._last, self._last_cpu = now, cpu
        logger.info("screen: %s took %.1f s (driver CPU %.1f s)", phase, self.seconds[phase],
                    self.driver_cpu_seconds[phase])


def library_domain(score_files: list[Path]) -> tuple[np.ndarray, int]:
    """The ``nn_similarity`` of every scored molecule that has one (all with
    ``--domain all``, else the seeded sample; 4 bytes a molecule: 4 MB for
    a million) and how many scored molecules are training molecules
    (``in_training_set``, every row): one read of those two columns."""
    similarity, in_training_set = [np.empty(0, np.float32)], 0
    for path in score_files:
        table = pq.read_table(path, columns=[NN_SIMILARITY_COLUMN, IN_TRAINING_SET_COLUMN])
        similarity.append(table[NN_SIMILARITY_COLUMN].drop_null().to_numpy())
        in_training_set += pc.sum(table[IN_TRAINING_SET_COLUMN].cast(pa.int64())).as_py() or 0
    return np.concatenate(similarity), in_training_set


def hit_neighbours(model: ScreeningModel) -> Callable[[Sequence[str]], Neighbours] | None:
    """The nearest training molecule of hit SMILES, searched here after the
    pass (``--domain hits``); None for a model without its training domain."""
    if model.domain is None:
        return None
    return functools.partial(neighbours_of_smiles, spec=model.spec, domain=model.domain)


def hit_spread(model: ScreeningModel, assays: list[str], limit: float | None,
               raw_scores: bool = False) -> HitSpread | None:
    """An ensemble's spread of its hits' scores on ``assays`` (in the units
    of the scores: raw with ``raw_scores``), computed here after the pass (a
    hit list is small; the score files stay one column an assay); None for
    one network."""
    if model.ensemble is None:
        return None
    return HitSpread(functools.partial(spread_of_smiles, model.ensemble, model.assay_indices(assays),
                                       raw_scores=raw_scores), len(assays), limit)


def spread_of_smiles(scorer: Scorer, columns: list[int], smiles: Sequence[str],
                     raw_scores: bool = False) -> np.ndarray:
    """The ensemble's spread of each SMILES' score on ``columns``, float32
    [n, columns] (NaN rows where a SMILES does not featurize)."""
    fp, errors = scorer.featurize_smiles(smiles)
    out = np.full((len(smiles), len(columns)), np.nan, np.float32)
    ok = np.array([error is None for error in errors], dtype=bool)
    if ok.any():
        out[ok] = scorer.score_packed_with_spread(fp, raw_scores)[1][:, columns]
    return out


def log_pictures(pictures: list[Path], model_uri: str, tracking_uri: str,
                 artifact_dir: str) -> str | None:
    """Log the pictures as artifacts of the run that logged the model, so the
    screenings of a model sit beside its training; return where
    (``runs:/<run_id>/<artifact_dir>``), None when the model has no run. A
    tracking failure is a warning: the pictures are in the output folder."""
    from mlflow.exceptions import MlflowException

    from pipelines.platform.tracking import log_files

    if not pictures:
        return None
    try:
        run_id = source_run_id(model_uri, tracking_uri)
        if run_id is None:
            logger.info("%s comes from no MLflow run: pictures not logged", model_uri)
            return None
        log_files(tracking_uri, run_id, pictures, artifact_dir)
    except (MlflowException, OSError) as error:  # the registry, or the run's artifact store
        logger.warning("could not log the hit pictures of %s to MLflow at %s: %s",
                       model_uri, tracking_uri, (str(error) or type(error).__name__).splitlines()[0])
        return None
    return f"runs:/{run_id}/{artifact_dir}"


def screening_identity(config: ScreeningConfig, model_sha256: str, library: dict[str, Any],
                       assays: list[str]) -> dict[str, Any]:
    """What makes two screenings the same: the model and library (by
    content) and every option that changes the output files."""
    return {
        "model_sha256": model_sha256, "library": library,
        "assays": assays, "top_k": config.top_k, "threshold": config.threshold,
        "min_active_assays": config.min_active_assays, "exclude_alerts": config.exclude_alerts,
        "smiles_col": config.smiles_col, "id_col": config.id_col,
        "raw_scores": config.raw_scores, "domain": config.domain,
        # Only when set: screenings from before the option keep their identity.
        **({"max_spread": config.max_spread} if config.max_spread is not None else {}),
    }


def library_identity(library: ScreeningLibrary) -> dict[str, Any]:
    """What makes two screenings of a library the same: its bytes."""
    if library.source is not None:
        return library.source.identity()
    return {"fingerprint_files": [{"name": path.name, "size": path.stat().st_size,
                                   "sha256": file_sha256(path)}
                                  for path in library.fingerprint_files]}


@contextlib.contextmanager
def ray_session(address: str | None, num_cpus: int | None) -> Iterator[None]:
    """Use the Ray this process already joined, else join ``address`` (or
    RAY_ADDRESS), else start a private local one; shut down what was
    started here."""
    import ray

    from pipelines.platform.ray_setup import connect_ray

    if ray.is_initialized():
        yield
        return
    connect_ray(address or os.environ.get("RAY_ADDRESS"), num_cpus)
    try:
        yield
    finally:
        ray.shutdown()


@contextlib.contextmanager
def quiet_ray_data() -> Iterator[None]:
    """Ray Data settings for this run, restored afterwards: our own tqdm bar
    instead of per-operator bars, and small blocks. Ray merges what a read
    task yields into blocks of up to ``target_max_block_size`` (128 MiB by
    default: a whole SMILES library), and one block goes to one actor; at
    256 KiB every 4,096-row batch of SMILES is a block of its own, so the
    actors share the work and hold few molecules at a time."""
    import ray.data

    context = ray.data.DataContext.get_current()
    saved = context.enable_progress_bars, context.target_max_block_size
    context.enable_progress_bars = False
    context.target_max_block_size = BLOCK_BYTES
    try:
        yield
    finally:
        context.enable_progress_bars, context.target_max_block_size = saved
