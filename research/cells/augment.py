"""Stain augmentation in HED space (Tellez et al., 2019), for training copies of images.

Each copy perturbs the hematoxylin, eosin and DAB concentrations of every pixel
(``c' = alpha * c + beta``, one alpha / beta per stain and image), then brightness and
contrast. Features are measured on the augmented image, so the classifier sees how a cell's
radiomics move when a hospital stains darker, pinker or bluer.
"""

from __future__ import annotations

import numpy as np

from napari_uam.segment.stain import HED_FROM_RGB, RGB_FROM_HED

#: Range of the multiplicative (alpha) and additive (beta, in OD) stain perturbations.
ALPHA = 0.25
BETA = 0.05


def hed_jitter(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One stain-augmented copy of an (H, W, 3) uint8 RGB image."""
    lut = -np.log10((np.arange(256, dtype=np.float64) + 1.0) / 256.0)
    alpha = rng.uniform(1 - ALPHA, 1 + ALPHA, 3)
    beta = rng.uniform(-BETA, BETA, 3)
    gain = rng.uniform(0.9, 1.1)  # contrast
    shift = rng.uniform(-12, 12)  # brightness
    out = np.empty_like(rgb)
    rows = max(1, (1 << 20) // max(1, rgb.shape[1]))
    for y in range(0, rgb.shape[0], rows):
        conc = lut[rgb[y : y + rows]] @ HED_FROM_RGB
        # Only stained pixels get the additive shift: glass stays glass.
        stained = conc.sum(-1, keepdims=True) > 0.1
        conc = conc * alpha + np.where(stained, beta, 0.0)
        od = np.maximum(conc @ RGB_FROM_HED, 0.0)
        v = 256.0 * np.power(10.0, -od) - 1.0
        v = (v - 128.0) * gain + 128.0 + shift
        out[y : y + rows] = np.clip(np.rint(v), 0, 255).astype(np.uint8)
    return out
