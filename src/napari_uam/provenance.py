"""What a run records about itself: the one home of the provenance fields.

Every output of a run (the parquet metadata, ``<stem>.done.json``, the dock's exports) carries
a provenance record saying which code, model, settings and image made it. Whole images
(:func:`napari_uam.pipeline.run`) and tiled ones (:func:`napari_uam.batch.tiles.run_tiled`)
build it from the same fields here, so the two cannot drift apart.
"""

from __future__ import annotations

import hashlib
import platform
import time

import numpy as np
import pandas as pd
import scipy
import skimage

from . import __version__
from .radiomics.schema import DEFAULT_SCHEMA


def versions() -> dict:
    """Versions of the package and of the libraries its numbers depend on."""
    v = {
        "napari_uam": __version__,
        "python": platform.python_version(),
        "numpy": np.__version__,
        "pandas": pd.__version__,
        "scipy": scipy.__version__,
        "scikit-image": skimage.__version__,
    }
    try:
        import torch  # heavy: only its version is wanted, and it may be missing

        v["torch"] = torch.__version__
    except ImportError:
        pass
    return v


def utc_now() -> str:
    """The current time, as every record writes it (ISO 8601, UTC, seconds)."""
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def image_hash(image: np.ndarray) -> str:
    """Short SHA-256 of an image's pixels (to tie outputs to their input)."""
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()[:16]


def working_mpp() -> float:
    """The pixel size (um/px) at which nuclei are measured: the feature schema's."""
    return float(DEFAULT_SCHEMA.mpp)


def settings(mpp: float, *, measured: bool, radiomics_backend: str, device: str) -> dict:
    """The run's pixel size and, when cells were measured, how (schema, engine, device)."""
    out = {"mpp": mpp}
    if measured:
        out.update(working_mpp=working_mpp(), radiomics_backend=radiomics_backend,
                   schema_id=DEFAULT_SCHEMA.schema_id, device=device)  # fmt: skip
    return out


def model_fields(clf) -> dict:
    """Which classifier made the classes: id, architecture, weights hash, feature schema."""
    return {
        "model_id": clf.model_id,
        "model_arch": clf.arch,
        "model_sha256": clf.sha256,
        "model_schema_id": clf.schema_id,
    }


def tumor_model_fields(model) -> dict:
    """Which tumor-region model made the mask."""
    return {"tumor_model_id": model.model_id, "tumor_model_path": model.path}
