"""The shipped sample H&E patch (one BRCA-M2C field; licence and attribution in docs/licences.md)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

SAMPLE_PATH = Path(__file__).with_name("brca_m2c_TCGA-A8-A082.jpg")
#: Microns per pixel of the sample (BRCA-M2C fields are 20x).
SAMPLE_MPP = 0.5


def sample_image() -> np.ndarray:
    """The sample patch as an (H, W, 3) uint8 RGB array."""
    with Image.open(SAMPLE_PATH) as im:
        return np.asarray(im.convert("RGB"))


def load_sample():
    """npe2 sample-data hook: the sample as a napari image layer with its pixel size."""
    return [
        (
            sample_image(),
            {
                "name": "H&E sample (BRCA-M2C, TCGA-A8-A082)",
                "rgb": True,
                "metadata": {"mpp": SAMPLE_MPP, "source": str(SAMPLE_PATH.name)},
            },
            "image",
        )
    ]
