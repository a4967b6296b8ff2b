"""The learned nuclei backend: training code, tiling, shipped weights and real-data quality."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from napari_uam.segment import available_backends, resolve_backend, segment
from napari_uam.segment import learned
from napari_uam.segment import metrics as M
from napari_uam.segment.postprocess import PostParams, instances
from napari_uam.segment.train_learned import make_targets, main, sample_batch
from napari_uam.segment.unet import NucleiUNet, UNetConfig, n_parameters

#: Held-out CoNSeP image 21 at 0.25 um/px must reach this AJI with the shipped weights.
MIN_AJI_21 = 0.5

needs_weights = pytest.mark.skipif(
    not learned.is_available(), reason="shipped nuclei U-Net weights not present"
)


def _two_touching_discs():
    yy, xx = np.mgrid[:64, :64]
    inst = np.zeros((64, 64), np.int32)
    inst[(yy - 32) ** 2 + (xx - 22) ** 2 < 100] = 1
    inst[(yy - 32) ** 2 + (xx - 40) ** 2 < 100] = 2
    return inst


# --- network and targets ---------------------------------------------------------------------


def test_unet_shape_and_budget():
    model = NucleiUNet().eval()
    assert n_parameters(model) <= 600_000
    with torch.inference_mode():
        y = model(torch.rand(1, 3, 64, 96))
    assert y.shape == (1, 4, 64, 96)
    cfg = UNetConfig.from_dict(model.config.to_dict())
    assert cfg == model.config


def test_targets_point_away_from_centres():
    inst = _two_touching_discs()
    t = make_targets(inst)
    assert t.shape == (4, 64, 64)
    assert np.array_equal(t[0] > 0, inst > 0)
    # h runs from -1 (left edge) to +1 (right edge) inside each disc; distance peaks at 1.
    for i, cx in ((1, 22), (2, 40)):
        m = inst == i
        assert t[1][m].min() == pytest.approx(-1) and t[1][m].max() == pytest.approx(1)
        assert t[3][m].max() == pytest.approx(1)
        assert abs(t[1][32, cx]) < 0.15 and t[3][32, cx] > 0.8
    assert np.all(t[1:][:, inst == 0] == 0)


def test_augmentation_keeps_hover_maps_consistent():
    """After flips / rotations / zoom, h still grows along x and v along y in every crop."""
    inst = np.zeros((160, 160), np.int32)
    for k, (cy, cx) in enumerate([(40, 40), (40, 100), (110, 60), (115, 120)], start=1):
        yy, xx = np.mgrid[:160, :160]
        inst[(yy - cy) ** 2 / 400 + (xx - cx) ** 2 / 150 < 1] = k
    img = torch.from_numpy(np.stack([np.where(inst > 0, 80, 230)] * 3).astype(np.uint8))
    tgt = torch.from_numpy(make_targets(inst)).half()
    x, y = sample_batch([img], [tgt], 16, 96, (0.8, 1.25), torch.Generator().manual_seed(1))
    assert x.shape == (16, 3, 96, 96) and y.shape == (16, 4, 96, 96)
    fg = y[:, 0] > 0
    dh = y[:, 1, :, 2:] - y[:, 1, :, :-2]
    dv = y[:, 2, 2:, :] - y[:, 2, :-2, :]
    for b in range(16):
        mh = fg[b, :, 1:-1] & fg[b, :, 2:] & fg[b, :, :-2]
        mv = fg[b, 1:-1] & fg[b, 2:] & fg[b, :-2]
        if mh.sum() > 50:
            assert dh[b][mh].median() > 0
        if mv.sum() > 50:
            assert dv[b][mv].median() > 0


def test_postprocess_splits_touching_nuclei_from_ideal_maps():
    inst = _two_touching_discs()
    t = make_targets(inst)
    maps = np.stack([t[0], t[1], t[2], t[3]])
    lab = instances(maps, 0.25, PostParams())
    assert lab.max() == 2
    assert M.instance_scores(inst, lab)["aji"] > 0.9


def test_training_smoke_run_writes_a_loadable_checkpoint(consep_dir, tmp_path):
    rc = main([
        "--data", str(consep_dir), "--out", str(tmp_path), "--minutes", "0.03", "--device", "cpu",
        "--batch", "2", "--crop", "64", "--train-ids", "1-2", "--val-ids", "21", "--workers", "1",
    ])
    assert rc == 0
    assert {p.name for p in tmp_path.iterdir()} == {"nuclei_unet.pt", "metrics.json", "train.log"}
    assert (tmp_path / "nuclei_unet.pt").stat().st_size < 1.5e6
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert set(metrics["held_out"]) == {"0.25", "0.5"}
    assert "CoNSeP" in metrics["meta"]["dataset"]
    ckpt = learned.load_checkpoint(tmp_path / "nuclei_unet.pt")
    assert all(v.dtype == torch.float16 for v in ckpt["state_dict"].values() if v.is_floating_point())
    learned.build_model(ckpt)


# --- tiling ----------------------------------------------------------------------------------


def _tile_model():
    if learned.is_available():
        return learned._model("cpu")[0]
    torch.manual_seed(0)
    return NucleiUNet().eval()


def test_tiling_matches_one_pass(consep_dir):
    """Tiles of 256 px (4 x 4 interiors) give the maps and nuclei of one 512 px pass."""
    from PIL import Image

    img = np.asarray(Image.open(consep_dir / "train_22.jpg").convert("RGB"))[200:712, 300:812]
    model = _tile_model()
    one = learned.predict_maps(model, img, tile_px=2048)
    tiled = learned.predict_maps(model, img, tile_px=256)
    assert one.shape == tiled.shape == (4, 512, 512)
    assert np.abs(one - tiled).mean() < 1e-3
    a, b = instances(one, 0.25), instances(tiled, 0.25)
    if a.max() > 0:
        s = M.instance_scores(a, b)
        assert s["f1"] > 0.98 and s["aji"] > 0.97


# --- shipped weights -------------------------------------------------------------------------


@needs_weights
def test_shipped_weights_are_the_auto_backend():
    assert resolve_backend("auto") == "learned"
    assert available_backends()[:2] == ["learned", "watershed"]
    assert learned.WEIGHTS_PATH.stat().st_size < 1.5e6


@needs_weights
def test_shipped_sample_gives_a_sane_count():
    from napari_uam.sample_data import SAMPLE_MPP, sample_image

    img = sample_image()
    lab = segment(img, SAMPLE_MPP, backend="learned")
    assert lab.shape == img.shape[:2] and lab.dtype == np.int32
    n = int(lab.max())
    # About 1 nucleus per 50-400 um^2 of a BRCA field; the watershed finds a similar number.
    area_um2 = img.shape[0] * img.shape[1] * SAMPLE_MPP**2
    assert area_um2 / 400 < n < area_um2 / 50
    n_ws = int(segment(img, SAMPLE_MPP, backend="watershed").max())
    assert 0.5 * n_ws < n < 2.5 * n_ws


@needs_weights
def test_held_out_consep_quality(consep_dir):
    from PIL import Image

    rgb = np.asarray(Image.open(consep_dir / "train_21.jpg").convert("RGB"))
    gt = np.asarray(Image.open(consep_dir / "train_21_inst.png")).astype(np.int32)
    s = M.instance_scores(gt, segment(rgb, 0.25, backend="learned"))
    assert s["aji"] > MIN_AJI_21
