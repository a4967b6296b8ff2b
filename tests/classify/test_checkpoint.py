"""Classifier checkpoints (classify/checkpoint.py): saved on a GPU and loaded on the CPU, out of
GPU memory while classifying (smaller batches, then the CPU), a model that gives NaN refused."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch

from napari_uam.classify import checkpoint as ckpt_mod
from napari_uam.segment import learned

RNG = np.random.default_rng(9)
HAS_CUDA = torch.cuda.is_available()
needs_weights = pytest.mark.skipif(
    not ckpt_mod.default_weights_path().is_file(), reason="default UAM weights not installed"
)


def test_classify_refuses_nan_checkpoint(tmp_path):
    import subprocess
    import sys

    import torch

    from napari_uam.classify.checkpoint import default_weights_path

    ckpt = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    name = next(k for k, v in ckpt["state_dict"].items() if v.is_floating_point() and v.ndim == 2)
    ckpt["state_dict"][name] = torch.full_like(ckpt["state_dict"][name], float("nan"))
    bad = tmp_path / "nan.pt"
    torch.save(ckpt, bad)
    out = tmp_path / "out"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_uam.cli",
            "classify",
            "--sample",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--model",
            str(bad),
            "--formats",
            "csv",
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode != 0, proc.stdout
    assert "NaN or infinite class probabilities" in proc.stderr
    assert not list(out.glob("*_cells.csv"))


def _save_as_if_from_gpu(obj, path, monkeypatch):
    """torch.save ``obj`` with every tensor tagged as stored on cuda:0 (as a GPU run writes it)."""
    import torch.serialization as ser

    with monkeypatch.context() as m:
        m.setattr(ser, "location_tag", lambda storage: "cuda:0")
        torch.save(obj, path)


@needs_weights
def test_checkpoint_saved_on_a_gpu_loads_on_the_cpu(tmp_path, monkeypatch):
    raw = torch.load(ckpt_mod.default_weights_path(), map_location="cpu", weights_only=True)
    gpu_file = tmp_path / "from_gpu.pt"
    _save_as_if_from_gpu(raw, gpu_file, monkeypatch)
    if not HAS_CUDA:  # the file really needs CUDA without map_location
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(gpu_file, weights_only=True)
    clf = ckpt_mod.load_classifier(gpu_file, device="cpu")
    assert clf.device == "cpu" and next(clf.model.parameters()).device.type == "cpu"
    # The segmentation weights too.
    seg = torch.load(learned.WEIGHTS_PATH, map_location="cpu", weights_only=True)
    seg_file = tmp_path / "seg_from_gpu.pt"
    _save_as_if_from_gpu(seg, seg_file, monkeypatch)
    assert set(learned.load_checkpoint(seg_file)) >= {"config", "state_dict", "net_mpp"}


class _OOMModel(torch.nn.Module):
    """Wraps a model; raises CUDA out-of-memory for batches over ``max_rows`` or off the CPU."""

    def __init__(self, inner, max_rows=None):
        super().__init__()
        self.inner, self.max_rows, self.calls = inner, max_rows, []

    def forward(self, x):
        self.calls.append((x.device.type, x.shape[0]))
        if x.device.type != "cpu" or (self.max_rows is not None and x.shape[0] > self.max_rows):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
        return self.inner(x)


def _features(clf, n=3000):
    return pd.DataFrame(RNG.normal(size=(n, len(clf.feature_names))), columns=clf.feature_names)


@needs_weights
def test_classifier_out_of_memory_retries_smaller_batches():
    clf = ckpt_mod.load_classifier(device="cpu")
    feats = _features(clf)
    expected = clf.predict_proba(feats)
    clf.model = _OOMModel(clf.model, max_rows=300)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = clf.predict_proba(feats, batch_size=4096)
    text = " ".join(str(w.message) for w in caught)
    assert "retrying with batches of 1024" in text and "retrying with batches of 256" in text
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert clf.device == "cpu" and max(n for _, n in clf.model.calls[-5:]) <= 256


@needs_weights
def test_classifier_out_of_memory_falls_back_to_the_cpu():
    clf = ckpt_mod.load_classifier(device="cpu")
    feats = _features(clf, 600)
    expected = clf.predict_proba(feats)
    # Any non-CPU device takes the same path as CUDA; "meta" exists on every torch build.
    clf.model, clf.device = _OOMModel(clf.model), "meta"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = clf.predict_proba(feats, batch_size=4096)
    text = " ".join(str(w.message) for w in caught)
    assert "retrying with batches of 1024" in text and "on the CPU instead" in text
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert clf.device == "cpu"
    # Already on the CPU with the smallest batch: the error is not hidden.
    clf.model.max_rows = 0
    with pytest.raises(torch.cuda.OutOfMemoryError), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        clf.predict_proba(feats)


@needs_weights
def test_logit_offset_and_temperature_give_softmax_of_shifted_logits(tmp_path):
    """A checkpoint's calibration is softmax((logits + offset) / T), computed here by hand from
    the network's raw logits; the class call follows the shifted probability."""
    raw = torch.load(ckpt_mod.default_weights_path(), map_location="cpu", weights_only=True)
    raw["calibration"] = {"temperature": 1.5, "logit_offset": [0.0, -0.8]}
    path = tmp_path / "shifted.pt"
    torch.save(raw, path)
    clf = ckpt_mod.load_classifier(path, device="cpu")
    feats = _features(clf, 64)
    x = torch.from_numpy(clf.normalizer.transform(clf.check_features(feats)))
    with torch.no_grad():
        logits = clf.model(x).double().numpy()
    z = (logits + np.array([0.0, -0.8])) / 1.5
    want = np.exp(z - z.max(1, keepdims=True))
    want /= want.sum(1, keepdims=True)
    got = clf.predict_proba(feats)
    np.testing.assert_allclose(got, want, atol=1e-5)
    np.testing.assert_array_equal(clf.predict(feats), want.argmax(1))
    # Without the offset the same cells are called tumor more often (the offset is negative).
    raw["calibration"] = {"temperature": 1.5}
    torch.save(raw, path)
    plain = ckpt_mod.load_classifier(path, device="cpu").predict_proba(feats)
    assert (plain[:, 1] >= got[:, 1] - 1e-7).all() and (plain[:, 1] > got[:, 1]).any()


