"""Feature schema v2: stain-normalised channels, cytoplasm ring and neighbourhood context.

Parity: every radiomics column of v2 (nucleus hematoxylin and eosin, the same after stain
normalisation, the ring) is computed by both backends from the same integers, so the fast
engine must match pyradiomics within 1e-6 on real nuclei; the context columns are NumPy on
those features. The context is checked by hand on a layout whose distances are known.
"""

from __future__ import annotations

import importlib.util
import warnings

import numpy as np
import pandas as pd
import pytest

from napari_uam.errors import SchemaMismatchError
from napari_uam.radiomics import extract, ring_labels
from napari_uam.radiomics.context import K, RADIUS_UM, context_features, context_names
from napari_uam.radiomics.schema import SCHEMA_V1, SCHEMA_V2, schema_serves
from napari_uam.radiomics.stain_norm import estimate_stains, normalise_stain

HAVE_PYRADIOMICS = (
    importlib.util.find_spec("radiomics") is not None and importlib.util.find_spec("SimpleITK") is not None
)
REL, ABS = 1e-6, 1e-9


def _consep_crop(consep_dir, crop=160):
    from PIL import Image

    from napari_uam.scale import rescale_image, resize_labels

    img = np.asarray(Image.open(consep_dir / "train_1.jpg").convert("RGB"))
    lab = np.asarray(Image.open(consep_dir / "train_1_inst.png")).astype(np.int32)
    small = rescale_image(img, 0.25 / SCHEMA_V2.mpp)
    lab = resize_labels(lab, small.shape[:2])
    return small[:crop, :crop].copy(), np.ascontiguousarray(lab[:crop, :crop])


def test_v2_columns_hold_v1_and_every_view():
    names = SCHEMA_V2.feature_names
    assert set(SCHEMA_V1.feature_names) <= set(names)
    for prefix in ("eosin_", "norm_hematoxylin_", "norm_eosin_", "ring_hematoxylin_firstorder_",
                   "ring_eosin_firstorder_", "ctx_"):  # fmt: skip
        assert any(n.startswith(prefix) for n in names), prefix
    assert len(names) == len(set(names))
    assert schema_serves("uam-radiomics-v2", "uam-radiomics-v1")
    assert not schema_serves("uam-radiomics-v1", "uam-radiomics-v2")


@pytest.mark.skipif(not HAVE_PYRADIOMICS, reason="pyradiomics (and SimpleITK) not installed")
def test_v2_fast_matches_pyradiomics_on_real_nuclei(consep_dir):
    img, lab = _consep_crop(consep_dir)
    fast = extract(img, lab, schema=SCHEMA_V2, device="cpu")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref = extract(img, lab, schema=SCHEMA_V2, backend="pyradiomics")
    assert list(fast.columns) == list(SCHEMA_V2.feature_names) == list(ref.columns)
    assert np.array_equal(fast.index, ref.index) and len(fast) > 20
    a, b = fast.to_numpy(), ref.to_numpy()
    both_nan = np.isnan(a) & np.isnan(b)
    with np.errstate(invalid="ignore"):
        close = np.abs(a - b) <= np.maximum(REL * np.abs(b), ABS)
    bad = ~(close | both_nan)
    cols = np.array(fast.columns)[bad.any(axis=0)]
    assert not bad.any(), f"fast vs pyradiomics differ in {list(cols[:10])}"
    # Every view produced numbers (not all NaN) on real nuclei.
    for prefix in ("norm_eosin_glcm_", "ring_eosin_firstorder_Mean", "ctx_nn_um"):
        assert np.isfinite(fast.filter(like=prefix).to_numpy()).mean() > 0.9, prefix


def test_ring_is_around_the_nucleus_not_on_it():
    lab = np.zeros((40, 60), np.int32)
    lab[10:20, 10:20] = 1
    lab[10:20, 21:31] = 2  # touching neighbour one pixel away
    ring = ring_labels(lab, 3)
    assert not np.any(ring[lab > 0])
    assert set(np.unique(ring)) == {0, 1, 2}
    # Pixels between the two nuclei go to the nearer one; the far side of each belongs to it.
    assert ring[15, 7] == 1 and ring[15, 33] == 2
    assert ring[15, 40] == 0  # beyond 3 px


