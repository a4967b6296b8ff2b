"""Classification metrics reported by the trainer and the experiments (accuracy, F1, AUC, per class)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import (
    accuracy_score,
    balanced_accuracy_score,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)


def classification_metrics(y_true, proba, class_names=None, positive: int = 1) -> dict:
    """Metrics of predicted class probabilities against integer labels.

    Args:
        y_true: (n,) int labels.
        proba: (n, n_classes) probabilities.
        class_names: names for the per-class entries (default "0", "1", ...).
        positive: index of the class of interest (the tumor class) for ``f1`` and ``auc``.

    Returns:
        dict with ``n``, ``accuracy``, ``balanced_accuracy``, ``f1`` (of the positive class for
        two classes, else macro), ``macro_f1``, ``auc`` (positive class vs rest for two classes,
        else macro one-vs-rest; NaN when a class is absent) and ``per_class``
        (name -> precision, recall, f1, support).
    """
    y = np.asarray(y_true).astype(int)
    p = np.asarray(proba, dtype=np.float64)
    k = p.shape[1]
    names = [str(c) for c in (class_names or range(k))]
    pred = p.argmax(1)
    labels = list(range(k))
    prec, rec, f1s, sup = precision_recall_fscore_support(y, pred, labels=labels, zero_division=0)
    out = {
        "n": int(len(y)),
        "accuracy": float(accuracy_score(y, pred)) if len(y) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y, pred)) if len(y) else float("nan"),
        "macro_f1": float(f1_score(y, pred, labels=labels, average="macro", zero_division=0)),
    }
    present = np.unique(y)
    if k == 2:
        out["f1"] = float(f1s[positive])
        out["auc"] = float(roc_auc_score(y == positive, p[:, positive])) if present.size == 2 else float("nan")
    else:
        out["f1"] = out["macro_f1"]
        try:
            out["auc"] = float(roc_auc_score(y, p, multi_class="ovr", labels=labels))
        except ValueError:
            out["auc"] = float("nan")
    out["per_class"] = {
        names[i]: {"precision": float(prec[i]), "recall": float(rec[i]), "f1": float(f1s[i]), "support": int(sup[i])}
        for i in range(k)
    }
    return out
