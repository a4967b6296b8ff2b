"""Bad inputs and faults of issue 9: each gets a clear message or a documented behaviour.

Every test here is a row of ``docs/robustness.md``. Nothing allocates a huge array (huge images
are ``np.broadcast_to`` views or a lowered limit) and GPU faults are simulated on the CPU, so
the file runs anywhere in a few seconds.
"""

from __future__ import annotations

import errno
import io
import os
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from napari_uam import pipeline, radiomics, validation
from napari_uam.cli import main
from napari_uam.device import resolve_device
from napari_uam.errors import (
    CheckpointError,
    DeviceError,
    InvalidImageError,
    NoNucleiError,
)
from napari_uam.io import atomic, export_cells, read_image
from napari_uam.io import export as export_mod
from napari_uam.io.writers import write_cells_csv, write_cells_parquet, write_geojson, write_labels_tiff
from napari_uam.models import ssm
from napari_uam.radiomics import fast_backend
from napari_uam.sample_data import sample_image
from napari_uam.segment import learned, metrics, resolve_backend
from napari_uam.classify import checkpoint as ckpt_mod

RNG = np.random.default_rng(9)
HAS_CUDA = torch.cuda.is_available()
needs_weights = pytest.mark.skipif(
    not ckpt_mod.default_weights_path().is_file(), reason="default UAM weights not installed"
)


