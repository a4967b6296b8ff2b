"""The pixel size: one rule for every entry point, and its estimate from the nuclei."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_uam import pipeline
from napari_uam.pixel_size import estimate_mpp


@pytest.mark.parametrize("folder,true_mpp", [("brca_m2c/val", 0.5), ("gbm40", 0.25)])
def test_pixel_size_estimate_on_real_20x_and_40x(shared_data, folder, true_mpp):
    files = sorted((shared_data / folder).glob("*.jpg"))
    if not files:
        pytest.skip(f"{folder} absent from ../shared/data")
    estimates = []
    for f in files[:3]:
        rgb = np.asarray(Image.open(f).convert("RGB"))
        est = estimate_mpp(pipeline.segment_nuclei(rgb, true_mpp), true_mpp)
        estimates.append(est.estimate)
        assert not est.disagrees
    assert abs(np.median(estimates) / true_mpp - 1) < 0.25, estimates


def test_pixel_size_warning_at_twice_the_pixel_size(shared_data):
    from napari_uam.pixel_size import PixelSizeWarning

    rgb = np.asarray(Image.open(sorted((shared_data / "gbm40").glob("*.jpg"))[0]).convert("RGB"))
    with pytest.warns(PixelSizeWarning, match="um/px"):
        pipeline.segment_nuclei(rgb, 0.5)  # a 40x field run as if 20x


def test_run_refuses_boolean_mpp(tmp_path):
    from napari_uam import pipeline
    from napari_uam.errors import InvalidImageError
    from napari_uam.io.reader import read_image

    path = tmp_path / "patch.png"
    Image.fromarray(np.full((64, 64, 3), 220, np.uint8)).save(path)
    image, _ = read_image(path)
    with pytest.raises(InvalidImageError, match="boolean"):
        pipeline.run(image, True)


def test_one_pixel_size_rule_for_pipeline_and_segmenter():
    from napari_uam import pipeline, pixel_size
    from napari_uam.errors import InvalidImageError
    from napari_uam.segment import segment

    rgb = np.full((32, 32, 3), 255, np.uint8)
    for bad in (0.02, 25.0, True):  # 0.02 passed the segmenter's old 0.01-20 check
        with pytest.raises(InvalidImageError, match="Pixel size"):
            segment(rgb, bad, backend="watershed")
        with pytest.raises(InvalidImageError, match="Pixel size"):
            pipeline.segment_nuclei(rgb, bad)
    assert pixel_size.check_mpp(0.05) == 0.05 and pixel_size.check_mpp("20") == 20.0


def test_file_resolutions_give_one_pixel_size_rule():
    """TIFF tags, PNG / JPEG dpi and slide properties read the pixel size by one rule
    (pixel_size.mpp_from_resolution): the unit, then the accepted range."""
    from napari_uam.pixel_size import mpp_from_dpi, mpp_from_resolution

    assert mpp_from_resolution(40000, 3) == mpp_from_resolution(40000, "centimeter") == 0.25
    assert abs(mpp_from_resolution(101600, "INCH") - 0.25) < 1e-12
    assert mpp_from_resolution(72, 2) is None  # a screen default is no microscope scale
    assert mpp_from_resolution(40000, 1) is None and mpp_from_resolution("n/a", "inch") is None
    assert abs(mpp_from_dpi((101600, 101600)) - 0.25) < 1e-12
    # 1100 dpi is microscope-scale by its size but 23 um/px is outside the accepted range: the
    # region reader used to take it while the image reader refused it.
    assert mpp_from_dpi((1100, 1100)) is None and mpp_from_dpi((300, 300)) is None and mpp_from_dpi(None) is None
