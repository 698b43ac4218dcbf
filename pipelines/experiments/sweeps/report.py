"""The sweep's trials as a table (summary and MLflow CSV) and as a figure
(the parent run's PNG: the optimizer step, alpha, E and inner lr against
validation AP)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from tuning.selection import EARLY_STOPPED, ERROR, FINISHED, NOT_RUN, TrialOutcome

_STATUS_STYLE = {FINISHED: ("tab:blue", "o"), EARLY_STOPPED: ("tab:orange", "x"),
                 ERROR: ("tab:red", "s"), NOT_RUN: ("tab:gray", ".")}


def trial_rows(trials: Sequence[TrialOutcome], best_trial_id: str | None = None) -> list[dict[str, Any]]:
    """One row per trial: its searched values, epochs run, best valid AP and status."""
    rows = []
    for trial in trials:
        params = trial.params
        rows.append({
            "trial": trial.trial_id + (" *" if trial.trial_id == best_trial_id else ""),
            "step": params.get("optimizer"),
            "alpha": _significant(params.get("alpha")),
            "E": params.get("n_experts"),
            "inner lr": _significant(params.get("inner_lr")),
            "lr": _significant(params.get("lr")),
            "width": params.get("expert_width"),
            "pos weight": params.get("pos_weight"),
            "gate lr x": _significant(params.get("gate_lr_scale")),
            "epochs": trial.epochs,
            "valid AP": None if math.isnan(trial.best_valid_mean_ap) else round(trial.best_valid_mean_ap, 4),
            "status": trial.status,
        })
    return rows


def trials_figure(trials: Sequence[TrialOutcome]) -> Any:
    """Four panels sharing the y axis (best valid mean AP): the optimizer
    step, alpha (alpha = 0 is plain MMoE), E and the inner learning rate
    (log scale; MAML-MTL trials only); colour and marker show whether the
    trial finished or was stopped by ASHA."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    figure, axes = plt.subplots(1, 4, figsize=(15, 3.8), sharey=True, dpi=110)
    figure.set_layout_engine("tight")
    panels = (("optimizer", "optimizer step", False), ("alpha", "alpha (share of exclusive experts)", False),
              ("n_experts", "E (experts)", False), ("inner_lr", "inner lr beta", True))
    scored = [trial for trial in trials if not math.isnan(trial.best_valid_mean_ap)]
    for axis, (key, label, log_scale) in zip(axes, panels):
        for status, (colour, marker) in _STATUS_STYLE.items():
            points = [(trial.params[key], trial.best_valid_mean_ap) for trial in scored
                      if trial.status == status and key in trial.params]
            if points:
                axis.scatter(*zip(*points), c=colour, marker=marker, label=status, alpha=0.8)
        axis.set_xlabel(label)
        if log_scale:
            axis.set_xscale("log")
            axis.xaxis.set_minor_formatter(NullFormatter())
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("best valid mean AP")
    axes[0].legend(fontsize=8)
    figure.suptitle(f"sweep: {len(trials)} trials")
    return figure


def _significant(value: Any) -> Any:
    """Three significant digits (learning rates span decades)."""
    return float(f"{value:.3g}") if isinstance(value, float) else value
