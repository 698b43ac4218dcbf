"""The whole pipeline in one go (`python -m pipelines run`): data -> featurize
-> train on Ray Train (MLflow, registry) -> screen with the registered model.

Every stage calls the same library code as its own job, and every stage can
be skipped on a re-run: featurization and screening recognise their finished
outputs themselves; the panel, the training and the screening library record
what they were made from in ``OUT/stages/<stage>.json`` and are skipped when
that record, and what it points to, is still there.
"""
from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from featurize.publishing import jsonable, staged_file
from pipelines.errors import UserError
from pipelines.names import CHAMPION_ALIAS, CHAMPION_URI, DEFAULT_MODEL_NAME

if TYPE_CHECKING:
    from pipelines.training.config import TrainConfig

logger = logging.getLogger(__name__)

@dataclass(frozen=True)
class RunSettings:
    """The end-to-end run's own knobs (data, featurization, screening, and
    the epoch budget that fits the run in 5 minutes on 2 CPU cores).

    train: the model, step and training options (pipelines/options.py keys,
    e.g. ``{"experts": 4}``); what it leaves out takes the configs' own
    defaults, the same as ``train`` would.
    """

    out: Path = Path("runs/e2e")
    molecules: int = 20_000  # panel molecules (offline default)
    tasks: int = 128
    library_size: int = 50_000  # generated molecules to screen
    epochs: int = 3
    pcba: bool = False  # download the real PCBA-128 instead of the panel
    pcba_path: Path | None = None  # a local copy of pcba.csv.gz
    bits: int = 2048
    top_k: int = 100
    seed: int = 0
    tracking_uri: str | None = None  # default: sqlite under OUT
    address: str | None = None
    num_cpus: int | None = None
    train: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "out", Path(self.out))
        if self.pcba_path is not None:
            object.__setattr__(self, "pcba_path", Path(self.pcba_path))
        small = [name for name in ("molecules", "tasks", "library_size", "epochs", "top_k")
                 if getattr(self, name) < 1]
        if small:
            raise UserError(f"run settings must be >= 1: {', '.join(small)}")
        if self.pcba and self.pcba_path is not None:
            raise UserError("give --pcba (download) or --pcba-path (a local copy), not both")

    @property
    def data_source(self) -> str:
        if self.pcba_path is not None:
            return f"pcba file {self.pcba_path}"
        return "pcba download" if self.pcba else "offline panel"


@dataclass
class StageReport:
    """One line of the final summary."""

    stage: str
    status: str  # "done" or "skipped (already done)"
    seconds: float
    result: str
    where: str


@dataclass
class RunReport:
    settings: RunSettings
    tracking_uri: str
    stages: list[StageReport] = field(default_factory=list)

    @property
    def mlflow_ui(self) -> str:
        return f"mlflow ui --backend-store-uri {self.tracking_uri}"


class StageRecords:
    """``OUT/stages/<stage>.json``: what a finished stage was made from."""

    def __init__(self, out: Path):
        self.folder = out / "stages"

    def finished(self, stage: str, inputs: Mapping[str, Any]) -> dict[str, Any] | None:
        path = self.folder / f"{stage}.json"
        if not path.is_file():
            return None
        record = json.loads(path.read_text())
        return record if record.get("inputs") == jsonable(inputs) else None

    def save(self, stage: str, inputs: Mapping[str, Any], outputs: Mapping[str, Any]) -> None:
        with staged_file(self.folder / f"{stage}.json") as temporary:
            temporary.write_text(json.dumps({"inputs": jsonable(inputs), "outputs": jsonable(outputs)},
                                            indent=2))


def run_pipeline(settings: RunSettings) -> RunReport:
    """Run every stage (skipping finished ones) and report where results are."""
    from pipelines.platform.ray_setup import connect_ray
    from pipelines.platform.tracking import resolve_tracking_uri

    out = settings.out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    tracking_uri = resolve_tracking_uri(settings.tracking_uri or f"sqlite:///{out / 'mlflow.db'}")
    # One store for every stage and every process this run starts (Ray
    # workers inherit the environment of the Ray started below).
    os.environ["MLFLOW_TRACKING_URI"] = tracking_uri
    report = RunReport(settings, tracking_uri)
    records = StageRecords(out)

    import ray

    started_ray = not ray.is_initialized()
    connect_ray(settings.address, settings.num_cpus)
    try:
        source = _timed(report, "data", lambda: _data_stage(settings, out, records))
        dataset = _timed(report, "featurize", lambda: _featurize_stage(settings, out, source))
        _timed(report, "train + register", lambda: _train_stage(settings, out, dataset, tracking_uri, records))
        library = _timed(report, "library", lambda: _library_stage(settings, out, records))
        _timed(report, "screen", lambda: _screen_stage(settings, out, library, tracking_uri))
    finally:
        if started_ray:
            ray.shutdown()
    return report


def _timed(report: RunReport, stage: str, work: Callable[[], tuple[Any, StageReport]]) -> Any:
    started = time.perf_counter()
    logger.info("stage %s", stage)
    value, line = work()
    line.stage, line.seconds = stage, time.perf_counter() - started
    report.stages.append(line)
    return value


def _line(skipped: bool, result: str, where: Path | str) -> StageReport:
    return StageReport("", "skipped (already done)" if skipped else "done", 0.0, result, str(where))


