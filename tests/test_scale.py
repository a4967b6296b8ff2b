"""Resampling (scale.py): its limits are checked on the shape alone, before any allocation."""

from __future__ import annotations

import numpy as np
import pytest


def test_resampling_limits_are_checked_on_the_shape_alone():
    from napari_uam.errors import InvalidImageError
    from napari_uam.scale import ResampleWarning, check_resample, rescale_image

    # 491x491 at 20 um/px to the segmenter's 0.25: 39280x39280, once 17 GiB of floats.
    with pytest.raises(InvalidImageError, match="enlargement"):
        check_resample((491, 491), 20.0, 0.25)
    # The last guard inside the resampler itself, before any allocation.
    with pytest.raises(InvalidImageError, match="over the 100 Mpx limit"):
        rescale_image(np.zeros((491, 491, 3), np.uint8), 80.0)
    # Below the enlargement limit but over the pixel limit.
    with pytest.raises(InvalidImageError, match="over the 100 Mpx limit"):
        check_resample((4000, 4000), 1.0, 0.25)
    with pytest.warns(ResampleWarning, match="slower"):
        assert check_resample((491, 491), 2.0, 0.25) == 8.0
    assert check_resample((491, 491), 0.5, 0.25) == 2.0  # 20x to 40x: nothing said
