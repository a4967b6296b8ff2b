"""The image reader (io/reader.py) on bad files: a folder, no read permission, fuzzed bytes.

Each gets a clear ``InvalidImageError`` (or, for a checkpoint at the same path, a
``CheckpointError``), never another exception.
"""

from __future__ import annotations

import io
import os

import numpy as np
import pytest
import tifffile
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from napari_uam import pipeline
from napari_uam.classify import checkpoint as ckpt_mod
from napari_uam.cli import main
from napari_uam.errors import CheckpointError, InvalidImageError
from napari_uam.io import read_image
from napari_uam.segment import learned, resolve_backend


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