# -- stages ------------------------------------------------------------------------------
def _data_stage(settings: RunSettings, out: Path, records: StageRecords):
    """The labelled input: the offline panel (with bad rows), or PCBA-128."""
    from featurize.sources.pcba import fetch_pcba, pcba_source
    from featurize.synthetic.panel import write_panel_csv

    if settings.pcba_path is not None or settings.pcba:
        path = settings.pcba_path or fetch_pcba()
        return pcba_source(path), _line(False, "PCBA-128 (MoleculeNet), checked", path)
    inputs = {"molecules": settings.molecules, "tasks": settings.tasks, "seed": settings.seed}
    path = out / "panel.csv"
    done = records.finished("panel", inputs)
    if done is None or not path.is_file():
        panel = write_panel_csv(path, settings.molecules, n_tasks=settings.tasks, seed=settings.seed)
        done = {"outputs": {"molecules": panel.n_molecules, "bad_rows": panel.n_bad_rows}}
        records.save("panel", inputs, done["outputs"])
        skipped = False
    else:
        skipped = True
    result = (f"{done['outputs']['molecules']:,} molecules x {settings.tasks} assays "
              f"+ {done['outputs']['bad_rows']} bad rows")
    return path, _line(skipped, result, path)


def _featurize_stage(settings: RunSettings, out: Path, source):
    from featurize.pipeline import featurize_file
    from featurize.spec import FingerprintSpec

    # The panel CSV carries its own ids (one bad row repeats an id); a PCBA
    # source knows its id column already.
    summary = featurize_file(source, out / "features", spec=FingerprintSpec(n_bits=settings.bits),
                             id_col="mol_id", split="random", seed=settings.seed, progress=True)
    splits = ", ".join(f"{name} {count:,}" for name, count in summary.split_counts.items())
    result = f"{summary.accepted:,} accepted ({splits}), {summary.rejected:,} rejected"
    return out / "features", _line(summary.skipped_existing, result, summary.out_dir)


def _train_stage(settings: RunSettings, out: Path, dataset: Path, tracking_uri: str,
                 records: StageRecords):
    from featurize.dataset import read_dataset_info
    from pipelines.options import build_train_config
    from pipelines.serving.registry import get_alias_version
    from pipelines.training.trainer import run_training

    info = read_dataset_info(dataset)
    config = build_train_config(settings.train, data_dir=str(dataset), epochs=settings.epochs,
                                seed=settings.seed, run_name=f"e2e-{info.metadata_hash}",
                                storage_path=str(out / "ray"), tracking_uri=tracking_uri)
    inputs = {"config": config.to_dict(), "data": info.metadata_hash, "rows": info.accepted,
              "tracking_uri": tracking_uri}
    done = records.finished("train", inputs)
    champion = get_alias_version(DEFAULT_MODEL_NAME, CHAMPION_ALIAS, tracking_uri=tracking_uri)
    if done and champion is not None and int(champion.version) == done["outputs"]["version"]:
        return None, _line(True, _train_result(config, done["outputs"]),
                           CHAMPION_URI)
    trained = run_training(config, register_name=DEFAULT_MODEL_NAME, alias=CHAMPION_ALIAS)
    outputs = {
        "version": trained.registered_version, "run_id": trained.mlflow_run_id,
        "epochs": trained.epochs_completed,
        "test_mean_ap": trained.test.mean_ap if trained.test else None,
        "test_mean_roc_auc": trained.test.mean_roc_auc if trained.test else None,
    }
    records.save("train", inputs, outputs)
    return None, _line(False, _train_result(config, outputs), CHAMPION_URI)


def _train_result(config: TrainConfig, outputs: Mapping[str, Any]) -> str:
    metrics = ""
    if outputs.get("test_mean_ap") is not None:
        metrics = (f", test mean AP {outputs['test_mean_ap']:.3f}"
                   f" / ROC-AUC {outputs['test_mean_roc_auc']:.3f}")
    return (f"{config.model.architecture} + {config.step.optimizer}, {outputs['epochs']} epochs{metrics}; "
            f"registered v{outputs['version']} @{CHAMPION_ALIAS} (run {outputs['run_id'][:8]})")


def _library_stage(settings: RunSettings, out: Path, records: StageRecords):
    """A generated, unlabeled screening library (streamed to CSV)."""
    from featurize.synthetic.library import generate_library

    inputs = {"library_size": settings.library_size, "seed": settings.seed}
    path = out / "library.csv"
    if records.finished("library", inputs) and path.is_file():
        return path, _line(True, f"{settings.library_size:,} generated molecules", path)
    with staged_file(path) as temporary, temporary.open("w") as handle:
        handle.write("smiles,mol_id\n")
        for index, smiles in enumerate(generate_library(settings.library_size, settings.seed), 1):
            handle.write(f"{smiles},lib-{index:07d}\n")
    records.save("library", inputs, {"rows": settings.library_size})
    return path, _line(False, f"{settings.library_size:,} generated molecules", path)


def _screen_stage(settings: RunSettings, out: Path, library: Path, tracking_uri: str):
    from pipelines.screening import ScreeningConfig, screen_library

    result = screen_library(ScreeningConfig(
        model_uri=CHAMPION_URI, library=library, out_dir=out / "screen",
        tracking_uri=tracking_uri, id_col="mol_id", top_k=settings.top_k, overwrite=True))
    summary = (f"{result.scored:,} scored, {result.rejected:,} rejected, "
               f"{result.molecules_per_second:,.0f} mol/s; {result.hits:,} top-{settings.top_k} hits, "
               f"{result.multi_assay_hits:,} multi-assay")
    return result, _line(result.skipped_existing, summary, result.out_dir)
