"""Training and evaluation of the tumor-region models (MAMIM pretraining, image-only and
multimodal fine-tuning) on the prepared region sets (:mod:`research.regions.prepared`).

All images are resampled once to the working pixel size (2 um/px) at three scales
(x0.8, x1, x1.25 of it: the CAMELYON pixel size is only an estimate) and training draws random
square crops with flips, 90-degree rotations and a mild stain jitter. Cells move with their
crop; their targets are the >50 %-overlap labels of the region mask.

Evaluation follows the UAM paper's Appendix C at threshold 0.5, pooled over all validation
pixels at the images' full resolution: precision (tumor), cIoU (tumor IoU), mIoU (mean IoU of
tumor and background), cDICE, mDICE.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from napari_uam.tumor import WORK_MPP, predict_probability
from research.regions.prepared import RegionImage, uam_columns

SCALES = (0.8, 1.0, 1.25)


@dataclass
class WorkImage:
    """One image at one working scale: uint8 (3, h, w) tensor, (h, w) float mask, cells."""

    image: torch.Tensor
    mask: torch.Tensor
    pos: torch.Tensor  # (n, 2) y, x in working pixels
    vec: torch.Tensor  # (n, F_c)
    target: torch.Tensor  # (n,) 0/1
    weight: torch.Tensor | None = None  # (h, w) pixel weights of the mask loss (None: all 1)


def to_work(img: RegionImage, work_mpp: float = WORK_MPP, scale: float = 1.0) -> WorkImage:
    """Resample a region image to ``work_mpp / scale`` um/px (area averaging)."""
    h, w = img.mask.shape
    f = img.mpp / work_mpp * scale
    hw, ww = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
    x = torch.from_numpy(np.array(img.image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(hw, ww), mode="area")[0].round().clamp(0, 255).to(torch.uint8)
    m = F.interpolate(torch.from_numpy(img.mask.astype(np.float32))[None, None], size=(hw, ww), mode="area")[0, 0]
    cols = [c for c in img.cells.columns if c.startswith("uam_")]
    vec = torch.from_numpy(np.array(img.cells[cols], dtype=np.float32)) if cols else torch.zeros(len(img.cells), 0)
    pos = torch.from_numpy(img.cells[["y", "x"]].to_numpy(dtype=np.float32))
    pos = (pos + 0.5) * torch.tensor([hw / h, ww / w]) - 0.5
    tgt = torch.from_numpy(img.cells["region_target"].to_numpy(dtype=np.int64))
    return WorkImage(x, m, pos, vec, tgt)


def build_work_set(images: list[RegionImage], work_mpp: float = WORK_MPP, scales=SCALES) -> list[WorkImage]:
    """Every training image at every scale."""
    return [to_work(i, work_mpp, s) for i in images for s in scales]


def to_aux_work(img, work_mpp: float = WORK_MPP, scale: float = 1.0, cells: bool = False) -> WorkImage:
    """A cell-labelled image (:class:`~research.regions.cell_sets.CellSetImage`) at
    ``work_mpp / scale`` um/px with its weak region targets (discs around the labelled cells,
    see :mod:`research.regions.cell_sets`) as mask and weights.

    ``cells``: also give its cells (UAM vectors, classes) to the multimodal model's cell
    tokens and cell loss. Off by default: the shipped UAM was trained on these very cells, so
    their vectors are far cleaner than on new images (see docs/results.md)."""
    from research.regions.cell_sets import WEAK_RADIUS_UM, weak_targets

    h, w = img.image.shape[:2]
    f = img.mpp / work_mpp * scale
    hw, ww = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
    x = torch.from_numpy(np.array(img.image)).permute(2, 0, 1)[None].float()
    x = F.interpolate(x, size=(hw, ww), mode="area")[0].round().clamp(0, 255).to(torch.uint8)
    cols = [c for c in img.cells.columns if c.startswith("uam_")]
    vec = torch.from_numpy(np.array(img.cells[cols], dtype=np.float32))
    pos = torch.from_numpy(np.array(img.cells[["y", "x"]], dtype=np.float32))
    pos = (pos + 0.5) * torch.tensor([hw / h, ww / w]) - 0.5
    tgt = torch.from_numpy(np.array(img.cells["target"], dtype=np.int64))
    mask, weight = weak_targets(pos.numpy(), tgt.numpy(), (hw, ww), WEAK_RADIUS_UM * scale / work_mpp)
    if not cells:
        pos, vec, tgt = pos[:0], vec[:0], tgt[:0]
    return WorkImage(x, torch.from_numpy(mask), pos, vec, tgt, torch.from_numpy(weight))


def build_aux_set(images, work_mpp: float = WORK_MPP, scales=SCALES, cells: bool = False) -> list[WorkImage]:
    """Every cell-labelled image at every scale (:func:`to_aux_work`)."""
    return [to_aux_work(i, work_mpp, s, cells) for i in images for s in scales]


def sample_batch(work: list[WorkImage], batch: int, crop: int, gen: np.random.Generator, jitter: bool = True):
    """A random batch: images (B, 3, crop, crop) uint8->float standardised, masks (B, 1, c, c),
    padding weights, cell positions / vectors / targets / validity (B, N, ...)."""
    from napari_uam.models.multimodal import standardise

    imgs, masks, wts, cells = [], [], [], []
    for _ in range(batch):
        wi = work[gen.integers(len(work))]
        _, h, w = wi.image.shape
        y0 = int(gen.integers(0, max(h - crop, 0) + 1))
        x0 = int(gen.integers(0, max(w - crop, 0) + 1))
        im = wi.image[:, y0 : y0 + crop, x0 : x0 + crop].float()
        mk = wi.mask[y0 : y0 + crop, x0 : x0 + crop]
        ch, cw = mk.shape
        wt = torch.ones(ch, cw) if wi.weight is None else wi.weight[y0 : y0 + crop, x0 : x0 + crop].clone()
        if (ch, cw) != (crop, crop):  # small image: zero-pad, weight 0 outside
            im = F.pad(im, (0, crop - cw, 0, crop - ch), value=255.0)
            mk, wt = F.pad(mk, (0, crop - cw, 0, crop - ch)), F.pad(wt, (0, crop - cw, 0, crop - ch))
        sel = (
            (wi.pos[:, 0] >= y0 - 0.5)
            & (wi.pos[:, 0] < y0 + ch - 0.5)
            & (wi.pos[:, 1] >= x0 - 0.5)
            & (wi.pos[:, 1] < x0 + cw - 0.5)
        )
        pos = wi.pos[sel] - torch.tensor([y0, x0], dtype=torch.float32)
        vec, tgt = wi.vec[sel], wi.target[sel]
        # Flips / rot90: applied to image, mask, weights and cell coordinates together.
        if jitter:
            if gen.random() < 0.5:
                im, mk, wt = im.flip(-1), mk.flip(-1), wt.flip(-1)
                pos = torch.stack([pos[:, 0], crop - 1 - pos[:, 1]], 1)
            if gen.random() < 0.5:
                im, mk, wt = im.flip(-2), mk.flip(-2), wt.flip(-2)
                pos = torch.stack([crop - 1 - pos[:, 0], pos[:, 1]], 1)
            if gen.random() < 0.5:  # transpose
                im, mk, wt = im.transpose(-1, -2), mk.transpose(-1, -2), wt.transpose(-1, -2)
                pos = pos.flip(1)
            scale = torch.from_numpy(gen.uniform(0.9, 1.1, 3).astype(np.float32)).view(3, 1, 1)
            shift = torch.from_numpy(gen.uniform(-12, 12, 3).astype(np.float32)).view(3, 1, 1)
            im = (im * scale + shift).clamp(0, 255)
        imgs.append(im)
        masks.append(mk)
        wts.append(wt)
        cells.append((pos, vec, tgt))
    n = max(max(len(c[0]) for c in cells), 1)
    fc = work[0].vec.shape[1]
    P = torch.zeros(batch, n, 2)
    V = torch.zeros(batch, n, fc)
    T = torch.zeros(batch, n, dtype=torch.long)
    M = torch.zeros(batch, n, dtype=torch.bool)
    for i, (pos, vec, tgt) in enumerate(cells):
        k = len(pos)
        P[i, :k], V[i, :k], T[i, :k], M[i, :k] = pos, vec, tgt, True
    return (standardise(torch.stack(imgs)), torch.stack(masks)[:, None], torch.stack(wts)[:, None], P, V, T, M)


def _cosine(step: int, total: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(total - warmup, 1)))


def pretrain_mamim(
    encoder,
    work: list[WorkImage],
    steps: int,
    batch: int = 16,
    crop: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    log=print,
) -> dict:
    """MAMIM self-supervised pretraining of ``encoder`` in place (75 % masking, DMS decoder).

    Returns:
        ``{"losses": first/last mean losses, "seconds": ..., "steps": ...}``.
    """
    from napari_uam.models.ssmamba import MAMIMDecoder, mamim_loss

    torch.manual_seed(seed)
    gen = np.random.default_rng(seed)
    dec = MAMIMDecoder(encoder.widths, backend=encoder.config["backend"]).to(device)
    encoder.to(device).train()
    params = list(encoder.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, max(steps // 20, 1)))
    tg = torch.Generator().manual_seed(seed)
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        x = sample_batch(work, batch, crop, gen)[0].to(device)
        loss = mamim_loss(encoder, dec, x, generator=tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(steps // 5, 1) == 0:
            log(f"  mamim step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
    k = max(len(losses) // 10, 1)
    return {
        "steps": steps,
        "first_loss": float(np.mean(losses[:k])),
        "last_loss": float(np.mean(losses[-k:])),
        "seconds": time.perf_counter() - t0,
    }


def finetune(
    model,
    work: list[WorkImage],
    steps: int,
    batch: int = 16,
    crop: int = 128,
    lr: float = 2e-3,
    seed: int = 0,
    device: str = "cpu",
    cell_weight: float = 0.5,
    log=print,
    aux: list[WorkImage] | None = None,
    aux_weight: float = 0.5,
) -> dict:
    """Train a :class:`TumorRegionNet` with the joint loss (BCE + Dice, plus the cell BCE for
    multimodal models) for ``steps`` steps; the data order depends only on ``seed``.

    ``aux``: cell-labelled images (:func:`build_aux_set`): every step then adds
    ``aux_weight`` x the joint loss of a batch of half the size from them (weak disc targets
    for the mask, the labelled cells for the cell head), drawn from a generator of its own.
    """
    from napari_uam.models.multimodal import joint_loss

    torch.manual_seed(seed)
    gen = np.random.default_rng(seed + 1000)
    aux_gen = np.random.default_rng(seed + 2000)

    def batch_loss(data, n):
        x, m, wt, P, V, T, M = (t.to(device) for t in sample_batch(data, n, crop, gen if data is work else aux_gen))
        if model.use_cells:
            logits, cl = model(x, P, V, M)
        else:
            logits, cl = model(x)
        return joint_loss(logits, m, cl, T, M, wt, cell_weight)

    model.to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _cosine(s, steps, max(steps // 20, 1)))
    losses, t0 = [], time.perf_counter()
    for step in range(steps):
        loss = batch_loss(work, batch)
        if aux:
            loss = loss + aux_weight * batch_loss(aux, max(batch // 2, 2))  # >= 2: batch norm
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if log and (step + 1) % max(steps // 5, 1) == 0:
            log(f"  finetune step {step + 1}/{steps} loss {np.mean(losses[-20:]):.4f}")
    k = max(len(losses) // 10, 1)
    return {
        "steps": steps,
        "first_loss": float(np.mean(losses[:k])),
        "last_loss": float(np.mean(losses[-k:])),
        "seconds": time.perf_counter() - t0,
    }


def predict_region_image(model, img: RegionImage, work_mpp: float = WORK_MPP, device: str = "cpu") -> np.ndarray:
    """Full-resolution tumor probability of a prepared region image (packed UAM vectors)."""
    vec = yx = None
    if model.use_cells:
        cols = uam_columns(model.config["cell_features"])
        vec = img.cells[cols].to_numpy(dtype=np.float32)
        yx = img.cells[["y", "x"]].to_numpy(dtype=np.float32)
    model.eval()
    return predict_probability(model, img.image, img.mpp, work_mpp, vec, yx, device)


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[TP, FP, FN, TN] pixel counts of boolean masks."""
    pred, truth = pred.astype(bool), truth.astype(bool)
    tp = int(np.count_nonzero(pred & truth))
    fp = int(np.count_nonzero(pred & ~truth))
    fn = int(np.count_nonzero(~pred & truth))
    return np.array([tp, fp, fn, pred.size - tp - fp - fn], dtype=np.int64)


