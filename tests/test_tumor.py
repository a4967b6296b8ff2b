"""The tumor-region model (tumor.py): its cache follows the file, not the path (issue 18)."""

from __future__ import annotations

import os

import numpy as np
import pytest


def test_retrained_tumor_model_at_the_same_path_is_used(tmp_path):
    """The tumor-region model cache is keyed on file identity too, not on the path."""
    import torch

    from napari_uam.tumor import default_tumor_weights_path, load_tumor_model

    src = default_tumor_weights_path()
    if not src.is_file():
        pytest.skip("tumor-mask weights not installed")
    path = tmp_path / "tumor.pt"
    torch.save(torch.load(src, map_location="cpu", weights_only=True), path)
    first = load_tumor_model(path, "cpu")
    assert load_tumor_model(path, "cpu") is first  # unchanged file: the cached model

    # Retrain into the same path: another head bias, same size, the modification time set back.
    st = path.stat()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["head.bias"] = ckpt["state_dict"]["head.bias"] + 3.0
    torch.save(ckpt, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size

    second = load_tumor_model(path, "cpu")
    assert second is not first
    np.testing.assert_allclose(
        second.model.head.bias.detach().numpy(), first.model.head.bias.detach().numpy() + 3.0, rtol=0, atol=5e-3
    )  # float16 store
