"""Random patches with rectangular 'cells' for the engine-agreement tests (no real data).

Imported by the tests directly and by the subprocess scripts of the simulator and disk-cache
tests (which put this folder on ``sys.path``).
"""

from __future__ import annotations

import numpy as np


def random_patches(seed: int, shapes, n_cells: int, min_side: int, max_side: int, id_step: int = 1, id_offset: int = 0):
    """(images, labels): per (h, w) in ``shapes`` an (h, w, 3) uint8 noise image and an
    (h, w) int32 map of ``n_cells`` overlapping rectangles of sides in [min_side, max_side),
    the k-th labelled ``id_step * k + id_offset`` (later rectangles cover earlier ones)."""
    rng = np.random.default_rng(seed)
    images, labels = [], []
    for h, w in shapes:
        img = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.int32)
        for k in range(1, n_cells + 1):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            lab[y : y + rng.integers(min_side, max_side), x : x + rng.integers(min_side, max_side)] = (
                id_step * k + id_offset
            )
        images.append(img)
        labels.append(lab)
    return images, labels
