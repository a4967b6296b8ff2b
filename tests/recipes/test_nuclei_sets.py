"""The nucleus dataset layer (research/segmentation/nuclei_sets.py): every source reads."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_dataset_layer_reads_every_source(shared_data):
    sys.path.insert(0, str(REPO))
    from research.segmentation import nuclei_sets as N

    for name in N.SOURCES:
        ims = N.images(name, shared_data)
        assert ims, name
        im = ims[0]
        rgb = im.rgb()
        assert rgb.ndim == 3 and 0.2 <= im.mpp <= 0.6
        ann = im.instances() if im.kind == "instances" else im.points()
        assert (ann.max() > 0) if im.kind == "instances" else len(ann) > 0
