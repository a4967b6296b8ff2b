"""Large real H&E fields built from the development data (CoNSeP, BRCA-M2C), and the engine's
one-time start-up paid before timing it.

Imported by tests/segment/, tests/radiomics/ and tests/widgets/ (tests/ is on the import path
through its conftest.py).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _consep(consep_dir, name="train_1.jpg"):
    return np.asarray(Image.open(consep_dir / name).convert("RGB"))


def _big_field(consep_dir) -> np.ndarray:
    """A 3000x3000 field at 0.25 um/px: nine real CoNSeP fields side by side."""
    tiles = [_consep(consep_dir, f"train_{i}.jpg")[:1000, :1000] for i in range(1, 10)]
    return np.ascontiguousarray(np.vstack([np.hstack(tiles[r * 3 : r * 3 + 3]) for r in range(3)]))


def _brca_field(brca_dir, n=6, side=460) -> np.ndarray:
    """A 2760x2760 field at 0.5 um/px: 36 real BRCA-M2C patches side by side (about 9,500
    watershed nuclei, several seconds of measuring on a small machine)."""
    paths = sorted((brca_dir / "train").glob("*.jpg"))[: n * n]
    tiles = [np.asarray(Image.open(p).convert("RGB"))[:side, :side] for p in paths]
    return np.ascontiguousarray(np.vstack([np.hstack(tiles[r * n : r * n + n]) for r in range(n)]))


def _load_engine_once():
    """The first measurement in a process loads the compiled radiomics kernels and colour
    tables (about a second, once); pay it before timing how often the engine polls."""
    from napari_uam import pipeline
    from napari_uam.sample_data import SAMPLE_MPP, sample_image

    crop = np.ascontiguousarray(sample_image()[:256, :256])
    pipeline.measure_cells(crop, pipeline.segment_nuclei(crop, SAMPLE_MPP, backend="watershed"), SAMPLE_MPP,
                           device="cpu")  # fmt: skip
