"""Colour deconvolution of H&E images (Ruifrok & Johnston, 2001).

The hematoxylin optical density is the signal every classical nuclei segmenter starts from:
nuclei are hematoxylin-rich, cytoplasm and stroma are eosin-rich. Two details make it robust
to what real patches look like:

* Brightness: optical density needs the intensity of unstained glass. Scanners and JPEG
  exports differ, so the white level is estimated per channel from the brightest pixels
  instead of assuming 255 (a dim image would otherwise look uniformly "stained").
* JPEG: 8-bit quantisation and block artefacts make the optical density of dark pixels noisy;
  intensities are floored at 1 before the logarithm so black pixels stay finite.
"""

from __future__ import annotations

import numpy as np

#: Ruifrok-Johnston stain vectors (rows: hematoxylin, eosin, DAB) as optical densities of
#: R, G, B, the matrix ``skimage.color.rgb2hed`` uses.
RGB_FROM_HED = np.array(
    [
        [0.65, 0.70, 0.29],
        [0.07, 0.99, 0.11],
        [0.27, 0.57, 0.78],
    ]
)
RGB_FROM_HED = RGB_FROM_HED / np.linalg.norm(RGB_FROM_HED, axis=1, keepdims=True)
#: (3, 3) matrix mapping an optical-density row vector (R, G, B) to (H, E, DAB).
HED_FROM_RGB = np.linalg.inv(RGB_FROM_HED)

#: Percentile of each channel taken as the white (glass) level.
_WHITE_PERCENTILE = 99.0
#: Bounds of the estimated white level: below 150 the "brightest" pixels are tissue, not glass,
#: so the nominal level 255 is used instead of calling dense tissue white.
_WHITE_MIN, _WHITE_MAX = 150.0, 255.0


def white_level(image: np.ndarray) -> np.ndarray:
    """Estimate the unstained-glass intensity of each channel of an RGB uint8 image.

    Args:
        image: (H, W, 3) uint8 RGB.

    Returns:
        (3,) float32 white level per channel, in [150, 255]; 255 where the estimate is below
        150 (an image without glass, where the brightest pixels are tissue).
    """
    # A strided subsample is plenty for a percentile and keeps this O(1) in practice.
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / 250_000)))
    sample = image[::step, ::step].reshape(-1, 3)
    level = np.percentile(sample, _WHITE_PERCENTILE, axis=0).astype(np.float32)
    level = np.where(level < _WHITE_MIN, _WHITE_MAX, level)
    return np.clip(level, _WHITE_MIN, _WHITE_MAX)


def optical_density(image: np.ndarray, white: np.ndarray | None = None) -> np.ndarray:
    """Per-channel optical density ``-log10(I / I0)``, clipped at 0.

    Args:
        image: (H, W, 3) uint8 RGB.
        white: (3,) white level per channel; estimated with :func:`white_level` when None.

    Returns:
        (H, W, 3) float32 optical density (0 for glass, about 2.4 for black).
    """
    if white is None:
        white = white_level(image)
    # A lookup table per channel: 256 logarithms instead of H*W*3.
    lut = -np.log10(np.maximum(np.arange(256, dtype=np.float32), 1.0)[None, :] / white[:, None])
    lut = np.maximum(lut, 0.0).astype(np.float32)
    od = np.empty(image.shape, np.float32)
    for c in range(3):
        od[..., c] = lut[c][image[..., c]]
    return od


def hematoxylin(image: np.ndarray, white: np.ndarray | None = None) -> np.ndarray:
    """Hematoxylin optical density of an H&E image by Ruifrok-Johnston deconvolution.

    Args:
        image: (H, W, 3) uint8 RGB.
        white: (3,) white level per channel; estimated from the image when None.

    Returns:
        (H, W) float32 hematoxylin concentration in optical-density units, clipped at 0
        (glass and pure eosin give ~0, nuclei typically 0.3-1.5).
    """
    od = optical_density(image, white)
    h = od @ HED_FROM_RGB[:, 0].astype(np.float32)
    return np.maximum(h, 0.0)
