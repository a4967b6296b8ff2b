"""A real BRCA-M2C patch, the same recoloured as no hospital stains, and a checkpoint without a
trust model: the images of the trust-signal tests.

Imported by tests/test_domain.py and tests/widgets/test_classifier_dock.py (tests/ is on the
import path through its conftest.py).
"""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from napari_uam import pipeline


def _brca_image(brca_dir):
    path = sorted((brca_dir / "val").glob("*.jpg"))[0]
    return path, np.asarray(Image.open(path).convert("RGB"))


def _recoloured(rgb):
    """Channels rotated R->G->B->R: a stain no hospital uses, same tissue and texture."""
    return np.ascontiguousarray(rgb[..., [2, 0, 1]])


@pytest.fixture(scope="module")
def scratch_checkpoint(brca_dir, tmp_path_factory):
    """A model trained from scratch on two annotated patches: it has no training statistics."""
    import pandas as pd

    from napari_uam.training.finetune import FinetuneConfig, cells_from_annotation, finetune, save_finetuned

    cells = []
    for p in sorted((brca_dir / "train").glob("*.jpg"))[:2]:
        rgb = np.asarray(Image.open(p).convert("RGB"))
        labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
        table = pipeline.cell_geometry(labels, 0.5)
        table["class"] = np.where(np.arange(len(table)) % 3 == 0, "tumor", "non-tumor")
        cells.append(cells_from_annotation(rgb, labels, table, 0.5, p.stem[:23]))
    res = finetune(pd.concat(cells, ignore_index=True),
                   FinetuneConfig(init="scratch", arch="trans", epochs=1, lr=1e-3, val_fraction=0.5))  # fmt: skip
    assert res.domain is None and "from scratch" in res.trust["reason"]
    return save_finetuned(res, tmp_path_factory.mktemp("scratch") / "scratch.pt")
