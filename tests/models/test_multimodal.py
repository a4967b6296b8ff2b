"""Multimodal tumor-region model: cell placement, full-resolution masks of odd sizes, losses,
Appendix C metrics, the >50 % rule, checkpoint round trip, pipeline integration."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from napari_uam.models.multimodal import TumorRegionNet, dice_bce_loss, joint_loss, splat_cells
from napari_uam.models.ssm import set_ssm_backend
from research.regions.train_multimodal import segmentation_metrics
from napari_uam.tumor import (
    TumorMaskModel,
    cells_in_mask,
    predict_probability,
    read_tumor_checkpoint,
    save_tumor_checkpoint,
)

SMALL = {"widths": (8, 16, 16, 24), "depths": (1, 1, 1, 1), "d_state": 4}


def _small(use_cells=True, seed=0):
    torch.manual_seed(seed)
    m = TumorRegionNet(encoder=SMALL, use_cells=use_cells, cell_dim=8, decoder_dim=16).eval()
    return set_ssm_backend(m, "torch", "parallel")


def test_cells_are_averaged_into_the_grid_cell_of_their_position():
    vals = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [10.0, 10.0], [7.0, 7.0]]])
    pos = torch.tensor([[[1.0, 1.0], [6.0, 7.0], [20.0, 3.0], [0.0, 0.0]]])  # stride 8 grid
    valid = torch.tensor([[True, True, True, False]])
    g = splat_cells(vals, pos, valid, 4, 2, 8)
    assert g.shape == (1, 3, 4, 2)
    torch.testing.assert_close(g[0, :2, 0, 0], torch.tensor([2.0, 3.0]))  # mean of cells 0 and 1
    torch.testing.assert_close(g[0, :2, 2, 0], torch.tensor([10.0, 10.0]))
    assert g[0, 2, 0, 0] == pytest.approx(np.log1p(2)) and g[0, 2, 1, 1] == 0  # density channel
    assert g[0, :2].abs().sum() == pytest.approx(2 + 3 + 20)  # the invalid cell is ignored


@pytest.mark.parametrize("shape", [(301, 517), (37, 45), (1000, 999)])
def test_probability_has_the_input_resolution_for_odd_sizes(shape):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (*shape, 3), dtype=np.uint8)
    yx = rng.uniform(0, min(shape), (30, 2)).astype(np.float32)
    vec = rng.normal(size=(30, 17)).astype(np.float32)
    for model in (_small(True), _small(False)):
        p = predict_probability(model, rgb, 0.5, 2.0, vec, yx)
        assert p.shape == shape and p.dtype == np.float32
        assert np.isfinite(p).all() and p.min() >= 0 and p.max() <= 1


def test_cells_enter_by_position_not_order():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (128, 160, 3), dtype=np.uint8)
    yx = rng.uniform(0, 120, (40, 2)).astype(np.float32)
    vec = rng.normal(size=(40, 17)).astype(np.float32)
    model = _small(True)
    base = predict_probability(model, rgb, 2.0, 2.0, vec, yx)
    perm = rng.permutation(40)
    np.testing.assert_allclose(predict_probability(model, rgb, 2.0, 2.0, vec[perm], yx[perm]), base, atol=1e-5)
    moved = predict_probability(model, rgb, 2.0, 2.0, vec, yx[::-1].copy())
    assert np.abs(moved - base).max() > 1e-4  # positions matter


def test_losses_prefer_the_right_mask_and_add_the_cell_term():
    target = torch.zeros(1, 1, 8, 8)
    target[..., :4, :] = 1
    good, bad = (target * 2 - 1) * 6, -(target * 2 - 1) * 6
    assert dice_bce_loss(good, target) < 0.1 < 1.5 < dice_bce_loss(bad, target)
    cl, ct, cv = torch.tensor([[3.0, -3.0]]), torch.tensor([[0, 1]]), torch.tensor([[True, True]])
    assert joint_loss(good, target, cl, ct, cv) > joint_loss(good, target) + 0.5 * 2.5
    assert joint_loss(good, target, cl, ct, cv * False) == joint_loss(good, target)


def test_appendix_c_metrics():
    # TP 30, FP 10, FN 20, TN 40.
    m = segmentation_metrics(np.array([30, 10, 20, 40]))
    assert m["precision"] == pytest.approx(75.0)
    assert m["cIoU"] == pytest.approx(50.0)
    assert m["mIoU"] == pytest.approx((50.0 + 40 / 70 * 100) / 2)
    assert m["cDICE"] == pytest.approx(100 * 60 / 90)
    assert m["mDICE"] == pytest.approx((100 * 60 / 90 + 100 * 80 / 110) / 2)


def test_more_than_half_rule():
    labels = np.zeros((4, 8), dtype=np.int32)
    labels[0, :4] = 1  # 2 of 4 pixels inside -> not tumor (exactly half)
    labels[1, :4] = 2  # 3 of 4 inside -> tumor
    mask = np.zeros((4, 8), dtype=bool)
    mask[0, :2] = True
    mask[1, :3] = True
    assert cells_in_mask(labels, mask).to_dict() == {1: 0, 2: 1}


def _uam_ckpt():
    from napari_uam.classify.checkpoint import default_weights_path, read_checkpoint

    path = default_weights_path()
    if not path.is_file():
        pytest.skip("default UAM weights not installed")
    return read_checkpoint(path)


@pytest.fixture(scope="module")
def camelyon_tile(regions_dir):
    """A real held-out CAMELYON tile, its nuclei and measured cell table (at 0.75 um/px)."""
    from PIL import Image

    from napari_uam.pipeline import measure_cells, segment_nuclei

    rgb = np.asarray(Image.open(regions_dir / "camelyon" / "10679.jpg").convert("RGB"))
    mask = np.asarray(Image.open(regions_dir / "camelyon" / "10679_tumor.png")) > 0
    labels = segment_nuclei(rgb, 0.75, backend="watershed")
    return rgb, mask, labels, measure_cells(rgb, labels, 0.75, device="cpu")


def test_checkpoint_reloads_identically_and_is_self_contained(tmp_path, monkeypatch, camelyon_tile):
    """A saved multimodal model predicts exactly as before, with its own UAM copy, even when
    the default cell classifier is gone."""
    from napari_uam.models.multimodal import uam_cell_inputs
    from napari_uam.classify import checkpoint as ck

    rgb, _, _, table = camelyon_tile
    model = _small(True, seed=3)
    uam = _uam_ckpt()
    clf = ck.CellClassifier(uam, device="cpu", backend="torch")
    vec = uam_cell_inputs(clf, table[clf.feature_names])
    assert vec.shape == (len(table), 17) and np.isfinite(vec).all()
    want = predict_probability(model, rgb, 0.75, 2.0, vec, table[["y", "x"]].to_numpy(np.float32))
    path = tmp_path / "tm.pt"
    save_tumor_checkpoint(path, model, work_mpp=2.0, cell_encoder=uam, metrics={"mIoU": 1.0})
    monkeypatch.setattr(ck, "default_weights_path", lambda: tmp_path / "missing.pt")
    tm = TumorMaskModel(read_tumor_checkpoint(path), device="cpu", backend="torch")
    set_ssm_backend(tm.model, "torch", "parallel")
    got = tm.predict(rgb, 0.75, table)
    np.testing.assert_array_equal(got, want)
    assert tm.card["metrics"] == {"mIoU": 1.0} and tm.uses_cells


def test_float16_checkpoint_is_smaller_and_loads_into_the_float32_model(tmp_path):
    """``half=True`` stores float16 weights (half the weight bytes) that load back into a float32
    model equal to the float16-rounded original, which predicts close to the original."""
    import torch

    model = _small(False, seed=4)
    full, half = tmp_path / "full.pt", tmp_path / "half.pt"
    save_tumor_checkpoint(full, model, work_mpp=2.0, cell_encoder=None)
    save_tumor_checkpoint(half, model, work_mpp=2.0, cell_encoder=None, half=True)
    ckpt = read_tumor_checkpoint(half)

    def weight_bytes(c):
        return sum(v.numel() * v.element_size() for v in c["state_dict"].values() if v.is_floating_point())

    assert weight_bytes(ckpt) * 2 == weight_bytes(read_tumor_checkpoint(full))
    assert half.stat().st_size < full.stat().st_size
    assert ckpt["stored_dtype"] == "float16" and read_tumor_checkpoint(full)["stored_dtype"] == "float32"
    loaded = TumorMaskModel(ckpt, device="cpu", backend="torch").model
    for k, v in model.state_dict().items():
        got = loaded.state_dict()[k]
        assert got.dtype == v.dtype
        want = v.to(torch.float16).to(v.dtype) if v.is_floating_point() else v
        assert torch.equal(got, want), k
    rgb = np.random.default_rng(0).integers(0, 256, (96, 96, 3)).astype(np.uint8)
    ref = predict_probability(model.eval(), rgb, 2.0, 2.0, None, None)
    got = predict_probability(loaded, rgb, 2.0, 2.0, None, None)
    assert np.abs(got - ref).max() < 1e-2


def test_multimodal_model_needs_the_cell_table(tmp_path):
    from napari_uam.errors import InvalidLabelsError

    path = tmp_path / "tm.pt"
    save_tumor_checkpoint(path, _small(True), work_mpp=2.0, cell_encoder=_uam_ckpt())
    tm = TumorMaskModel(read_tumor_checkpoint(path), device="cpu")
    with pytest.raises(InvalidLabelsError, match="cell table"):
        tm.predict(np.zeros((64, 64, 3), np.uint8), 0.5, None)


def test_damaged_checkpoint_is_reported(tmp_path):
    from napari_uam.errors import CheckpointError

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="damaged"):
        read_tumor_checkpoint(bad)


def test_shipped_weights_on_a_held_out_tile(camelyon_tile):
    """The shipped tumor mask on a held-out CAMELYON tile: full resolution, better than the
    trivial all-tumor mask, and the >50 % rule gives cell labels for every nucleus."""
    from napari_uam.tumor import load_tumor_model, predict_tumor_mask, tumor_weights_available

    if not tumor_weights_available():
        pytest.skip("tumor-mask weights not installed")
    rgb, mask, labels, table = camelyon_tile
    prob = predict_tumor_mask(rgb, 0.75, table, model=load_tumor_model(device="cpu"))
    assert prob.shape == mask.shape
    m = segmentation_metrics(np.array(_confusion(prob > 0.5, mask)))
    trivial = segmentation_metrics(np.array(_confusion(np.ones_like(mask), mask)))
    assert m["mIoU"] > trivial["mIoU"], (m, trivial)
    rule = cells_in_mask(labels, prob > 0.5)
    assert set(rule.index) == set(np.unique(labels)) - {0}


def _confusion(pred, truth):
    from research.regions.train_multimodal import confusion

    return confusion(pred, truth)


def test_pipeline_run_adds_the_tumor_mask(tmp_path, camelyon_tile):
    from napari_uam import pipeline

    rgb, _, labels, _ = camelyon_tile
    path = tmp_path / "tm.pt"
    save_tumor_checkpoint(path, _small(True), work_mpp=2.0, cell_encoder=_uam_ckpt())
    stages = []
    res = pipeline.run(rgb, 0.75, labels=labels, device="cpu", tumor_model=path, progress=lambda s, f: stages.append(s))
    assert res.tumor_probability.shape == rgb.shape[:2] and res.tumor_mask.dtype == np.uint8
    np.testing.assert_array_equal(res.tumor_mask, (res.tumor_probability > 0.5).astype(np.uint8))
    assert "tumor mask" in stages and res.provenance["tumor_model_path"] == str(path)
    off = pipeline.run(rgb, 0.75, labels=labels, device="cpu", tumor_model=path, tumor_mask=False)
    assert off.tumor_mask is None and off.tumor_probability is None
    assert isinstance(res.table, pd.DataFrame)