def test_context_on_a_hand_checkable_layout():
    """Nine nuclei on a 3 x 3 grid 10 um apart: distances and densities are known exactly."""
    yy, xx = np.meshgrid(np.arange(3) * 10.0, np.arange(3) * 10.0, indexing="ij")
    cents = np.stack([yy.ravel(), xx.ravel()], axis=1)
    table = pd.DataFrame({c: np.arange(9, dtype=float) for c in SCHEMA_V2.base.feature_names})
    table["norm_hematoxylin_firstorder_Mean"] = np.arange(9, dtype=float)
    table["norm_eosin_firstorder_Mean"] = 1.0
    table["norm_hematoxylin_glcm_JointEntropy"] = 2.0
    ctx = context_features(cents, table, SCHEMA_V2)
    assert list(ctx.columns) == list(context_names(SCHEMA_V2))
    # Centre nucleus (index 4): its 8 neighbours = 4 at 10 um + 4 at 10*sqrt(2) um.
    assert K == 8
    assert ctx.loc[4, "ctx_nn_um"] == pytest.approx((4 * 10 + 4 * 10 * np.sqrt(2)) / 8)
    # All 8 others lie within 25 um of the centre (max 14.1 um); a corner sees the 8 others at
    # <= 28.3 um: the far corner (28.3) is outside the radius.
    area = np.pi * RADIUS_UM**2
    assert ctx.loc[4, "ctx_density"] == pytest.approx(8 / area * 1000)
    assert ctx.loc[0, "ctx_density"] == pytest.approx(7 / area * 1000)
    # Mean of the neighbours' value 0..8 without the centre's 4 is 4; delta 0.
    assert ctx.loc[4, "ctx_mean_norm_hematoxylin_firstorder_Mean"] == pytest.approx(4.0)
    assert ctx.loc[4, "ctx_delta_norm_hematoxylin_firstorder_Mean"] == pytest.approx(0.0)
    assert ctx.loc[0, "ctx_delta_norm_eosin_firstorder_Mean"] == pytest.approx(0.0)
    # One nucleus alone: no context.
    alone = context_features(cents[:1], table.iloc[:1], SCHEMA_V2)
    assert alone.isna().all().all()


def test_stain_normalisation_undoes_a_stain_change(consep_dir):
    """The same tissue stained darker and pinker normalises to (nearly) the same image."""
    from PIL import Image

    from napari_uam.segment.stain import HED_FROM_RGB, RGB_FROM_HED

    img = np.asarray(Image.open(consep_dir / "train_2.jpg").convert("RGB"))[:400, :400]
    lut = -np.log10((np.arange(256) + 1.0) / 256.0)
    conc = lut[img] @ HED_FROM_RGB
    conc = conc * np.array([1.35, 1.3, 1.0])  # more hematoxylin and more eosin uptake
    restained = np.clip(np.rint(256.0 * 10 ** -(np.maximum(conc @ RGB_FROM_HED, 0)) - 1), 0, 255).astype(np.uint8)
    before = np.abs(img.astype(float) - restained).mean()
    a, b = normalise_stain(img), normalise_stain(restained)
    after = np.abs(a.astype(float) - b).mean()
    assert estimate_stains(img).ok and estimate_stains(restained).ok
    assert after < 0.5 * before, (before, after)


def test_blank_image_keeps_its_pixels():
    blank = np.full((64, 64, 3), 240, np.uint8)
    est = estimate_stains(blank)
    assert not est.ok and est.tissue_fraction == 0.0
    assert normalise_stain(blank, est) is blank


def test_v1_checkpoint_is_refused_with_a_clear_message(tmp_path):
    from napari_uam.models import build_model
    from napari_uam.classify.checkpoint import load_classifier, save_checkpoint
    from napari_uam.classify.normalize import Normalizer

    feats = list(SCHEMA_V1.feature_names)
    model = build_model("trans", len(feats), 2)
    norm = Normalizer.fit(np.random.default_rng(0).normal(size=(50, len(feats))))
    path = tmp_path / "old_v1.pt"
    save_checkpoint(path, model, feature_names=feats, schema_id=SCHEMA_V1.schema_id, mpp=0.5,
                    class_names=["non-tumor", "tumor"], tumor_class=1, normalizer=norm)  # fmt: skip
    with pytest.raises(SchemaMismatchError, match=r"uam-radiomics-v1.*Fine-tune or retrain"):
        load_classifier(path, device="cpu")
