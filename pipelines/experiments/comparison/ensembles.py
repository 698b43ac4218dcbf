"""Deep ensembles of a comparison's runs (``compare --ensembles N ...``).

Each row's best-validation networks (kept by ``--checkpoint-dir``) are
stacked N at a time, seeds in consecutive blocks (seeds 0-4, 5-9, ... for
N = 5: the members ``train --ensemble 5 --seed 0`` would train), the
ensemble's mean probability calibrated on the valid split as a trained
ensemble's is, and scored once on the test split with its spread report
(models/metrics.py ``evaluate_spread``). The table says what averaging buys
over the members themselves, and whether the spread tells right hits from
wrong ones.
"""
from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from featurize.dataset import DatasetInfo
from models.ensemble import Ensemble
from models.factory import build_model
from models.metrics import SpreadReport
from pipelines.experiments.comparison.checkpoints import RunCheckpoints, read_progress
from pipelines.experiments.comparison.outcome import RunOutcome
from pipelines.training.evaluation import FinalEvaluation
from pipelines.training.run_end import calibrate_and_test


@dataclass(frozen=True)
class EnsembleOutcome:
    """One ensemble of a row's runs: its members' seeds, their own test
    PR-AUCs, and the ensemble's test evaluation (spread report included
    for N > 1)."""

    configuration: str
    seeds: tuple[int, ...]
    members_ap: tuple[float, ...]
    evaluation: FinalEvaluation


def ensemble_outcomes(info: DatasetInfo, outcomes: Sequence[RunOutcome], sizes: Sequence[int],
                      checkpoint_dir: str | Path) -> list[EnsembleOutcome]:
    """Every ensemble of ``sizes`` members that each row's seeds make up
    (consecutive blocks; seeds left over are not used for that size)."""
    checkpoints = RunCheckpoints(checkpoint_dir)
    rows: dict[str, list[RunOutcome]] = {}
    for outcome in outcomes:
        rows.setdefault(outcome.configuration, []).append(outcome)
    ensembles = []
    for name, runs in rows.items():
        runs = sorted(runs, key=lambda run: run.seed)
        for size in sizes:
            for start in range(0, len(runs) - size + 1, size):
                members = runs[start:start + size]
                ensembles.append(_evaluate(info, name, members, checkpoints))
    return ensembles


def _evaluate(info: DatasetInfo, name: str, members: Sequence[RunOutcome],
              checkpoints: RunCheckpoints) -> EnsembleOutcome:
    networks = []
    for run in members:
        best = read_progress(checkpoints.path(name, run.seed)).best_state_dict
        if best is None:
            raise ValueError(f"{checkpoints.path(name, run.seed)} holds no best weights")
        network = build_model(run.config.model)
        network.load_state_dict(best)
        networks.append(network.eval())
    _, evaluation = calibrate_and_test(Ensemble(networks), info, with_domain=False)
    return EnsembleOutcome(configuration=name, seeds=tuple(run.seed for run in members),
                           members_ap=tuple(run.evaluation.metrics.mean_ap for run in members),
                           evaluation=evaluation)


def ensemble_rows(ensembles: Sequence[EnsembleOutcome]) -> list[dict[str, object]]:
    """The table: one row per (configuration, N), means +- std over its
    ensembles (repeats); PR-AUC, ROC-AUC, EF1% of the mean probability, ECE
    of the calibrated one, the members' own mean PR-AUC and the gain over
    it, and for N > 1 the spread report's means."""
    groups: dict[tuple[str, int], list[EnsembleOutcome]] = {}
    for ensemble in ensembles:
        groups.setdefault((ensemble.configuration, len(ensemble.seeds)), []).append(ensemble)
    rows = []
    for (name, size), group in groups.items():
        tests = [ensemble.evaluation.metrics for ensemble in group]
        members = [float(np.mean(ensemble.members_ap)) for ensemble in group]
        row: dict[str, object] = {
            "configuration": name, "members": size, "repeats": len(group),
            "seeds": (f"{group[0].seeds[0]}-{group[-1].seeds[0]}, one each" if size == 1 and len(group) > 1
                      else "; ".join(_seed_range(ensemble.seeds) for ensemble in group)),
            "test PR-AUC": _pm([test.mean_ap for test in tests]),
            "members' PR-AUC": _pm(members),
            "gain": "" if size == 1 else _pm([test.mean_ap - member for test, member in zip(tests, members)]),
            "test ROC-AUC": _pm([test.mean_roc_auc for test in tests]),
            "test EF1%": _pm([test.mean_ef1 for test in tests], digits=1),
            "test ECE (calibrated)": _pm([ensemble.evaluation.calibration.calibrated.mean_ece
                                          for ensemble in group]),
        }
        reports = [ensemble.evaluation.spread for ensemble in group if ensemble.evaluation.spread]
        row.update(_spread_columns(reports))
        rows.append(row)
    return rows


def _spread_columns(reports: Sequence[SpreadReport]) -> dict[str, object]:
    """Top-1 % precision overall, in the lowest and the highest quartile of
    spread and of excess spread (its trend with the score removed), and
    Spearman(spread, |error|) over all labels and over the top 1 %: means
    over assays, then over repeats ("" for single networks)."""
    names = {"top 1% precision": "top_precision", "low-spread quartile": "top_precision_low_spread",
             "high-spread quartile": "top_precision_high_spread",
             "low excess-spread quartile": "top_precision_low_excess",
             "high excess-spread quartile": "top_precision_high_excess",
             "Spearman(spread, error)": "spearman_error", "Spearman in the top 1%": "spearman_error_top"}
    if not reports:
        return dict.fromkeys(names, "")
    return {column: _pm([report.means()[key] for report in reports]) for column, key in names.items()}


def per_assay_spread_rows(ensemble: EnsembleOutcome, tasks: list[str]) -> list[dict[str, object]]:
    """The spread report of one ensemble, assay by assay (its CSV)."""
    if ensemble.evaluation.spread is None:
        raise ValueError("a single network has no spread report")
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in row.items()}
            for row in ensemble.evaluation.spread.rows(tasks)]


def rows_csv(rows: Sequence[dict[str, object]]) -> str:
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _seed_range(seeds: Sequence[int]) -> str:
    return str(seeds[0]) if len(seeds) == 1 else f"{seeds[0]}-{seeds[-1]}"


def _pm(values: Sequence[float], digits: int = 4) -> str:
    """mean +- std (sample std, over repeats) as text; the mean alone for one."""
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values):.{digits}f}"
