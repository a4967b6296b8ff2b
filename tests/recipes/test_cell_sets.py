"""Cell-labelled sets as an auxiliary signal of the tumor-region training: the weak targets
claim only discs around labelled cells, and the auxiliary loss sees nothing else."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from research.regions.cell_sets import CellSetImage, weak_targets
from research.regions import train_multimodal as tm


def test_weak_targets_are_discs_and_conflicts_are_left_out():
    pos = np.array([[20.0, 20.0], [20.0, 25.0], [50.0, 50.0]])
    target = np.array([1, 0, 1])
    mask, weight = weak_targets(pos, target, (64, 64), radius_px=4.0)
    # A lone disc: area ~ pi r^2, all of it tumor, weight 1.
    lone = np.zeros((64, 64), bool)
    lone[40:61, 40:61] = True
    assert abs(weight[lone].sum() - np.pi * 16) < 8 and mask[lone].sum() == weight[lone].sum()
    # Overlap of a tumor and a non-tumor disc: weight 0 there, nothing claimed as tumor.
    yy, xx = np.mgrid[0:64, 0:64]
    both = ((yy - 20) ** 2 + (xx - 20) ** 2 <= 16) & ((yy - 20) ** 2 + (xx - 25) ** 2 <= 16)
    assert both.any() and weight[both].max() == 0 and mask[both].max() == 0
    # The non-tumor-only part of the second disc is weighted, target 0.
    other = ((yy - 20) ** 2 + (xx - 25) ** 2 <= 16) & ~both
    assert weight[other].min() == 1 and mask[other].max() == 0
    # Nothing away from the cells.
    far = ((yy - 20) ** 2 + (xx - 22) ** 2 > 100) & ((yy - 50) ** 2 + (xx - 50) ** 2 > 100)
    assert weight[far].max() == 0


def _cell_image(rng):
    img = rng.integers(0, 256, (80, 96, 3)).astype(np.uint8)
    cells = pd.DataFrame({"y": [10.0, 40.0, 60.0], "x": [10.0, 50.0, 80.0], "target": [1, 0, 1]})
    for k in range(17):
        cells[f"uam_e{k}" if k < 16 else "uam_p_tumor"] = rng.random(3).astype(np.float32)
    return CellSetImage("consep_x", "consep", img, cells, 1.6)


def test_aux_loss_ignores_pixels_away_from_labelled_cells():
    """The auxiliary batch's mask loss has zero gradient outside the weak-target discs, and by
    default its cells are not given to the cell tokens (their UAM vectors are not honest)."""
    from napari_uam.models.multimodal import joint_loss

    rng = np.random.default_rng(0)
    work = tm.build_aux_set([_cell_image(rng)], work_mpp=2.0, scales=(1.0,))
    assert len(work) == 1 and work[0].pos.shape[0] == 0 and work[0].weight is not None
    with_cells = tm.to_aux_work(_cell_image(rng), 2.0, 1.0, cells=True)
    assert with_cells.pos.shape[0] == 3
    x, m, wt, P, V, T, M = tm.sample_batch(work, 2, 32, np.random.default_rng(1), jitter=True)
    assert not M.any()  # no cell tokens from these images
    assert 0 < wt.sum() < 0.5 * wt.numel()  # only discs are weighted
    logits = torch.zeros_like(m, requires_grad=True)
    joint_loss(logits, m, None, T, M, wt).backward()
    assert torch.all(logits.grad[wt == 0] == 0) and logits.grad[wt > 0].abs().sum() > 0


def test_finetune_with_aux_set_is_reproducible():
    """finetune(aux=...) trains on both sets and is bit-reproducible for a seed (the auxiliary
    batches come from a generator of their own)."""
    from napari_uam.models.multimodal import TumorRegionNet

    rng = np.random.default_rng(2)
    aux = tm.build_aux_set([_cell_image(rng)], work_mpp=2.0, scales=(1.0,))
    region = tm.WorkImage(
        torch.from_numpy(rng.integers(0, 256, (3, 40, 40)).astype(np.uint8)),
        torch.from_numpy((rng.random((40, 40)) > 0.5).astype(np.float32)),
        torch.zeros(0, 2),
        torch.zeros(0, 17),
        torch.zeros(0, dtype=torch.long),
    )
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        m = TumorRegionNet(use_cells=False)
        fit = tm.finetune(m, [region], 2, batch=2, crop=64, seed=3, aux=aux, log=None)
        runs.append((fit["last_loss"], [p.detach().clone() for p in m.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-6)
    assert all(torch.equal(a, b) for a, b in zip(runs[0][1], runs[1][1]))
