"""A slide opens in napari as a lazy multiscale layer of its own pyramid (issue 20): the reader
hook returns Dask levels whose chunks are the file's pixels, through OpenSlide (SVS) and
tifffile (pyramidal TIFF, levels as SubIFDs or as pages); patches still open whole."""

from __future__ import annotations

import numpy as np
import pytest

from napari_uam import validation
from napari_uam.io.napari_reader import PYRAMID_KEY, get_reader
from napari_uam.io.pyramid import open_pyramid, read_level_region

from _slides import write_pyramid, write_svs

pytest.importorskip("openslide")


@pytest.fixture
def mosaic(consep_mosaic):
    return consep_mosaic([1, 2, 3, 4], 512)  # 1024 x 1024 of real CoNSeP H&E


@pytest.mark.parametrize("kind", ["svs", "subifds", "pages"])
def test_a_large_file_opens_as_a_lazy_pyramid(tmp_path, mosaic, monkeypatch, kind):
    path = tmp_path / ("slide.svs" if kind == "svs" else "slide.tif")
    if kind == "svs":
        write_svs(path, mosaic, mpp=0.252)
    else:
        write_pyramid(path, mosaic, mpp=0.5, subifds=kind == "subifds")
    monkeypatch.setattr(validation, "MAX_PIXELS", 500_000)  # a 1 Mpx file counts as a slide
    [(levels, meta, kind_)] = get_reader(str(path))(str(path))
    assert kind_ == "image" and meta["multiscale"] and meta["rgb"] and meta["metadata"][PYRAMID_KEY]
    assert meta["metadata"]["mpp"] == pytest.approx(0.252 if kind == "svs" else 0.5)
    assert levels[0].shape == (1024, 1024, 3) and levels[0].dtype == np.uint8
    assert len(levels) == (2 if kind == "svs" else 3)
    assert type(levels[0]).__module__.startswith("dask")  # nothing decoded yet
    # A chunk anywhere (crossing the file's own tiles) is the file's pixels; a lower level
    # is the file's stored reduction, not a recomputation.
    np.testing.assert_array_equal(np.asarray(levels[0][300:700, 250:900]), mosaic[300:700, 250:900])
    np.testing.assert_array_equal(
        np.asarray(levels[1]), mosaic[:: 4 if kind == "svs" else 2, :: 4 if kind == "svs" else 2]
    )


def test_a_patch_still_opens_whole(tmp_path, mosaic):
    path = tmp_path / "patch.tif"
    write_pyramid(path, mosaic, mpp=0.5)
    [(data, meta, _)] = get_reader(str(path))(str(path))
    assert isinstance(data, np.ndarray) and not meta.get("multiscale")
    np.testing.assert_array_equal(data, mosaic)


def test_level_regions_match_openslide_level_coordinates(tmp_path, mosaic):
    """OpenSlide takes a level's region at level-0 coordinates: the reader converts them."""
    path = tmp_path / "s.svs"
    write_svs(path, mosaic)
    pyr = open_pyramid(path)
    assert pyr.shapes == ((1024, 1024), (256, 256)) and pyr.downsamples == (1.0, 4.0)
    np.testing.assert_array_equal(read_level_region(pyr, 1, 100, 180, 40, 200), mosaic[::4, ::4][100:180, 40:200])
