"""Region reads of large images (io/region_reader.py): what the tiled path reads, and what it leaves as it was."""

from __future__ import annotations

import numpy as np
from PIL import Image


def test_tiled_read_keeps_pillow_pixel_limit(tmp_path):
    from napari_uam.batch import tiles
    from napari_uam.io import region_reader

    path = tmp_path / "patch.png"
    Image.fromarray(np.full((64, 80, 3), 200, np.uint8)).save(path)
    before = Image.MAX_IMAGE_PIXELS
    assert before is not None  # Pillow's default guard is on in a fresh process
    region_reader._whole.cache_clear()
    assert tiles.probe(path)[:2] == (64, 80)
    region = tiles.RegionReader(str(path)).read(0, 32, 0, 40)  # a PNG is decoded whole
    assert region.shape == (32, 40, 3)
    assert Image.MAX_IMAGE_PIXELS == before
