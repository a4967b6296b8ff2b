"""The feature engine behind ``radiomics.extract``: total on random label maps, and out of GPU
memory it retries in smaller chunks, then falls back to the CPU, with unchanged features."""

from __future__ import annotations

import threading
import time
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from _fields import _brca_field, _load_engine_once
from napari_uam import radiomics
from napari_uam.radiomics import fast_backend

RNG = np.random.default_rng(9)


def _cells():
    img = RNG.integers(60, 250, (48, 48, 3), dtype=np.uint8)
    lab = np.zeros((48, 48), np.int32)
    lab[4:14, 4:16], lab[20:32, 18:30], lab[36:44, 6:12] = 1, 2, 3
    return img, lab


@pytest.mark.parametrize("always", [False, True], ids=["smaller-chunks", "cpu-fallback"])
def test_radiomics_out_of_memory_retries_then_falls_back(monkeypatch, always):
    img, lab = _cells()
    expected = radiomics.extract(img, lab, device="cpu")
    real = fast_backend._extract_batch
    seen = []

    def flaky(images, labels, schema, device="numpy", progress=None, chunk_pixels=None, cuda_kernels=None, cancel=None):
        seen.append((device, chunk_pixels))
        if device != "numpy" and (always or chunk_pixels > radiomics.MIN_OOM_CHUNK_PIXELS):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return real(images, labels, schema, device, progress, chunk_pixels, cuda_kernels, cancel)

    monkeypatch.setattr(fast_backend, "_extract_batch", flaky)
    # The torch engine on the CPU stands in for CUDA: the fallback logic is device-agnostic.
    monkeypatch.setattr(radiomics, "_engine_device", lambda device: "cpu")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = radiomics.extract(img, lab, device="cpu")
    text = " ".join(str(w.message) for w in caught)
    assert "retrying in chunks of" in text
    assert ("on the CPU instead" in text) == always
    assert seen[-1][0] == ("numpy" if always else "cpu")
    pd.testing.assert_frame_equal(got, expected, rtol=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    lab=arrays(np.int32, st.tuples(st.integers(8, 20), st.integers(8, 20)), elements=st.integers(0, 6)),
    seed=st.integers(0, 2**16),
)
def test_feature_engine_is_total_on_random_label_maps(lab, seed):
    img = np.random.default_rng(seed).integers(0, 256, lab.shape + (3,), dtype=np.uint8)
    df = radiomics.extract(img, lab, device="cpu")
    ids = np.unique(lab[lab > 0])
    assert df.index.tolist() == ids.tolist()  # one row per label, in label order
    assert df.shape[1] == radiomics.DEFAULT_SCHEMA.n_features
    shape = df[[c for c in df.columns if c.startswith("shape2D_")]]
    # Elongation is 0/0 (NaN, as pyradiomics) for one-pixel-wide cells; the rest is finite.
    finite = shape.drop(columns=[c for c in shape.columns if c.endswith("Elongation")])
    assert np.all(np.isfinite(finite.to_numpy()))
    assert np.all(np.isfinite(shape.to_numpy()) | np.isnan(shape.to_numpy()))


# -------------------------------------------- Cancel while measuring, and the faster rings (issue 18)
def test_measuring_polls_cancel_every_fraction_of_a_second(brca_dir):
    """pipeline.measure_cells on a 2760x2760 field (about 9,500 nuclei): the engine measures in
    chunks of about 0.1 s and polls the cancel between them and between its views (stain-
    normalised image, rings, context), never going a second without a poll (it polled twice in
    7 s: before and after); a cancel 1 s in raises within a second. Features are those of a run
    without a cancel callable."""
    from napari_uam import pipeline
    from napari_uam.errors import CancelledError

    rgb = _brca_field(brca_dir)
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    _load_engine_once()
    polls = []
    t0 = time.perf_counter()
    table = pipeline.measure_cells(rgb, labels, 0.5, device="cpu", cancel=lambda: polls.append(time.perf_counter()))
    gaps = np.diff([t0, *polls, time.perf_counter()])
    assert len(polls) > 20 and gaps.max() < 1.0, f"{len(polls)} polls, longest gap {gaps.max():.2f} s"
    plain = pipeline.measure_cells(rgb, labels, 0.5, device="cpu")
    assert np.array_equal(table.to_numpy(np.float64), plain.to_numpy(np.float64), equal_nan=True)

    flag = threading.Event()
    timer = threading.Timer(1.0, flag.set)
    timer.start()
    t0 = time.monotonic()
    with pytest.raises(CancelledError):
        pipeline.measure_cells(rgb, labels, 0.5, device="cpu", cancel=flag.is_set)
    late = time.monotonic() - t0 - 1.0
    timer.cancel()
    assert late < 1.0, f"measuring ran on {late:.1f} s after the cancel"


def test_tiled_rings_and_sort_free_centroids_equal_the_whole_image_versions(brca_dir):
    """The two steps made faster for it give the numbers they gave: rings grown tile by tile
    equal skimage's expand_labels on the whole image (real nuclei, and dense random cells with
    many equidistant ties, tiles cut through cells); centroids by bincount equal the sorting
    version."""
    from skimage.segmentation import expand_labels

    from napari_uam import pipeline
    from napari_uam import radiomics as R
    from napari_uam.segment import metrics as M

    def whole(lab, d):
        grown = expand_labels(lab, distance=d)
        grown[lab > 0] = 0
        return grown

    rgb = _brca_field(brca_dir, n=3)
    real = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    assert np.array_equal(R.ring_labels(real, 4), whole(real, 4))
    np.testing.assert_array_equal(M.centroids(real), M._centroids_sorted(real))
    rng = np.random.default_rng(0)
    for trial in range(6):
        lab = np.zeros((300, 300), np.int32)
        for k in range(1, 400):
            y, x = rng.integers(0, 300, 2)
            lab[y : y + rng.integers(1, 6), x : x + rng.integers(1, 6)] = 7 * k
        for d in (1, 3, 7):
            for tile in (37, 64):
                R.RING_TILE_PX = tile
                try:
                    assert np.array_equal(R.ring_labels(lab, d), whole(lab, d)), (trial, d, tile)
                finally:
                    R.RING_TILE_PX = 512
        np.testing.assert_array_equal(M.centroids(lab), M._centroids_sorted(lab))
