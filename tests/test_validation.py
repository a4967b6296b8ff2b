"""Bad images and labels get a typed error with an actionable message; good ones are normalised."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uam.errors import InvalidImageError, InvalidLabelsError
from napari_uam.validation import as_labels, as_rgb_uint8

RGB = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image, message",
    [
        (RGB[..., 0], "grayscale"),
        (np.zeros((16, 16, 5), np.uint8), "5 channels"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.zeros((0, 16, 3), np.uint8), "at least"),
        (np.full((16, 16, 3), np.nan, np.float32), "NaN"),
        (np.full((16, 16, 3), 300.0), "Rescale"),
        (np.full((16, 16, 3), -1.0), "negative"),
        (np.zeros((2, 16, 16, 3), np.uint8), "2-D RGB"),
        (np.dstack([RGB, np.full((16, 16), 10, np.uint8)]), "transparent"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(InvalidImageError, match=message):
        as_rgb_uint8(image)


def test_accepted_images_are_normalised_without_touching_input():
    f01 = RGB.astype(np.float64) / 255.0
    assert np.array_equal(as_rgb_uint8(f01), RGB)
    assert np.array_equal(as_rgb_uint8(RGB.astype(np.uint16) * 257), RGB)
    rgba = np.dstack([RGB, np.full((16, 16), 255, np.uint8)])
    out = as_rgb_uint8(rgba)
    assert out.shape == (16, 16, 3) and np.array_equal(out, RGB)
    out[0, 0, 0] ^= 1
    assert rgba[0, 0, 0] == RGB[0, 0, 0]  # a copy: the user's data is never modified


def test_labels_checks():
    with pytest.raises(InvalidLabelsError, match="image is 16x16"):
        as_labels(np.zeros((8, 8), np.int32), (16, 16, 3))
    with pytest.raises(InvalidLabelsError, match="non-integer"):
        as_labels(np.full((4, 4), 0.5))
    with pytest.raises(InvalidLabelsError, match="negative"):
        as_labels(np.full((4, 4), -1))
    gaps = np.array([[0, 3], [7, 7]], np.uint16)
    assert as_labels(gaps).dtype == np.int32
