"""Classifier checkpoints (classify/checkpoint.py): a model that gives NaN is refused."""

from __future__ import annotations


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
