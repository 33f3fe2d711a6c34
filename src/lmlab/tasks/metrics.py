"""Classification and regression metrics, numpy only (the GLUE set: accuracy, F1, Matthews
correlation, Pearson, Spearman).

Predictions and gold labels are class indices (classification) or numbers (regression).
Undefined values (F1 of a class never predicted nor present, a correlation of a constant) are
0.0, as scikit-learn reports them, so logs stay valid JSON.
"""

from __future__ import annotations

import numpy as np


def confusion(pred, gold, n_classes: int) -> np.ndarray:
    """(n, n) counts: rows are gold classes, columns predicted classes."""
    pred, gold = np.asarray(pred, dtype=np.int64), np.asarray(gold, dtype=np.int64)
    m = np.zeros((n_classes, n_classes), dtype=np.int64)
    np.add.at(m, (gold, pred), 1)
    return m


def accuracy(pred, gold) -> float:
    pred, gold = np.asarray(pred), np.asarray(gold)
    return float((pred == gold).mean()) if len(gold) else 0.0


def f1_per_class(pred, gold, n_classes: int) -> np.ndarray:
    m = confusion(pred, gold, n_classes).astype(np.float64)
    tp = np.diag(m)
    denom = m.sum(0) + m.sum(1)  # predicted + gold = 2·tp + fp + fn
    return np.divide(2 * tp, denom, out=np.zeros_like(tp), where=denom > 0)


def macro_f1(pred, gold, n_classes: int) -> float:
    return float(f1_per_class(pred, gold, n_classes).mean())


def binary_f1(pred, gold, positive: int = 1) -> float:
    """F1 of the positive class (GLUE's MRPC/QQP F1 with positive = 1)."""
    return float(f1_per_class(pred, gold, max(2, positive + 1))[positive])


def matthews(pred, gold, n_classes: int) -> float:
    """Matthews correlation; for more than two classes Gorodkin's R_K, which reduces to it."""
    m = confusion(pred, gold, n_classes).astype(np.float64)
    s, c = m.sum(), np.trace(m)
    p, t = m.sum(0), m.sum(1)
    denom = np.sqrt((s * s - p @ p) * (s * s - t @ t))
    return float((c * s - p @ t) / denom) if denom > 0 else 0.0


def pearson(x, y) -> float:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    dx, dy = x - x.mean(), y - y.mean()
    denom = np.sqrt((dx @ dx) * (dy @ dy))
    return float(dx @ dy / denom) if denom > 0 else 0.0


def average_ranks(x) -> np.ndarray:
    """1-based ranks; tied values share the mean of the ranks they span."""
    x = np.asarray(x, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(len(x), dtype=np.float64)
    sorted_x = x[order]
    start = 0
    for end in range(1, len(x) + 1):
        if end == len(x) or sorted_x[end] != sorted_x[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x, y) -> float:
    """Pearson correlation of the average ranks (ties handled as in scipy.stats.spearmanr)."""
    return pearson(average_ranks(x), average_ranks(y))


def classification_metrics(pred, gold, n_classes: int) -> dict:
    """accuracy, macro_f1, mcc, and f1 (positive = class 1) when there are two classes."""
    out = {"accuracy": accuracy(pred, gold), "macro_f1": macro_f1(pred, gold, n_classes),
           "mcc": matthews(pred, gold, n_classes)}
    if n_classes == 2:
        out["f1"] = binary_f1(pred, gold, 1)
    return out


def regression_metrics(pred, gold) -> dict:
    pred, gold = np.asarray(pred, dtype=np.float64), np.asarray(gold, dtype=np.float64)
    return {"pearson": pearson(pred, gold), "spearman": spearman(pred, gold),
            "mse": float(((pred - gold) ** 2).mean()) if len(gold) else 0.0}
