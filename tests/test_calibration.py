"""Per-assay calibration maps: Platt scaling recovers a known map, isotonic
regression equals scikit-learn's, the per-task choice follows the labels,
the JSON round trip is exact, and on a panel whose model is miscalibrated on
purpose (the logit shift class weighting causes) calibration lowers the
held-out ECE and Brier score without changing the Platt tasks' ranking."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from models.metrics import evaluate_calibration, evaluate_tasks
from pipelines.serving.calibration import (
    CALIBRATION_FILE,
    Calibration,
    IdentityMap,
    IsotonicMap,
    PlattMap,
    fit_calibration,
    fit_isotonic,
    fit_platt,
)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-z))


@pytest.mark.parametrize(("a", "b"), [(0.7, -2.5), (1.0, -np.log(50.0)), (2.0, 0.5)])
def test_platt_fit_recovers_a_known_map(a: float, b: float) -> None:
    rng = np.random.default_rng(0)
    z = rng.normal(0.0, 2.0, 100_000)
    y = rng.random(z.size) < _sigmoid(a * z + b)
    fitted = fit_platt(_sigmoid(z), y)
    assert fitted.a == pytest.approx(a, abs=0.05) and fitted.b == pytest.approx(b, abs=0.05)


def test_platt_fit_stays_finite_and_increasing_on_separable_and_reversed_tasks() -> None:
    separable = fit_platt(np.array([0.1, 0.2, 0.3, 0.9]), np.array([0, 0, 0, 1]))
    assert np.isfinite([separable.a, separable.b]).all() and 0 < separable.a < 5
    reversed_ = fit_platt(np.array([0.9, 0.8, 0.7, 0.1]), np.array([0, 0, 0, 1]))
    p = np.linspace(0.01, 0.99, 50)
    assert reversed_.a > 0 and np.all(np.diff(reversed_.apply(p)) > 0)


def test_isotonic_fit_is_monotone_and_equals_scikit_learn() -> None:
    rng = np.random.default_rng(1)
    p = np.round(rng.random(3000) ** 2, 3)  # rounding: many tied scores
    y = rng.random(p.size) < p ** 0.5
    fitted = fit_isotonic(p, y)
    reference = IsotonicRegression(out_of_bounds="clip").fit(p, y)
    grid = np.linspace(-0.1, 1.1, 2001)  # between knots and out of range
    np.testing.assert_allclose(fitted.apply(grid), reference.predict(grid), rtol=0, atol=1e-12)
    np.testing.assert_allclose(fitted.apply(p), reference.predict(p), rtol=0, atol=1e-12)
    assert np.all(np.diff(fitted.apply(grid)) >= 0)
    assert len(fitted.x) < 2 * len(reference.X_thresholds_)  # only the runs' ends are kept


def test_each_task_gets_its_map_and_missing_labels_are_ignored() -> None:
    rng = np.random.default_rng(2)
    n = 6000
    probs = rng.random((n, 4))
    labels = np.full((n, 4), -1, dtype=np.int8)
    labels[:, 0] = rng.random(n) < probs[:, 0]              # 3,000 of each class: isotonic
    labels[:500, 1] = rng.random(500) < probs[:500, 1] / 10  # few actives: Platt
    labels[:300, 2] = 0                                     # one class: identity
    calibration = fit_calibration(probs, labels, ["many", "few", "inactive", "unlabelled"])
    methods = [task.map.method for task in calibration.maps]
    assert methods == ["isotonic", "platt", "identity", "identity"]
    assert calibration.maps[1].n_labels == 500 and calibration.maps[3].n_labels == 0
    assert calibration.method_counts() == {"platt": 1, "isotonic": 1, "identity": 2}
    # The missing rows of task 1 do not move its map.
    alone = fit_platt(probs[:500, 1], labels[:500, 1] > 0)
    assert calibration.maps[1].map == alone
    assert "all 300 labels inactive" in calibration.maps[2].map.reason
    np.testing.assert_array_equal(calibration.apply(probs)[:, 2:], probs[:, 2:].astype(np.float32))
    with pytest.raises(ValueError, match=r"\[N, 4\]"):
        calibration.apply(probs[:, :3])


def test_json_round_trip_is_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    probs = rng.random((2000, 3))
    labels = np.stack([rng.random(2000) < probs[:, 0] ** 2, rng.random(2000) < probs[:, 1] / 20,
                       np.zeros(2000, bool)], axis=1).astype(np.int8)
    calibration = fit_calibration(probs, labels, ["A", "B", "C"], isotonic_min_class=100)
    assert {type(task.map) for task in calibration.maps} == {IsotonicMap, PlattMap, IdentityMap}
    path = calibration.save(tmp_path)
    assert path.name == CALIBRATION_FILE
    loaded = Calibration.load(tmp_path)
    assert loaded == calibration
    np.testing.assert_array_equal(loaded.apply(probs), calibration.apply(probs))
    assert Calibration.load(tmp_path / "elsewhere") is None
    path.write_text(path.read_text().replace('"format": 1', '"format": 99'))
    with pytest.raises(ValueError, match="format 99"):
        Calibration.load(tmp_path)


def miscalibrated_panel(seed: int, n: int = 6000, n_tasks: int = 12) -> tuple[np.ndarray, np.ndarray]:
    """Raw probabilities and labels of a model that ranks well but whose
    logits are shifted up by log(w) (w up to 100, as the class weights
    neg/pos shift them) and stretched: its probabilities are far too high.
    Active rates 0.5-10 %; 30 % of labels missing."""
    rng = np.random.default_rng(seed)
    rates = np.geomspace(0.005, 0.1, n_tasks)
    z = rng.normal(0.0, 1.5, (n, n_tasks)) + np.log(rates / (1 - rates))
    labels = (rng.random((n, n_tasks)) < _sigmoid(z)).astype(np.int8)
    weights = np.minimum((1 - rates) / rates, 100.0)
    raw = _sigmoid(1.3 * z + np.log(weights))
    labels[rng.random((n, n_tasks)) < 0.3] = -1
    return raw, labels


def test_calibration_lowers_held_out_ece_and_brier_on_a_miscalibrated_panel() -> None:
    tasks = [f"T{k}" for k in range(12)]
    valid_raw, valid_labels = miscalibrated_panel(seed=10)
    test_raw, test_labels = miscalibrated_panel(seed=11)
    # A low isotonic threshold, so that both kinds of map are put to the test.
    calibration = fit_calibration(valid_raw, valid_labels, tasks, isotonic_min_class=100)
    assert calibration.method_counts()["platt"] and calibration.method_counts()["isotonic"]
    calibrated = calibration.apply(test_raw)
    truth, present = test_labels > 0, test_labels >= 0
    before = evaluate_calibration(truth, test_raw, present)
    after = evaluate_calibration(truth, calibrated, present)
    assert before.mean_ece > 0.2 and after.mean_ece < 0.02
    assert after.mean_brier < 0.5 * before.mean_brier
    assert np.all(after.ece < before.ece) and np.all(after.brier < before.brier)
    # Platt maps are strictly increasing: the ranking metrics do not move.
    platt = np.array([task.map.method == "platt" for task in calibration.maps])
    ranked_raw = evaluate_tasks(truth, test_raw, present)
    ranked_calibrated = evaluate_tasks(truth, calibrated, present)
    np.testing.assert_allclose(ranked_calibrated.roc_auc[platt], ranked_raw.roc_auc[platt], atol=1e-9)
