"""Shared fixtures: real data is read from ``../shared/data`` beside the checkout."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NAPARI_UAM_DATA", REPO.parent / "shared" / "data"))


def _need(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.is_dir():
        pytest.skip(
            f"real H&E data not found at {path}: put the shared data folder beside the "
            "checkout (../shared/data) or set NAPARI_UAM_DATA"
        )
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """Root of the shared real-data folder (skips the test when absent)."""
    return _need("")


@pytest.fixture(scope="session")
def consep_dir() -> Path:
    return _need("consep")


@pytest.fixture(scope="session")
def brca_dir() -> Path:
    return _need("brca_m2c")


@pytest.fixture(scope="session")
def regions_dir() -> Path:
    return _need("regions")


@pytest.fixture(scope="session")
def consep_mosaic(consep_dir):
    """``make(ids, crop, per_row=2)``: real CoNSeP training fields (40x, 0.25 um/px) cropped to
    ``crop`` x ``crop`` and laid out ``per_row`` to a row: the large images of the tiled tests."""

    def make(ids, crop: int, per_row: int = 2) -> np.ndarray:
        ims = [np.asarray(Image.open(consep_dir / f"train_{i}.jpg").convert("RGB"))[:crop, :crop] for i in ids]
        rows = [np.concatenate(ims[k : k + per_row], axis=1) for k in range(0, len(ims), per_row)]
        return np.ascontiguousarray(np.concatenate(rows, axis=0))

    return make
