"""Per-assay probability calibration: fitted on the validation split at the
end of training, stored in the model bundle as ``calibration.json``, applied
by the scorer.

Why: training weights each task's actives by ``neg / pos`` (capped at 100),
which moves every logit up by about the log of that weight, so raw
probabilities are far above the real active rate (an assay with 1 % actives
scores its typical molecule near 0.5). A monotone map per assay brings them
back to observed frequencies: a probability threshold and an expected number
of actives in a hit list then mean what they say.

Three maps, chosen per assay from the labels it has in the fitting split:

- ``isotonic``: pool-adjacent-violators on (raw probability, label), applied
  by linear interpolation between the fitted steps (scikit-learn's
  ``IsotonicRegression(out_of_bounds="clip")``). Needs no shape assumption,
  but its steps are fitted from few actives each and tie the molecules of a
  step, so only where the split has at least :data:`ISOTONIC_MIN_CLASS`
  actives and as many inactives.
- ``platt``: ``p' = sigmoid(a * logit(p) + b)`` (Platt 1999), fitted by
  Newton's method on Platt's smoothed targets (``(N+ + 1) / (N+ + 2)`` and
  ``1 / (N- + 2)``, so a separable or tiny task has a finite optimum) with a
  ridge pulling ``a`` towards 1: a class weight ``w`` shifts logits by about
  ``log w``, so ``a = 1, b = -log w`` is the expected answer and a task with
  a handful of actives stays close to a pure shift. ``a`` is kept positive,
  so the map never reverses an assay's ranking.
- ``identity``: the raw probability, for an assay whose labels in the split
  are all one class (or missing): there is no positive/negative contrast to
  fit, and a map from one class would be a guess.

Platt and identity keep every ranking (AP, ROC-AUC, EF, hit lists) as it is;
isotonic maps a run of raw scores to one value, so ties can appear there.
Applying a map needs numpy only: this module ships with the registered model.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

CALIBRATION_FILE = "calibration.json"
FORMAT_VERSION = 1
#: Actives (and inactives) a task needs in the fitting split for isotonic
#: regression; below it, Platt scaling. On the real PCBA subset (valid
#: splits of up to 1,250 actives) isotonic maps fitted from 100 actives or
#: more had the Platt maps' test ECE but a worse Brier score in every band
#: of active counts, and their ties cost test AP (0.35 -> 0.33 on the tasks
#: with 200+ actives; docs/jobs/train.md, "Calibrated scores"). So isotonic is kept for
#: assays larger than any measured there (the full PCBA's biggest).
ISOTONIC_MIN_CLASS = 2000
#: Ridge strength on ``(a - 1)^2`` in the Platt fit, in units of one label's
#: log-loss curvature: negligible for a task with thousands of labels.
PLATT_RIDGE = 1.0
#: Smallest slope a Platt map may have (keeps the map increasing).
PLATT_MIN_SLOPE = 1e-3
#: Raw probabilities are clipped to [EPS, 1 - EPS] before the logit (a
#: float32 sigmoid rounds to exactly 0 or 1 past |logit| ~ 17).
EPS = 1e-7
Method = Literal["auto", "platt", "isotonic"]


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), EPS, 1.0 - EPS)
    return np.log(p) - np.log1p(-p)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return np.exp(-np.logaddexp(0.0, -z))


@dataclass(frozen=True)
class PlattMap:
    """``p' = sigmoid(a * logit(p) + b)``."""

    a: float
    b: float
    method: str = field(default="platt", init=False)

    def apply(self, p: np.ndarray) -> np.ndarray:
        return _sigmoid(self.a * _logit(p) + self.b)

    def params(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b}


@dataclass(frozen=True)
class IsotonicMap:
    """A non-decreasing step function through the knots ``(x, y)``, linear
    between knots and constant outside them."""

    x: tuple[float, ...]
    y: tuple[float, ...]
    method: str = field(default="isotonic", init=False)

    def __post_init__(self) -> None:
        x, y = np.asarray(self.x), np.asarray(self.y)
        if x.size == 0 or x.shape != y.shape or np.any(np.diff(x) < 0) or np.any(np.diff(y) < 0):
            raise ValueError("an isotonic map needs as many x as y knots, both non-decreasing")

    def apply(self, p: np.ndarray) -> np.ndarray:
        return np.interp(np.asarray(p, dtype=np.float64), self.x, self.y)

    def params(self) -> dict[str, Any]:
        return {"x": list(self.x), "y": list(self.y)}


@dataclass(frozen=True)
class IdentityMap:
    """The raw probability (``reason`` says why nothing was fitted)."""

    reason: str
    method: str = field(default="identity", init=False)

    def apply(self, p: np.ndarray) -> np.ndarray:
        return np.asarray(p, dtype=np.float64)

    def params(self) -> dict[str, Any]:
        return {"reason": self.reason}


TaskMap = PlattMap | IsotonicMap | IdentityMap
_MAPS: dict[str, type[PlattMap] | type[IsotonicMap] | type[IdentityMap]] = {
    "platt": PlattMap, "isotonic": IsotonicMap, "identity": IdentityMap}


