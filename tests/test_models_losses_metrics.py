"""Masked loss, ranking metrics against scikit-learn, calibration metrics
against plain loops, Delta, expert diversity."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score, roc_auc_score

from models.diversity import (
    ExpertDistanceAccumulator,
    diversity_score,
    expert_distance_matrix,
)
from models.losses import masked_bce_per_task
from models.metrics import (
    brier_score,
    delta_vs_reference,
    evaluate_calibration,
    evaluate_tasks,
    expected_calibration_error,
)


def test_masked_bce_matches_a_per_task_loop() -> None:
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(12, 4, generator=generator, dtype=torch.float64)
    labels = (torch.rand(12, 4, generator=generator) < 0.4).double()
    mask = torch.rand(12, 4, generator=generator) < 0.6
    got = masked_bce_per_task(logits, labels, mask, pos_weight=5.0)
    for task in range(4):
        rows = mask[:, task]
        x, y = logits[rows, task], labels[rows, task]
        expected = -(5.0 * y * torch.log(torch.sigmoid(x)) + (1 - y) * torch.log(1 - torch.sigmoid(x))).mean()
        torch.testing.assert_close(got[task], expected)


def test_masked_labels_change_nothing() -> None:
    generator = torch.Generator().manual_seed(1)
    logits = torch.randn(10, 3, generator=generator, requires_grad=True)
    labels = (torch.rand(10, 3, generator=generator) < 0.5).float()
    mask = torch.rand(10, 3, generator=generator) < 0.5
    first = masked_bce_per_task(logits, labels, mask)
    (grad_first,) = torch.autograd.grad(first.sum(), logits)
    flipped = torch.where(mask, labels, 1 - labels)
    flipped[~mask] = -1  # the int8 missing code must be harmless too
    second = masked_bce_per_task(logits, flipped, mask)
    (grad_second,) = torch.autograd.grad(second.sum(), logits)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(grad_first, grad_second, rtol=0, atol=0)
    assert (grad_first[~mask] == 0).all()


def test_task_without_labels_gives_zero_and_no_gradient() -> None:
    logits = torch.randn(6, 2, requires_grad=True)
    mask = torch.tensor([[True, False]] * 6)
    losses = masked_bce_per_task(logits, torch.ones(6, 2), mask)
    (grad,) = torch.autograd.grad(losses.sum(), logits)
    assert losses[1] == 0 and (grad[:, 1] == 0).all() and losses[0] > 0


def test_masked_bce_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="same"):
        masked_bce_per_task(torch.zeros(3, 2), torch.zeros(3, 3), torch.ones(3, 2, dtype=torch.bool))


def test_metrics_match_scikit_learn_with_ties_and_missing_labels() -> None:
    rng = np.random.default_rng(0)
    n, k = 400, 7
    y_true = (rng.random((n, k)) < 0.15).astype(np.int8)
    y_score = np.round(rng.normal(size=(n, k)) + y_true, 1)  # rounding makes many ties
    mask = rng.random((n, k)) < 0.7
    y_true[:, 5] = 0                      # single class: skipped
    mask[:, 6] = False
    mask[:3, 6] = True                    # three labels, one class at most: skipped
    y_true[:3, 6] = 1
    result = evaluate_tasks(y_true, y_score, mask)
    assert result.n_skipped == 2
    assert np.isnan(result.ap[5:]).all() and np.isnan(result.roc_auc[5:]).all()
    for task in range(5):
        rows = mask[:, task]
        assert result.ap[task] == pytest.approx(average_precision_score(y_true[rows, task], y_score[rows, task]),
                                                abs=1e-12)
        assert result.roc_auc[task] == pytest.approx(roc_auc_score(y_true[rows, task], y_score[rows, task]),
                                                     abs=1e-12)
    assert result.mean_ap == pytest.approx(np.mean(result.ap[:5]))
    assert result.mean_roc_auc == pytest.approx(np.mean(result.roc_auc[:5]))


def test_perfect_and_reversed_rankings() -> None:
    y = np.array([[0], [0], [1], [1]])
    mask = np.ones_like(y, dtype=bool)
    perfect = evaluate_tasks(y, np.array([[0.1], [0.2], [0.8], [0.9]]), mask)
    reversed_ = evaluate_tasks(y, np.array([[0.9], [0.8], [0.2], [0.1]]), mask)
    assert perfect.ap[0] == 1.0 and perfect.roc_auc[0] == 1.0
    assert reversed_.roc_auc[0] == 0.0 and reversed_.ap[0] == pytest.approx((1 / 3 + 2 / 4) / 2)


def _slow_ece(y: np.ndarray, p: np.ndarray, n_bins: int) -> float:
    """ECE the textbook way: bin by bin, |accuracy - confidence| weighted by
    the bin's share of samples."""
    total = 0.0
    for b in range(n_bins):
        low, high = b / n_bins, (b + 1) / n_bins
        in_bin = [i for i in range(len(p)) if low <= p[i] < high or (b == n_bins - 1 and p[i] == 1.0)]
        if in_bin:
            accuracy = sum(float(y[i]) for i in in_bin) / len(in_bin)
            confidence = sum(float(p[i]) for i in in_bin) / len(in_bin)
            total += len(in_bin) / len(p) * abs(accuracy - confidence)
    return total


