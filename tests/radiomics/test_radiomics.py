"""The feature engine behind ``radiomics.extract``: total on random label maps, and out of GPU
memory it retries in smaller chunks, then falls back to the CPU, with unchanged features."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

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
