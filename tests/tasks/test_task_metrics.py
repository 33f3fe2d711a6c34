"""Metrics against values worked out by hand."""

import math

import pytest

from lmlab.tasks import metrics


def test_binary_classification_by_hand():
    pred, gold = [0, 1, 1, 0, 1, 0], [0, 1, 0, 0, 1, 1]
    # tp=2 fp=1 fn=1 tn=2
    out = metrics.classification_metrics(pred, gold, 2)
    assert out["accuracy"] == pytest.approx(4 / 6)
    assert out["f1"] == pytest.approx(2 * 2 / (2 * 2 + 1 + 1))
    assert out["macro_f1"] == pytest.approx(2 / 3)
    assert out["mcc"] == pytest.approx((2 * 2 - 1 * 1) / math.sqrt(3 * 3 * 3 * 3))


def test_multiclass_mcc_and_macro_f1_by_hand():
    pred, gold = [0, 0, 2, 2, 0, 2], [2, 0, 2, 2, 0, 1]
    # confusion (gold rows): [[2,0,0],[0,0,1],[1,0,2]]; s=6, c=4, t=(2,1,3), p=(3,0,3)
    assert metrics.matthews(pred, gold, 3) == pytest.approx((4 * 6 - 15) / math.sqrt((36 - 18) * (36 - 14)))
    f1 = [2 * 2 / (3 + 2), 0.0, 2 * 2 / (3 + 3)]
    assert metrics.macro_f1(pred, gold, 3) == pytest.approx(sum(f1) / 3)
    assert "f1" not in metrics.classification_metrics(pred, gold, 3)


def test_degenerate_cases_are_zero():
    assert metrics.matthews([1, 1, 1], [1, 1, 1], 2) == 0.0
    assert metrics.pearson([1, 1, 1], [1, 2, 3]) == 0.0
    assert metrics.binary_f1([0, 0], [0, 0]) == 0.0


def test_pearson_by_hand():
    assert metrics.pearson([1, 2, 3, 4], [2, 4, 5, 9]) == pytest.approx(11 / math.sqrt(5 * 26))


def test_spearman_with_ties_by_hand():
    # ranks x = (1, 2.5, 2.5, 4), y = (1, 3, 2, 4)
    assert list(metrics.average_ranks([1, 2, 2, 3])) == [1, 2.5, 2.5, 4]
    assert metrics.spearman([1, 2, 2, 3], [1, 3, 2, 4]) == pytest.approx(4.5 / math.sqrt(4.5 * 5))
    assert metrics.spearman([10, 20, 30], [3, 2, 1]) == pytest.approx(-1.0)


def test_regression_metrics_keys():
    out = metrics.regression_metrics([1.0, 2.0, 3.0], [1.0, 2.0, 4.0])
    assert out["mse"] == pytest.approx(1 / 3)
    assert set(out) == {"pearson", "spearman", "mse"}
