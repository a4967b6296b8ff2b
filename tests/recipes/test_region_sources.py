"""The region dataset layer (research/regions): what "tumor" means per source becomes the
right 1 / 0 / ignore target on real images, packing keeps the majority rule, the weak
tile loss and the pooled metrics leave ignored pixels out, and the report is regenerated
from the committed JSON."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from napari_uam.classify.checkpoint import file_sha256

from research.regions import loso as L
from research.regions import sources as S
from research.regions.pack import resample_target, subsample

REPO = Path(__file__).resolve().parents[2]
DATA = Path(os.environ.get("NAPARI_UAM_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="module")
def root():
    if not (DATA / "regions").is_dir():
        pytest.skip(
            f"real region data not found at {DATA}: set NAPARI_UAM_DATA or put ../shared/data beside the checkout"
        )
    return DATA


def test_every_source_has_items_with_a_pixel_size_and_a_meaning(root):
    for name, src in S.SOURCES.items():
        its = S.items(name, root)
        assert its, name
        assert src.tumor_means and src.handling and src.licence
        assert all(i.mpp > 0 for i in its)
        if src.kind == "tiles":
            assert {i.label for i in its} == {0, 1}
    # Left out: EBHI high-grade IN frames and necrotic osteosarcoma tiles.
    assert not [i for i in S.items("ebhi", root) if "HGIN" in i.key]
    assert not [i for i in S.items("osteosarcoma", root) if "necrotic" in i.key]


def test_wsss4luad_tumor_stroma_is_ignored_not_benign(root):
    it = next(i for i in S.items("wsss4luad", root) if i.key == "wsss4luad_val_00")
    rgb = np.asarray(Image.open(it.path).convert("RGB"))
    t = S.pixel_target(it, rgb)
    classes = np.asarray(Image.open(it.extra["classes_path"]))
    assert (t[classes == 1] == 1).all()
    if (classes == 2).any():
        assert (t[classes == 2] == S.IGNORE).all()
    assert (t[(classes == 0) | (classes == 3)] == 0).all()


def test_epithelium_only_sources_ignore_the_stroma_of_malignant_images(root):
    glas = S.items("glas", root)
    mal = next(i for i in glas if i.extra["malignant"])
    ben = next(i for i in glas if not i.extra["malignant"])
    rgb = np.asarray(Image.open(mal.path).convert("RGB"))
    t = S.pixel_target(mal, rgb)
    glands = np.asarray(Image.open(mal.mask_path)) > 127
    assert (t[glands] == 1).all() and (t[~glands] != 1).all()
    assert (t[~glands] == S.IGNORE).mean() > 0.5  # stroma between tumor glands: unknown
    assert (t[S.white(rgb) & ~glands] == 0).all()  # glass is no tumor
    assert (S.pixel_target(ben, np.asarray(Image.open(ben.path).convert("RGB"))) == 0).all()
    aca = next(i for i in S.items("ebhi", root) if i.extra["malignant"])
    t = S.pixel_target(aca, np.asarray(Image.open(aca.path).convert("RGB")))
    assert {0, 1, S.IGNORE} >= set(np.unique(t)) and (t == 1).any()


def test_camelyon_edge_band_is_ignored_in_training_only(root):
    it = next(i for i in S.items("camelyon", root) if i.key == "camelyon_10679")
    rgb = np.asarray(Image.open(it.path).convert("RGB"))
    train, ev = S.pixel_target(it, rgb, True), S.pixel_target(it, rgb, False)
    assert (train == S.IGNORE).any() and not (ev == S.IGNORE).any()
    assert ((train == ev) | (train == S.IGNORE)).all()


def test_packing_resamples_by_majority_and_subsamples_round_robin(root):
    t = np.zeros((4, 4), np.uint8)
    t[:2, :2] = 1
    t[2:, 2:] = S.IGNORE
    t[0, 2] = 1  # one of four pixels: not a majority
    np.testing.assert_array_equal(resample_target(t, (2, 2)), [[1, 0], [0, S.IGNORE]])
    its = subsample(S.items("ebhi", root))
    aca = [i for i in its if i.extra["malignant"]]
    assert len(aca) == 300 and len({i.group for i in aca}) > 50  # many cases, not the first few


def test_metrics_leave_ignored_pixels_out_and_weak_loss_wants_tumor_somewhere():
    truth = np.array([[1, 0], [S.IGNORE, 1]], np.uint8)
    pred = np.array([[1, 1], [1, 0]], bool)
    assert L.confusion(pred, truth).tolist() == [1, 1, 1, 0]
    kinds = torch.tensor([2, 2])  # two tumor tiles
    t = torch.zeros(2, 1, 20, 20)
    valid = torch.ones_like(t)
    somewhere = torch.full((2, 1, 20, 20), -6.0)
    somewhere[:, :, :5, :5] = 6.0  # tumor in a corner only (>= the top 5 %): enough for a tumor tile
    nowhere = torch.full((2, 1, 20, 20), -6.0)
    assert L.region_loss(somewhere, t, valid, kinds) < 0.1 < L.region_loss(nowhere, t, valid, kinds)
    kinds = torch.tensor([3, 3])  # benign tiles: any tumor pixel costs
    assert L.region_loss(nowhere, t, valid, kinds) < L.region_loss(somewhere, t, valid, kinds)


def test_report_is_regenerated_from_the_committed_json(tmp_path):
    js = REPO / "docs" / "regions_loso.json"
    res, card = tmp_path / "results.md", tmp_path / "card.md"
    res.write_text("# Results\n\n<!-- other:start -->\nkeep me\n<!-- other:end -->\n")
    shutil.copy(REPO / "src" / "napari_uam" / "weights" / "tumor_mask.md", card)
    assert L.main(["report", "--json", str(js), "--results-md", str(res), "--card", str(card)]) == 0
    text = res.read_text()
    assert "keep me" in text and "<!-- regions:start -->" in text
    committed = (REPO / "docs" / "results.md").read_text()
    section = text.split("<!-- regions:start -->")[1].split("<!-- regions:end -->")[0]
    assert section in committed  # docs/results.md holds exactly what the JSON gives
    d = L.decide(json.loads(js.read_text()))
    assert d["winner"] in L.ARMS and ("qualifies" if d["ship"] else "not shipped") in section
    seeds = text.split("<!-- regions-seeds:start -->")[1].split("<!-- regions-seeds:end -->")[0]
    assert seeds in committed
    ds = L.decide_seeds(
        json.loads((REPO / "docs" / "regions_loso_seeds.json").read_text()),
        json.loads((REPO / "docs" / "regions_cell_check.json").read_text()),
    )
    # The card of the shipped weights names the seed the decision picked, and its SHA-256.
    card_text = card.read_text()
    assert ds["ship"] and f"seed {ds['ship'].removeprefix('seed')}," in card_text
    sha = file_sha256(REPO / "src" / "napari_uam" / "weights" / "tumor_mask.pt")
    committed_card = (REPO / "src" / "napari_uam" / "weights" / "tumor_mask.md").read_text()
    assert card_text.split("<!-- regions-loso:start -->")[1] == committed_card.split("<!-- regions-loso:start -->")[1]
    assert sha in committed_card  # the card describes the file that ships
