"""The binary task and the group-wise split rule fine-tuning validates with (by image or
patient, never by cell, so validation cells never share an image with training cells)."""

from __future__ import annotations

import numpy as np

#: Binary task of every experiment and of the shipped model.
CLASS_NAMES = ["non-tumor", "tumor"]
TUMOR_CLASS = 1


def group_split(groups, fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Split rows by group: about ``fraction`` of the groups (at least one) go to the second part.

    Args:
        groups: (n,) group key per row (image or patient).
        fraction: share of groups in the held-out part.
        seed: permutation seed of the sorted unique groups (stable across runs).

    Returns:
        (keep_mask, held_mask) boolean arrays over rows.
    """
    groups = np.asarray(groups).astype(str)
    uniq = np.unique(groups)
    rng = np.random.default_rng(seed)
    perm = rng.permutation(uniq)
    n_held = max(1, int(round(fraction * len(uniq)))) if len(uniq) > 1 else 0
    held = np.isin(groups, perm[:n_held])
    return ~held, held
