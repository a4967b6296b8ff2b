"""Temperature scaling of a fine-tuned classifier on its validation cells (issue 16).

A network fitted to a few hundred annotated cells is usually over-confident: its
``tumor_probability`` says 0.98 where it is right nine times in ten. One number fixes most of
that without changing a single call: the logits are divided by a temperature ``T`` before the
softmax (``T > 1`` softens, ``T < 1`` sharpens; the argmax, hence every class, is unchanged).
``T`` minimises the negative log-likelihood (NLL) of the validation cells' true classes,
within :data:`T_BOUNDS`.

With fewer than :data:`MIN_CELLS` validation cells, or fewer than :data:`MIN_PER_CLASS` of
either class, the estimate would follow a handful of cells: ``T`` stays 1 and the record says
why. The record (validation cells, NLL and expected calibration error before and after) goes
into the checkpoint's ``calibration`` entry and its model card.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
from scipy.optimize import minimize_scalar

#: Fewest validation cells for a fitted temperature.
MIN_CELLS = 100
#: Fewest validation cells of each class for a fitted temperature.
MIN_PER_CLASS = 10
#: The temperature is searched in this range (bounds included).
T_BOUNDS = (0.5, 5.0)
#: Equal-width bins of the expected calibration error (as the LOSO report, research/cells/loso.py).
ECE_BINS = 10


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Row-wise softmax of ``logits / temperature`` (float64)."""
    z = np.asarray(logits, np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nll(logits: np.ndarray, y: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of the classes ``y`` under ``softmax(logits / T)``."""
    z = np.asarray(logits, np.float64) / float(temperature)
    m = z.max(axis=1, keepdims=True)
    log_p = z - m - np.log(np.exp(z - m).sum(axis=1, keepdims=True))
    return float(-np.mean(log_p[np.arange(len(y)), np.asarray(y, np.int64)]))


def ece(is_positive: np.ndarray, p_positive: np.ndarray, bins: int = ECE_BINS) -> float:
    """Expected calibration error of one class's probability (equal-width bins, 0..1)."""
    y = np.asarray(is_positive, np.float64)
    p = np.asarray(p_positive, np.float64)
    if len(p) == 0:
        return float("nan")
    idx = np.clip(np.digitize(p, np.linspace(0, 1, bins + 1)) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(total)


def model_logits(model, x: np.ndarray, device: str = "cpu", batch: int = 8192) -> np.ndarray:
    """(n, F) normalised features -> (n, n_classes) float32 logits (eval mode, as inference)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for lo in range(0, len(x), batch):
            xb = torch.from_numpy(np.ascontiguousarray(x[lo : lo + batch])).to(device)
            out.append(model(xb).float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)


def fit_temperature(
    logits: np.ndarray, y: np.ndarray, class_names: list, positive: int, why_none: Optional[str] = None
) -> dict:
    """Fit the temperature on validation logits and return the calibration record.

    Args:
        logits: (n, k) raw logits of the validation cells.
        y: (n,) their true class indices.
        class_names: names of the k classes (for the per-class counts).
        positive: index of the class whose probability the ECE describes (the tumor class).
        why_none: reason given when there are no validation cells (default: "no validation cells").

    Returns:
        ``{"temperature", "fitted", "reason", "method", "bounds", "n_cells", "cells_per_class",
        "nll_before", "nll_after", "ece_before", "ece_after"}``; ``temperature`` is 1.0 and
        ``reason`` says why when the validation set is too small, else ``reason`` is None.
    """
    logits = np.asarray(logits, np.float64)
    y = np.asarray(y, np.int64)
    counts = np.bincount(y, minlength=len(class_names)) if len(y) else np.zeros(len(class_names), np.int64)
    rec = {
        "method": f"temperature scaling: minimise the NLL of the validation cells, T in [{T_BOUNDS[0]}, {T_BOUNDS[1]}]",
        "bounds": list(T_BOUNDS), "n_cells": int(len(y)),
        "cells_per_class": {str(c): int(n) for c, n in zip(class_names, counts)},
    }  # fmt: skip
    if len(y) == 0:
        return {"temperature": 1.0, "fitted": False, "reason": why_none or "no validation cells", **rec,
                "nll_before": None, "nll_after": None, "ece_before": None, "ece_after": None}  # fmt: skip
    before_nll = nll(logits, y)
    before_ece = ece(y == positive, softmax(logits)[:, positive])
    reason = None
    if len(y) < MIN_CELLS:
        reason = f"only {len(y)} validation cells (a temperature needs at least {MIN_CELLS})"
    elif counts.min() < MIN_PER_CLASS:
        few = ", ".join(f"{n} {c}" for c, n in zip(class_names, counts) if n < MIN_PER_CLASS)
        reason = f"too few validation cells of a class ({few}; a temperature needs at least {MIN_PER_CLASS} of each)"
    if reason is not None:
        return {"temperature": 1.0, "fitted": False, "reason": reason, **rec, "nll_before": before_nll,
                "nll_after": before_nll, "ece_before": before_ece, "ece_after": before_ece}  # fmt: skip
    res = minimize_scalar(lambda t: nll(logits, y, t), bounds=T_BOUNDS, method="bounded",
                          options={"xatol": 1e-5})  # fmt: skip
    t = float(np.clip(res.x, *T_BOUNDS))
    # The bounded search never evaluates the bounds themselves: take one when it is better.
    for edge in T_BOUNDS:
        if nll(logits, y, edge) < nll(logits, y, t):
            t = float(edge)
    if nll(logits, y, 1.0) <= nll(logits, y, t):
        t = 1.0
    return {
        "temperature": t, "fitted": True, "reason": None, **rec,
        "nll_before": before_nll, "nll_after": nll(logits, y, t),
        "ece_before": before_ece, "ece_after": ece(y == positive, softmax(logits, t)[:, positive]),
    }  # fmt: skip


def describe(calibration: Optional[dict]) -> str:
    """One sentence for the CLI and the dock: the temperature, or why it stayed 1."""
    if not calibration:
        return "No calibration: probabilities are the raw softmax (T = 1)."
    t = float(calibration.get("temperature", 1.0))
    if calibration.get("fitted"):
        return (f"Calibration: T = {t:.3f} fitted on {calibration['n_cells']} validation cells "
                f"(NLL {calibration['nll_before']:.3f} -> {calibration['nll_after']:.3f}, "
                f"ECE {calibration['ece_before']:.3f} -> {calibration['ece_after']:.3f}).")  # fmt: skip
    return f"Calibration: T = 1 (not fitted: {calibration.get('reason') or 'no reason recorded'})."