def segmentation_metrics(counts: np.ndarray) -> dict:
    """Appendix C metrics from pooled [TP, FP, FN, TN]: precision, cIoU, mIoU, cDICE, mDICE (%)."""
    tp, fp, fn, tn = (float(v) for v in counts)

    def ratio(a, b):
        return 100.0 * a / b if b > 0 else float("nan")

    iou_t, iou_b = ratio(tp, tp + fp + fn), ratio(tn, tn + fp + fn)
    dice_t, dice_b = ratio(2 * tp, 2 * tp + fp + fn), ratio(2 * tn, 2 * tn + fp + fn)
    return {
        "precision": ratio(tp, tp + fp),
        "cIoU": iou_t,
        "mIoU": (iou_t + iou_b) / 2,
        "cDICE": dice_t,
        "mDICE": (dice_t + dice_b) / 2,
        "recall": ratio(tp, tp + fn),
    }


def evaluate(
    model, val: list[RegionImage], work_mpp: float = WORK_MPP, device: str = "cpu", threshold: float = 0.5
) -> dict:
    """Pooled pixel metrics and cell accuracies on held-out images.

    Cell accuracy is measured against the >50 %-overlap labels of the ground-truth mask:
    ``cells_rule`` = the same rule applied to the predicted mask (the paper's image-based cell
    classification), ``cells_uam`` = UAM's own prediction (stored UAM tumor probability > 0.5),
    ``cells_head`` = the multimodal model's cell head.
    """
    from napari_uam.tumor import cells_in_mask

    counts = np.zeros(4, dtype=np.int64)
    per_image, rule_ok, uam_ok, n_cells = {}, 0, 0, 0
    for img in val:
        prob = predict_region_image(model, img, work_mpp, device)
        pred = prob > threshold
        c = confusion(pred, img.mask)
        counts += c
        per_image[img.key] = segmentation_metrics(c)
        truth = img.cells.set_index("label")["region_target"]
        rule = cells_in_mask(img.nuclei, pred).reindex(truth.index).fillna(0).astype(int)
        rule_ok += int((rule.to_numpy() == truth.to_numpy()).sum())
        if "uam_p_tumor" in img.cells:
            uam_ok += int(
                ((img.cells["uam_p_tumor"].to_numpy(dtype=np.float32) > 0.5).astype(int) == truth.to_numpy()).sum()
            )
        n_cells += len(truth)
    out = {
        **segmentation_metrics(counts),
        "pixels": counts.tolist(),
        "per_image": per_image,
        "n_cells": n_cells,
        "cells_rule_accuracy": 100.0 * rule_ok / max(n_cells, 1),
        "cells_uam_accuracy": 100.0 * uam_ok / max(n_cells, 1),
    }
    if model.use_cells:
        out["cells_head_accuracy"] = _head_accuracy(model, val, work_mpp, device)
    return out


def _head_accuracy(model, val, work_mpp, device) -> float:
    """Accuracy of the multimodal cell head on the held-out cells (whole images)."""
    from napari_uam.models.multimodal import standardise

    ok = n = 0
    for img in val:
        wi = to_work(img, work_mpp)
        _, h, w = wi.image.shape
        x = standardise(wi.image[None].float())
        x = F.pad(x, (0, -w % 32, 0, -h % 32), mode="replicate").to(device)
        with torch.no_grad():
            _, cl = model(
                x,
                wi.pos[None].to(device),
                wi.vec[None].to(device),
                torch.ones(1, len(wi.pos), dtype=torch.bool, device=device),
            )
        if cl is None:
            continue
        ok += int(((cl[0] > 0).long().cpu() == wi.target).sum())
        n += len(wi.target)
    return 100.0 * ok / max(n, 1)