@needs_weights
@pytest.mark.parametrize("offset", [[0.0], [0.0, float("nan")], "big"])
def test_invalid_logit_offset_is_refused_with_a_clear_message(tmp_path, offset):
    raw = torch.load(ckpt_mod.default_weights_path(), map_location="cpu", weights_only=True)
    raw["calibration"] = {"temperature": 1.0, "logit_offset": offset}
    path = tmp_path / "bad_offset.pt"
    torch.save(raw, path)
    with pytest.raises(ckpt_mod.CheckpointError, match="invalid calibration logit offset"):
        ckpt_mod.load_classifier(path, device="cpu")


@needs_weights
@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU (the CPU path is checked by the tests above)")
def test_shipped_classifier_gives_the_same_probabilities_on_the_gpu_and_the_cpu():
    """The shipped calibration (logit offset, then temperature) applied on the GPU as on the CPU."""
    cpu = ckpt_mod.load_classifier(device="cpu")
    gpu = ckpt_mod.load_classifier(device="cuda")
    assert np.any(cpu.logit_offset != 0)  # the offset is part of what is compared
    feats = _features(cpu, 4096)
    pg, pc = gpu.predict_proba(feats), cpu.predict_proba(feats)
    # cuDNN may convolve in TF32 on the GPU: probabilities agree to 1e-3, and so do the calls
    # except where a cell sits within that of the decision.
    np.testing.assert_allclose(pg, pc, atol=1e-3)
    undecided = np.abs(pc[:, cpu.tumor_class] - 0.5) < 1e-3
    assert np.array_equal(pg.argmax(1)[~undecided], pc.argmax(1)[~undecided])