@pytest.mark.parametrize("n_bins", [10, 7])
def test_ece_and_brier_match_plain_loops(n_bins: int) -> None:
    rng = np.random.default_rng(3)
    p = rng.random(500) ** 3
    p[:5] = [0.0, 1.0, 0.1, 0.5, 0.9]  # the bin edges, and both ends of [0, 1]
    y = rng.random(500) < 0.2
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(_slow_ece(y, p, n_bins), abs=1e-12)
    assert brier_score(y, p) == pytest.approx(sum((float(a) - b) ** 2 for a, b in zip(y, p)) / len(p),
                                              abs=1e-12)
    # A perfectly calibrated binning has no error; a confident wrong one the most.
    assert expected_calibration_error(np.array([0, 1, 0, 1]), np.array([0.5, 0.5, 0.5, 0.5])) == 0.0
    assert expected_calibration_error(np.array([0, 0]), np.array([1.0, 1.0])) == 1.0


def test_calibration_metrics_per_task_skip_only_tasks_without_labels() -> None:
    rng = np.random.default_rng(4)
    y = (rng.random((300, 4)) < 0.1).astype(np.int8)
    p = rng.random((300, 4))
    mask = rng.random((300, 4)) < 0.6
    y[:, 2] = 0      # one class only: still scored (the probabilities should be low)
    mask[:, 3] = False
    result = evaluate_calibration(y, p, mask)
    for task in range(3):
        rows = mask[:, task]
        assert result.ece[task] == pytest.approx(_slow_ece(y[rows, task], p[rows, task], 10), abs=1e-12)
        assert result.brier[task] == pytest.approx(np.mean((p[rows, task] - y[rows, task]) ** 2))
    assert np.isnan(result.ece[3]) and np.isnan(result.brier[3])
    assert result.mean_ece == pytest.approx(np.mean(result.ece[:3]))
    assert result.means("test") == {"test_mean_ece": result.mean_ece, "test_mean_brier": result.mean_brier}
    assert set(result.per_task("test", list("abcd"))) == {f"test_{m}/{t}" for m in ("ece", "brier")
                                                          for t in "abcd"}
    with pytest.raises(ValueError, match="same"):
        evaluate_calibration(y, p[:, :3], mask)


def test_delta_vs_reference_is_the_mean_relative_change_in_percent() -> None:
    values = np.array([0.80, 0.60, np.nan, 0.50])
    reference = np.array([0.50, 0.60, 0.70, 1.00])
    # (+60 % + 0 % - 50 %) / 3, the NaN task left out
    assert delta_vs_reference(values, reference) == pytest.approx(10.0 / 3)


def test_distance_matrix_on_hand_made_experts() -> None:
    # Expert 0 outputs zeros, expert 1 ones, expert 2 twos; N = 4 samples, h = 1.
    outputs = torch.stack([torch.full((4, 1), float(v)) for v in (0, 1, 2)])
    distances = expert_distance_matrix(outputs)
    # d_01 = d_12 = sqrt(4 * 1) = 2, d_02 = sqrt(4 * 4) = 4; scaled by 4.
    expected = np.array([[0, 0.5, 1.0], [0.5, 0, 0.5], [1.0, 0.5, 0]])
    np.testing.assert_allclose(distances, expected)
    assert diversity_score(distances) == pytest.approx(expected.mean())


def test_identical_experts_have_zero_diversity() -> None:
    outputs = torch.randn(1, 5, 3).expand(4, 5, 3)
    assert diversity_score(expert_distance_matrix(outputs)) == pytest.approx(0.0, abs=1e-6)


def test_streaming_accumulator_equals_one_shot() -> None:
    outputs = torch.randn(5, 30, 6)
    accumulator = ExpertDistanceAccumulator()
    for batch in outputs.split(7, dim=1):
        accumulator.update(batch)
    assert accumulator.n_samples == 30
    np.testing.assert_allclose(accumulator.distance_matrix(), expert_distance_matrix(outputs), atol=1e-12)
    brute = torch.cdist(outputs.reshape(5, -1).double(), outputs.reshape(5, -1).double()).numpy()
    np.testing.assert_allclose(accumulator.distance_matrix(), brute / brute.max(), atol=1e-12)


def test_positive_weights_are_each_tasks_capped_negative_to_positive_ratio() -> None:
    from models.losses import positive_weights

    rng = np.random.default_rng(0)
    labels = rng.choice([-1, 0, 1], size=(500, 6), p=[0.3, 0.65, 0.05]).astype(np.int8)
    labels[:, 4] = np.where(labels[:, 4] == 1, 0, labels[:, 4])  # no positive at all
    labels[:, 5] = np.where(labels[:, 5] >= 0, 1, -1)  # only positives
    weights = positive_weights(labels, cap=10.0)
    for task in range(6):
        pos, neg = int((labels[:, task] == 1).sum()), int((labels[:, task] == 0).sum())
        expected = 10.0 if pos == 0 else min(max(neg / pos, 0.1), 10.0)
        assert weights[task] == pytest.approx(expected, rel=1e-3), task
    assert weights[4] == 10.0 and weights[5] == 0.1