def _fluorescence_like(side: int = 128) -> np.ndarray:
    """Black background with bright blue (DAPI-like) round nuclei: a dark-field image."""
    img = RNG.integers(0, 8, (side, side, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for cy, cx in RNG.integers(10, side - 10, (15, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36, 2] = 220
    return img


def _labels():
    lab = np.zeros((40, 50), np.int32)
    lab[5:12, 5:14] = 1
    lab[20:30, 30:45] = 2
    return lab


def _table(lab):
    ids = np.unique(lab)[1:]
    return pd.DataFrame(
        {
            "label": ids,
            "y": ids * 1.0,
            "x": ids * 2.0,
            "area_um2": ids * 3.0,
            "class": ["tumor", "non-tumor"],
            "tumor_probability": [0.9, 0.1],
        }
    )


# --------------------------------------------------------------------------- bad images
def test_cmyk_like_four_channel_image_is_refused(tmp_path):
    rgb = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cmyk = np.dstack([rgb, RNG.integers(0, 256, (32, 32), dtype=np.uint8)])  # 4th = black ink
    with pytest.raises(InvalidImageError, match="4 channels.*CMYK"):
        validation.as_rgb_uint8(cmyk)
    # A CMYK TIFF is read as stored (4 channels) and refused by the same check.
    tif = tmp_path / "cmyk.tif"
    tifffile.imwrite(tif, cmyk, photometric="separated")
    data, _ = read_image(tif)
    with pytest.raises(InvalidImageError, match="CMYK"):
        pipeline.segment_nuclei(data, 0.5)
    # A CMYK JPEG is converted to RGB by the reader (Pillow knows the colour model).
    jpg = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(jpg)
    data, _ = read_image(jpg)
    assert data.shape == (32, 32, 3) and data.dtype == np.uint8


def test_fluorescence_like_image_is_refused_not_segmented():
    img = _fluorescence_like()
    # Without the check the watershed finds the bright blobs on "stained" black background.
    with pytest.raises(InvalidImageError, match="fluorescence"):
        pipeline.segment_nuclei(img, 0.5)
    lab = np.zeros(img.shape[:2], np.int32)
    lab[10:20, 10:20] = 1
    with pytest.raises(InvalidImageError, match="brightfield H&E"):
        pipeline.measure_cells(img, lab, 0.5)
    # Brightfield images pass; an all-black image is not called fluorescence (no nuclei instead).
    validation.check_brightfield(sample_image())
    validation.check_brightfield(np.full((64, 64, 3), 245, np.uint8))
    with pytest.raises(NoNucleiError, match="No nuclei"):
        pipeline.segment_nuclei(np.zeros((64, 64, 3), np.uint8), 0.5)


def test_brightfield_non_he_stain_warns_and_never_crashes():
    """A DAB-brown (IHC-like) field gets a StainWarning saying so; it is never a crash."""
    from napari_uam.sample_data import sample_image
    from napari_uam.validation import StainWarning, check_he_stain

    img = np.full((96, 96, 3), 235, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((20, 20), (50, 60), (75, 30)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 40] = (140, 90, 40)  # DAB brown
    with pytest.warns(StainWarning, match="IHC stain, not H&E"):
        try:
            labels = pipeline.segment_nuclei(img, 0.5, backend="watershed")
            assert labels.shape == (96, 96) and labels.dtype == np.int32
        except NoNucleiError:
            pass
    # Real H&E must not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)
        assert check_he_stain(sample_image()) is False


def test_huge_image_is_refused_without_allocating(monkeypatch, tmp_path):
    huge = np.broadcast_to(np.zeros(3, np.uint8), (20_000, 20_000, 3))  # 400 Mpx, a 3-byte view
    with pytest.raises(InvalidImageError, match="400 Mpx.*Crop a region"):
        validation.as_rgb_uint8(huge)
    with pytest.raises(InvalidImageError, match="Mpx"):
        pipeline.run(huge, 0.5)
    # RGBA is checked for size before its alpha channel is scanned.
    huge4 = np.broadcast_to(np.full(4, 255, np.uint8), (20_000, 20_000, 4))
    with pytest.raises(InvalidImageError, match="Mpx"):
        validation.as_rgb_uint8(huge4)
    # The reader refuses before decoding: shown with the limit lowered to 1000 pixels.
    monkeypatch.setattr(validation, "MAX_PIXELS", 1000)
    tif, png = tmp_path / "big.tif", tmp_path / "big.png"
    tifffile.imwrite(tif, np.zeros((64, 64, 3), np.uint8))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    for path in (tif, png):
        with pytest.raises(InvalidImageError, match=f"{path.name} holds 64x64 pixels.*tiles"):
            read_image(path)


def test_folder_instead_of_file(tmp_path, monkeypatch, capsys):
    with pytest.raises(InvalidImageError, match="not a file"):
        read_image(tmp_path)
    with pytest.raises(CheckpointError, match="is a folder"):
        ckpt_mod.read_checkpoint(tmp_path)
    with pytest.raises(CheckpointError, match="is a folder"):
        pipeline.get_classifier(tmp_path, device="cpu")
    # Segmentation weights pointing at a folder: "auto" falls back to the watershed.
    monkeypatch.setenv("NAPARI_UAM_SEG_WEIGHTS", str(tmp_path))
    assert not learned.is_available()
    assert resolve_backend("auto") == "watershed"
    # The command line takes a folder for its images; one without any is a bad argument.
    assert main(["classify", str(tmp_path), "--mpp", "0.5", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no TIFF, PNG or JPEG image" in err[0]


def test_unreadable_file_gives_a_clear_error(tmp_path, monkeypatch):
    """A file without read permission: a clear error, not a traceback.

    Root reads any file, so where the tests run as root (CI) the operating system's refusal is
    simulated at the call that opens the file; elsewhere the permission is really removed.
    """
    png = tmp_path / "locked.png"
    Image.fromarray(np.zeros((16, 16, 3), np.uint8)).save(png)
    pt = tmp_path / "locked.pt"
    pt.write_bytes(ckpt_mod.default_weights_path().read_bytes() if ckpt_mod.default_weights_path().is_file() else b"x")
    as_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if as_root:

        def refuse(*_args, **_kwargs):
            raise PermissionError(13, "Permission denied")

        import torch

        monkeypatch.setattr(Image, "open", refuse)
        monkeypatch.setattr(torch, "load", refuse)
    else:
        for p in (png, pt):
            p.chmod(0)
    try:
        with pytest.raises(InvalidImageError, match="Permission"):
            read_image(png)
        with pytest.raises(CheckpointError, match="permission denied"):
            ckpt_mod.read_checkpoint(pt)
    finally:
        for p in (png, pt):
            p.chmod(0o644)


def test_points_outside_the_image_are_matched_by_distance():
    true = np.array([[-5.0, -5.0], [10.0, 10.0], [1e6, 3.0]])
    pred = np.array([[-4.0, -5.0], [1e6 + 1.0, 3.0], [500.0, 500.0]])
    p, t = metrics.match_points(pred, true, radius=2.0)
    assert p.tolist() == [0, 1] and t.tolist() == [0, 2]
    for bad in (np.array([[np.nan, 1.0]]), np.array([[np.inf, 1.0]])):
        with pytest.raises(ValueError, match="pred_yx contains NaN or infinite"):
            metrics.match_points(bad, true, 2.0)
        with pytest.raises(ValueError, match="true_yx contains NaN or infinite"):
            metrics.point_detection_scores(pred, bad, 2.0)


# --------------------------------------------------------------------------- devices and models
@pytest.mark.skipif(HAS_CUDA, reason="needs a machine without a CUDA GPU")
def test_cuda_requested_without_a_gpu():
    with pytest.raises(DeviceError, match="no GPU is visible.*choose 'cpu'"):
        resolve_device("cuda")
    with pytest.raises(DeviceError, match="no GPU"):
        pipeline.get_classifier(None, device="cuda")
    lab = np.zeros((32, 32), np.int32)
    lab[8:16, 8:16] = 1
    with pytest.raises(DeviceError, match="no GPU"):
        radiomics.extract(np.full((32, 32, 3), 200, np.uint8), lab, device="cuda")


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


def test_mamba_ssm_missing(monkeypatch):
    monkeypatch.setattr(ssm, "mamba_ssm_available", lambda: False)
    on_gpu = SimpleNamespace(is_cuda=True)  # only .is_cuda is consulted
    with pytest.raises(ValueError, match="mamba_ssm is not installed.*backend 'torch'"):
        ssm.resolve_backend("mamba_ssm", on_gpu)
    assert ssm.resolve_backend("auto", on_gpu) == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors; use 'torch' on the CPU"):
        ssm.resolve_backend("mamba_ssm", torch.zeros(1))


# --------------------------------------------------------------------------- GPU out of memory
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


# --------------------------------------------------------------------------- disk full, crashes
def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("writer", ["csv", "parquet", "tif", "geojson"])
def test_disk_full_keeps_the_previous_file(tmp_path, monkeypatch, writer):
    lab, table = _labels(), _table(_labels())
    write = {
        "csv": lambda p: write_cells_csv(table, p, overwrite=True),
        "parquet": lambda p: write_cells_parquet(table, p, overwrite=True),
        "tif": lambda p: write_labels_tiff(lab, p, overwrite=True),
        "geojson": lambda p: write_geojson(lab, table, p, overwrite=True),
    }[writer]
    target = tmp_path / f"out.{writer}"
    write(target)
    before = target.read_bytes()
    # A full disk shows at the latest when the data is flushed to it.
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    with pytest.raises(OSError) as info:
        write(target)
    assert info.value.errno == errno.ENOSPC
    assert target.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == [target.name]  # no temp file left


@pytest.mark.parametrize("overwrite", [False, True], ids=["new-folder", "over-previous"])
def test_export_failing_midway_leaves_the_folder_as_it_was(tmp_path, monkeypatch, overwrite):
    lab, table = _labels(), _table(_labels())
    if overwrite:
        export_cells(lab, table, tmp_path, "img")
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    # The 3rd of the 4 writes (tif, csv, parquet, geojson) hits a full disk.
    monkeypatch.setattr(export_mod, "write_cells_parquet", _enospc)
    with pytest.raises(OSError, match="No space left"):
        export_cells(lab, table.iloc[:1], tmp_path, "img", overwrite=overwrite)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_export_failing_while_renaming_removes_its_new_files(tmp_path, monkeypatch):
    lab, table = _labels(), _table(_labels())
    real, calls = os.replace, []

    def third_fails(src, dst):
        calls.append(dst)
        if len(calls) == 3:
            _enospc()
        real(src, dst)

    monkeypatch.setattr(export_mod.os, "replace", third_fails)
    with pytest.raises(OSError):
        export_cells(lab, table, tmp_path, "img")
    assert list(tmp_path.iterdir()) == []


def test_cli_disk_full_exits_with_one_line(tmp_path, monkeypatch, capsys):
    png = tmp_path / "he.png"
    Image.fromarray(np.ascontiguousarray(sample_image()[:160, :160])).save(png)
    monkeypatch.setattr(pipeline, "run", lambda *a, **k: pipeline.PipelineResult(_labels(), _table(_labels())))
    monkeypatch.setattr(pipeline, "get_classifier", lambda *a, **k: None)
    monkeypatch.setattr(atomic.os, "fsync", _enospc)
    out = tmp_path / "out"
    assert main(["classify", str(png), "--mpp", "0.5", "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "No space left on device" in err[0]
    assert list(out.iterdir()) == []


# --------------------------------------------------------------------------- properties and fuzz
_points = st.lists(st.tuples(st.floats(-20, 60, allow_nan=False), st.floats(-20, 60, allow_nan=False)), max_size=25)


@settings(max_examples=25, deadline=None)
@given(pred=_points, true=_points, radius=st.floats(0.5, 12.0))
def test_match_points_properties(pred, true, radius):
    p = np.array(pred, dtype=float).reshape(-1, 2)
    t = np.array(true, dtype=float).reshape(-1, 2)
    pi, tj = metrics.match_points(p, t, radius)
    assert len(pi) == len(tj) <= min(len(p), len(t))
    assert len(set(pi.tolist())) == len(pi) and len(set(tj.tolist())) == len(tj)  # one to one
    if len(pi):
        assert np.all(np.linalg.norm(p[pi] - t[tj], axis=1) <= radius + 1e-9)
    # Maximal: no unmatched prediction lies within the radius of an unmatched true point.
    free_p = np.setdiff1d(np.arange(len(p)), pi)
    free_t = np.setdiff1d(np.arange(len(t)), tj)
    if free_p.size and free_t.size:
        d = np.linalg.norm(p[free_p][:, None] - t[free_t][None], axis=-1)
        assert d.min() > radius


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


def _small_files() -> dict[str, bytes]:
    rgb = np.random.default_rng(1).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    out = {}
    buf = io.BytesIO()
    tifffile.imwrite(buf, rgb, compression="zlib", resolution=(2e4, 2e4), resolutionunit="CENTIMETER")
    out[".tif"] = buf.getvalue()
    for suffix, fmt in ((".png", "PNG"), (".jpg", "JPEG")):
        buf = io.BytesIO()
        Image.fromarray(rgb).save(buf, format=fmt)
        out[suffix] = buf.getvalue()
    return out


SMALL_FILES = _small_files()


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    suffix=st.sampled_from(sorted(SMALL_FILES)),
    cut=st.floats(0.0, 1.0),
    flips=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)), max_size=6),
)
def test_reader_fuzz_only_raises_invalid_image_error(tmp_path, suffix, cut, flips):
    data = bytearray(SMALL_FILES[suffix])
    for where, value in flips:
        data[int(where * (len(data) - 1))] = value
    data = bytes(data[: max(0, int(round(cut * len(data))))]) if cut < 0.95 else bytes(data)
    path = tmp_path / f"fuzz{suffix}"
    path.write_bytes(data)
    try:
        image, mpp = read_image(path)
    except InvalidImageError:
        return
    assert isinstance(image, np.ndarray) and (mpp is None or mpp > 0)


def test_no_stain_warning_on_any_real_he_image(shared_data, monkeypatch):
    """The IHC check stays silent on every H&E image of the development data (150 fields)."""
    from PIL import Image

    from napari_uam.validation import StainWarning, check_he_stain

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the BCSS region of interest is one large field
    paths = sorted(shared_data.glob("**/*.jpg"))
    assert len(paths) > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)
        for p in paths:
            with Image.open(p) as im:
                assert check_he_stain(np.asarray(im.convert("RGB"))) is False, p.name