@dataclass(frozen=True)
class TaskCalibration:
    """One assay's map and the labels it was fitted on."""

    map: TaskMap
    n_labels: int
    n_positives: int


@dataclass(frozen=True)
class Calibration:
    """One map per task, in the model's output column order."""

    tasks: list[str]
    maps: list[TaskCalibration]
    split: str = "valid"  # the split the maps were fitted on

    def __post_init__(self) -> None:
        if len(self.tasks) != len(self.maps):
            raise ValueError(f"{len(self.maps)} calibration maps for {len(self.tasks)} tasks")

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated ``float32[N, K]`` probabilities of raw ``[N, K]`` ones."""
        probs = np.asarray(probs)
        if probs.ndim != 2 or probs.shape[1] != len(self.tasks):
            raise ValueError(f"expected probabilities [N, {len(self.tasks)}], got {list(probs.shape)}")
        out = np.empty(probs.shape, dtype=np.float32)
        for column, task in enumerate(self.maps):
            out[:, column] = task.map.apply(probs[:, column])
        return out

    def method_counts(self) -> dict[str, int]:
        """How many tasks got each method (for logs and summaries)."""
        counts = dict.fromkeys(_MAPS, 0)
        for task in self.maps:
            counts[task.map.method] += 1
        return counts

    def rows(self) -> list[dict[str, object]]:
        """One row per task: its method and the labels it was fitted on."""
        return [{"task": name, "method": task.map.method, f"{self.split}_labels": task.n_labels,
                 f"{self.split}_positives": task.n_positives}
                for name, task in zip(self.tasks, self.maps)]

    def to_json(self) -> str:
        return json.dumps({
            "format": FORMAT_VERSION, "split": self.split,
            "tasks": [{"task": name, "method": task.map.method, "n_labels": task.n_labels,
                       "n_positives": task.n_positives, **task.map.params()}
                      for name, task in zip(self.tasks, self.maps)],
        }, indent=1)

    @classmethod
    def from_json(cls, text: str) -> Calibration:
        data = json.loads(text)
        if data.get("format") != FORMAT_VERSION:
            raise ValueError(f"calibration format {data.get('format')!r} is not "
                             f"{FORMAT_VERSION}, the one this code reads")
        tasks, maps = [], []
        for entry in data["tasks"]:
            method = entry["method"]
            if method not in _MAPS:
                raise ValueError(f"task {entry['task']!r}: unknown calibration method {method!r}")
            params = {key: entry[key] for key in _MAPS[method].__dataclass_fields__
                      if key != "method"}
            if method == "isotonic":
                params = {key: tuple(float(value) for value in values) for key, values in params.items()}
            tasks.append(entry["task"])
            maps.append(TaskCalibration(_MAPS[method](**params), int(entry["n_labels"]),
                                        int(entry["n_positives"])))
        return cls(tasks=tasks, maps=maps, split=data["split"])

    def save(self, directory: str | os.PathLike[str]) -> Path:
        path = Path(directory) / CALIBRATION_FILE
        path.write_text(self.to_json())
        return path

    @classmethod
    def load(cls, directory: str | os.PathLike[str]) -> Calibration | None:
        """The calibration saved in ``directory``, None when it has none
        (a bundle saved before calibration existed, which scores raw)."""
        path = Path(directory) / CALIBRATION_FILE
        if not path.is_file():
            return None
        try:
            return cls.from_json(path.read_text())
        except (ValueError, KeyError, TypeError) as error:
            raise ValueError(f"{path}: not a readable calibration: {error}") from error


# -- fitting ------------------------------------------------------------------------
def fit_platt(p: np.ndarray, y: np.ndarray, ridge: float = PLATT_RIDGE,
              max_iter: int = 100, tol: float = 1e-10) -> PlattMap:
    """Platt scaling of raw probabilities ``p`` to 0/1 labels ``y`` (both
    classes present, or the smoothed targets still give a finite fit):
    Newton's method with a backtracking line search (Lin, Lin and Weng 2007)
    on the penalised log-loss."""
    z, y = _logit(p), np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    target = np.where(y, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

    def loss(a: float, b: float) -> float:
        f = a * z + b
        return float(np.sum(np.logaddexp(0.0, f) - target * f) + 0.5 * ridge * (a - 1.0) ** 2)

    a, b = 1.0, float(np.log((n_pos + 1.0) / (n_neg + 1.0)) - np.mean(z))
    current = loss(a, b)
    for _ in range(max_iter):
        q = _sigmoid(a * z + b)
        residual, weight = q - target, q * (1.0 - q)
        gradient = np.array([residual @ z + ridge * (a - 1.0), residual.sum()])
        hessian = np.array([[weight @ (z * z) + ridge, weight @ z], [weight @ z, weight.sum()]])
        step = np.linalg.solve(hessian + 1e-12 * np.eye(2), gradient)
        scale = 1.0
        while scale > 1e-10:
            trial_a, trial_b = a - scale * step[0], b - scale * step[1]
            trial = loss(trial_a, trial_b)
            if trial <= current + 1e-4 * scale * float(gradient @ -step):
                break
            scale /= 2.0
        else:
            break  # no descent left: at the optimum to float precision
        a, b, previous, current = trial_a, trial_b, current, trial
        if abs(previous - current) <= tol * max(1.0, abs(current)):
            break
    if a < PLATT_MIN_SLOPE:
        # No positive association on this split: keep the order, fit the
        # intercept alone at the smallest slope.
        a = PLATT_MIN_SLOPE
        b = float(_logit(np.array([target.mean()]))[0] - a * np.mean(z))
    return PlattMap(a=float(a), b=float(b))


def pool_adjacent_violators(y: np.ndarray, weight: np.ndarray) -> np.ndarray:
    """The non-decreasing sequence closest to ``y`` in weighted least squares
    (``y`` ordered by the score it is regressed on)."""
    values: list[float] = []
    weights: list[float] = []
    sizes: list[int] = []
    for value, w in zip(np.asarray(y, np.float64), np.asarray(weight, np.float64)):
        values.append(value)
        weights.append(w)
        sizes.append(1)
        while len(values) > 1 and values[-2] >= values[-1]:
            # Merge the last block into the one before it (weighted mean).
            value, w, size = values.pop(), weights.pop(), sizes.pop()
            values[-1] = (values[-1] * weights[-1] + value * w) / (weights[-1] + w)
            weights[-1] += w
            sizes[-1] += size
    return np.repeat(values, sizes)


def fit_isotonic(p: np.ndarray, y: np.ndarray) -> IsotonicMap:
    """Isotonic regression of 0/1 labels ``y`` on raw probabilities ``p``:
    tied scores are pooled first (mean label, weighted by count), then PAV;
    the knots kept are the ends of each constant run, which is all linear
    interpolation needs."""
    p = np.asarray(p, dtype=np.float64)
    x, inverse, counts = np.unique(p, return_inverse=True, return_counts=True)
    sums = np.bincount(inverse, weights=np.asarray(y, dtype=np.float64), minlength=x.size)
    fitted = pool_adjacent_violators(sums / counts, counts.astype(np.float64))
    keep = np.ones(x.size, dtype=bool)
    # An interior knot equal to both neighbours changes no interpolated value.
    keep[1:-1] = (fitted[1:-1] != fitted[:-2]) | (fitted[1:-1] != fitted[2:])
    return IsotonicMap(x=tuple(x[keep].tolist()), y=tuple(fitted[keep].tolist()))


def fit_task(p: np.ndarray, y: np.ndarray, method: Method = "auto",
             isotonic_min_class: int = ISOTONIC_MIN_CLASS) -> TaskCalibration:
    """One task's map from its present raw probabilities and 0/1 labels."""
    y = np.asarray(y, dtype=bool)
    n_pos = int(y.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        reason = "no labels" if y.size == 0 else \
            f"all {y.size} labels {'active' if n_neg == 0 else 'inactive'}"
        task_map: TaskMap = IdentityMap(reason=reason)
    elif method == "isotonic" or (method == "auto" and min(n_pos, n_neg) >= isotonic_min_class):
        task_map = fit_isotonic(p, y)
    elif method in ("platt", "auto"):
        task_map = fit_platt(p, y)
    else:
        raise ValueError(f"unknown calibration method {method!r} (auto, platt or isotonic)")
    return TaskCalibration(task_map, n_labels=int(y.size), n_positives=n_pos)


def members_spread(members: np.ndarray, calibration: Calibration | None) -> np.ndarray:
    """The standard deviation over an ensemble's members' raw probabilities
    ``[N, B, K]`` after ``calibration`` (None: raw), ``float32[B, K]``: a
    spread in the units of the score it stands beside (class weighting
    inflates raw probabilities, and their spread with them)."""
    members = np.asarray(members)
    if calibration is not None:
        members = calibration.apply(members.reshape(-1, members.shape[-1])).reshape(members.shape)
    return members.std(axis=0).astype(np.float32)


def fit_calibration(probs: np.ndarray, labels: np.ndarray, tasks: Sequence[str], *,
                    method: Method = "auto", isotonic_min_class: int = ISOTONIC_MIN_CLASS,
                    split: str = "valid") -> Calibration:
    """Per-task maps from raw probabilities ``[N, K]`` and the split's label
    array ``[N, K]`` (> 0 active, 0 inactive, < 0 missing)."""
    probs, labels = np.asarray(probs), np.asarray(labels)
    if probs.shape != labels.shape or probs.ndim != 2 or probs.shape[1] != len(tasks):
        raise ValueError(f"probabilities {list(probs.shape)} and labels {list(labels.shape)} "
                         f"must both be [N, {len(tasks)}]")
    maps = []
    for column in range(len(tasks)):
        present = labels[:, column] >= 0
        maps.append(fit_task(probs[present, column], labels[present, column] > 0, method,
                             isotonic_min_class))
    return Calibration(tasks=list(tasks), maps=maps, split=split)