@pytest.mark.parametrize("given, held", [(None, None), ("none", None), (30, 30.0), ("12.5", 12.5), ("auto", "auto:100"),
                                         ("AUTO:50", "auto:50")])
def test_pos_weight_is_a_number_or_auto_with_a_cap(given, held) -> None:
    from models.config import StepConfig

    assert StepConfig(pos_weight=given).pos_weight == held
    for bad in (0, -1, "auto:0.5", "auto:x", "heavy"):
        with pytest.raises(ValueError, match="pos_weight"):
            StepConfig(pos_weight=bad)
    with pytest.raises(ValueError, match="resolved from the training labels"):
        StepConfig(pos_weight="auto").positive_weight()
    resolved = StepConfig(pos_weight="auto:10", task_pos_weight=[2, 3])
    assert resolved.positive_weight() == (2.0, 3.0) and resolved.pos_weight_cap == 10.0
    assert StepConfig.from_dict(resolved.to_dict()) == resolved


def test_enrichment_factor_against_a_plain_count() -> None:
    from models.metrics import enrichment_factor

    rng = np.random.default_rng(1)
    for n, rate in ((1000, 0.02), (250, 0.1), (57, 0.3)):
        truth = rng.random(n) < rate
        truth[0] = True
        scores = rng.random(n) + truth * rng.random(n)
        n_top = int(np.ceil(0.01 * n))
        top = sorted(range(n), key=lambda i: -scores[i])[:n_top]
        expected = sum(truth[i] for i in top) / (n_top * truth.sum() / n)
        assert enrichment_factor(truth, scores) == pytest.approx(expected)
    perfect = np.r_[np.ones(10, bool), np.zeros(990, bool)]
    assert enrichment_factor(perfect, -np.arange(1000.0)) == pytest.approx(100.0)
    metrics = evaluate_tasks(perfect[:, None].astype(int), -np.arange(1000.0)[:, None],
                             np.ones((1000, 1), bool))
    assert metrics.mean_ef1 == pytest.approx(100.0) and metrics.means("test")["test_mean_ef1"] == metrics.mean_ef1


@pytest.mark.parametrize("seed", range(5))
def test_spearman_matches_scipy_with_and_without_ties(seed: int) -> None:
    from scipy.stats import spearmanr

    from models.metrics import spearman

    rng = np.random.default_rng(seed)
    x, y = rng.normal(size=60), rng.normal(size=60)
    assert spearman(x, y) == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
    tied_x, tied_y = np.round(x), (y > 0).astype(float)
    assert spearman(tied_x, tied_y) == pytest.approx(spearmanr(tied_x, tied_y).statistic, abs=1e-12)
    assert np.isnan(spearman(np.ones(5), np.arange(5.0)))


def test_spread_report_reads_the_top_of_each_ranking_by_spread_quartile() -> None:
    from models.metrics import evaluate_spread

    # 400 rows: the top 1 % is 4 rows (the minimum), a quartile 1 row each.
    n = 400
    scores = np.linspace(0.0, 0.5, n)
    truth = np.zeros(n)
    truth[[-1, -3]] = 1  # two actives in the top 4, at spreads 0.0 and 0.2
    spread = np.full(n, 0.05)
    spread[-4:] = [0.3, 0.2, 0.1, 0.0]  # rows n-4 .. n-1
    # Task 2: no actives (skipped); task 3: spread exactly the error (rank 1).
    y_true = np.column_stack([truth, np.zeros(n), truth])
    y_score = np.column_stack([scores, scores, scores])
    errors = np.abs(truth - scores)
    y_spread = np.column_stack([spread, spread, errors])
    report = evaluate_spread(y_true, y_score, y_spread, np.ones((n, 3), bool))
    assert report.top_precision[0] == 0.5
    assert report.top_precision_low_spread[0] == 1.0  # the row at spread 0.0 is active
    assert report.top_precision_high_spread[0] == 0.0  # the row at spread 0.3 is not
    assert np.isnan(report.top_precision[1]) and np.isnan(report.spearman_error[1])
    assert report.spearman_error[2] == pytest.approx(1.0)
    assert report.spearman_error_top[2] == pytest.approx(1.0)  # the top 4 rows: spread is their error
    # Excess spread: the spread less its linear trend with rank; here the
    # top rows' spread is linear in rank (0.0, 0.1, 0.2, 0.3), so it leaves
    # nothing to sort by but noise: both quartiles are one of the 4 rows.
    assert {report.top_precision_low_excess[0], report.top_precision_high_excess[0]} <= {0.0, 1.0}
    assert np.isnan(report.top_precision_low_excess[1])
    assert report.means()["top_precision"] == 0.5
    assert [row["task"] for row in report.rows(["a", "b", "c"])] == ["a", "b", "c"]
