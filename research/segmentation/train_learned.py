"""Train the nuclei U-Net of the "learned" backend within a fixed time budget.

Data: CoNSeP images with full instance masks (40x) and, optionally, BRCA-M2C *train* fields
(20x breast, one point per cell) with partial targets (:func:`weak_targets`), mixed into each
batch (``--brca-frac``). BRCA-M2C *val* (``--brca-val``) is only evaluated.

Everything after loading lives on the device: the images and their targets are uploaded once,
random crops are cut, rescaled, flipped / rotated and colour-jittered on the GPU (bf16
autocast, channels_last), and the learning rate follows a cosine of the *elapsed time*, so the
schedule completes whatever the throughput and the run stops by itself after ``--minutes``.
The exponential moving average of the weights is what is validated and saved. ``--init``
fine-tunes an existing checkpoint instead of starting from random weights.

Writes into ``--out``:

* ``nuclei_unet.pt``: fp16 checkpoint for :mod:`napari_uam.segment.learned` (config,
  net_mpp, state_dict, meta, and ``auto_mpp_range``: where "auto" may pick it, from
  :func:`auto_range`).
* ``metrics.json``: held-out scores (AJI, PQ, DQ, SQ, Dice, F1; mean and per image) at
  0.25 um/px and after resampling the image to 0.5 um/px, BRCA-M2C point precision / recall /
  F1 of the network and of the watershed, the training summary, and ``meta.ship`` (whether the
  result should replace the weights it started from, :func:`should_ship`).
* ``train.log``: the console log.

Usage (GPU, about 5.5 minutes in all; the v2 weights)::

    PYTHONPATH=src python -m research.segmentation.train_learned --data .gpu_data/consep \\
        --out "$OUT" --device cuda --init src/napari_uam/weights/nuclei_unet.pt --lr 1e-3 \\
        --minutes 4 --brca-train .gpu_data/brca_m2c/train --brca-val .gpu_data/brca_m2c/val \\
        --brca-frac 0.375

Smoke test on a CPU::

    PYTHONPATH=src python -m research.segmentation.train_learned --data ../shared/data/consep \\
        --out /tmp/smoke --minutes 0.5 --device cpu --batch 4 --crop 128 --val-ids 21
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import platform
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

#: Pixel size of CoNSeP (40x); the network is trained and run at it.
CONSEP_MPP = 0.25
#: Pixel size of BRCA-M2C (TCGA breast at 20x).
BRCA_MPP = 0.5
DATASET = "CoNSeP (Graham et al. 2019, HoVer-Net), research use, cite HoVer-Net"


# --- targets ---------------------------------------------------------------------------------


def make_targets(inst: np.ndarray) -> np.ndarray:
    """Per-pixel training targets of an instance map.

    Args:
        inst: (H, W) integer instance map, 0 background.

    Returns:
        (4, H, W) float32: foreground (0/1); horizontal and vertical offset from the nucleus'
        centre of mass, negative and positive sides each scaled to [-1, 0] and [0, 1] as in
        HoVer-Net; Euclidean distance to the nucleus border divided by its maximum in the
        nucleus (0 outside).
    """
    inst = np.asarray(inst)
    out = np.zeros((4,) + inst.shape, np.float32)
    out[0] = inst > 0
    for i, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        m = inst[sl] == i
        yy, xx = np.nonzero(m)
        cy, cx = yy.mean(), xx.mean()
        gy, gx = np.mgrid[0 : m.shape[0], 0 : m.shape[1]].astype(np.float32)
        for ch, g in ((1, gx - cx), (2, gy - cy)):
            g = np.where(m, g, 0.0)
            neg, pos = -g.min(), g.max()
            g = np.where(g < 0, g / max(neg, 1e-6), g / max(pos, 1e-6))
            out[ch][sl][m] = g[m]
        d = ndi.distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        out[3][sl][m] = (d / max(d.max(), 1e-6))[m]
    return out


def with_weight(targets: np.ndarray, weight: np.ndarray | None = None) -> np.ndarray:
    """Append the per-pixel loss weight as a fifth channel (all ones: full supervision)."""
    w = np.ones((1,) + targets.shape[1:], np.float32) if weight is None else weight[None].astype(np.float32)
    return np.concatenate([targets, w], 0)


#: Weak supervision on BRCA-M2C train (20x breast, points only), in microns at the image.
#: A pixel closer than this to an annotated point that no confirmed nucleus covers is not
#: called background (the nucleus is there, its extent unknown).
POINT_IGNORE_UM = 5.0
#: Watershed nuclei within this of an annotated point (one to one) are confirmed.
POINT_MATCH_UM = 3.0


def confirmed_nuclei(rgb: np.ndarray, points_yx: np.ndarray, mpp: float):
    """Watershed nuclei confirmed by the annotated points (see :func:`weak_targets`).

    Args:
        rgb: (H, W, 3) uint8 image at ``mpp`` um/px.
        points_yx: (N, 2) annotated cell positions in pixels of ``rgb``.
        mpp: pixel size of ``rgb``.

    Returns:
        (confirmed, all_nuclei, unmatched): (H, W) int32 labels of the confirmed nuclei (ids
        of the watershed kept), (H, W) int32 labels of every watershed nucleus, and the indices
        of the points that no confirmed nucleus accounts for.
    """
    from napari_uam.segment import metrics as M
    from napari_uam.segment.watershed import WatershedParams, segment_watershed

    lab = segment_watershed(rgb, mpp, WatershedParams())
    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    pi, ti = M.match_points(M.centroids(lab), pts, POINT_MATCH_UM / mpp)
    # Points inside each nucleus: a nucleus holding two annotated cells is a merge.
    yi = np.clip(np.round(pts[:, 0]).astype(int), 0, lab.shape[0] - 1)
    xi = np.clip(np.round(pts[:, 1]).astype(int), 0, lab.shape[1] - 1)
    inside = np.bincount(lab[yi, xi], minlength=int(lab.max()) + 1)
    keep = np.zeros(int(lab.max()) + 1, bool)
    uid = np.unique(lab)
    ids = uid[uid > 0][np.asarray(pi, int)]  # centroids() rows follow increasing ids
    keep[ids] = inside[ids] <= 1
    keep[0] = False
    confirmed = np.where(keep[lab], lab, 0).astype(np.int32)
    unmatched = np.setdiff1d(np.arange(len(pts)), np.asarray(ti, int)[keep[ids]])
    return confirmed, lab.astype(np.int32), unmatched


def weak_targets(rgb: np.ndarray, points_yx: np.ndarray, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Partial training targets of a point-annotated image, at the network's pixel size.

    The classical watershed backend segments the image; its nuclei matched one to one to an
    annotated point (within :data:`POINT_MATCH_UM`) that contain exactly one point become full
    targets (mask, HoVer maps, distance). Background is only asserted away from everything
    uncertain: a pixel gets weight 1 when it lies in a confirmed nucleus, or outside every
    watershed nucleus and farther than :data:`POINT_IGNORE_UM` from every point; unconfirmed
    watershed nuclei (unannotated, or holding several points) and the surroundings of unmatched
    points get weight 0, so the loss neither rewards nor punishes the network there.

    Args:
        rgb: (H, W, 3) uint8 image at ``mpp`` um/px.
        points_yx: (N, 2) annotated cell positions in pixels of ``rgb``.
        mpp: pixel size of ``rgb``.

    Returns:
        (image, targets): the image resampled to :data:`CONSEP_MPP`, (h, w, 3) uint8, and
        (5, h, w) float32 targets (the 4 of :func:`make_targets` plus the loss weight).
    """
    from scipy.spatial import cKDTree

    from napari_uam.scale import rescale_image, resize_labels, scale_factor

    pts = np.asarray(points_yx, np.float64).reshape(-1, 2)
    confirmed, lab, unmatched_pts = confirmed_nuclei(rgb, pts, mpp)
    f = scale_factor(mpp, CONSEP_MPP)
    img = rescale_image(rgb, f)
    conf = resize_labels(confirmed, img.shape[:2])
    any_nuc = resize_labels(lab, img.shape[:2]) > 0
    weight = ~any_nuc | (conf > 0)
    if len(unmatched_pts):
        gy, gx = np.mgrid[0 : img.shape[0], 0 : img.shape[1]]
        near = cKDTree(pts[unmatched_pts] * f).query(np.stack([gy.ravel(), gx.ravel()], 1), k=1)[0]
        weight &= (near.reshape(img.shape[:2]) > POINT_IGNORE_UM / CONSEP_MPP) | (conf > 0)
    return img, with_weight(make_targets(conf), weight)


def read_points(path: Path) -> np.ndarray:
    """(N, 2) (y, x) cell positions of a BRCA-M2C ``*_points.csv`` (header ``y,x,class``)."""
    return np.loadtxt(path, delimiter=",", skiprows=1, usecols=(0, 1), ndmin=2).reshape(-1, 2)


def _load_weak(path: str) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    p = Path(path)
    rgb = np.array(Image.open(p).convert("RGB"))
    return weak_targets(rgb, read_points(p.with_name(p.stem + "_points.csv")), BRCA_MPP)


def _read_pair(root: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    # np.array (a writable copy): torch.from_numpy warns on PIL's read-only buffers.
    rgb = np.array(Image.open(root / f"train_{i}.jpg").convert("RGB"))
    inst = np.asarray(Image.open(root / f"train_{i}_inst.png")).astype(np.int32)
    return rgb, inst


def _load_train(args: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    rgb, inst = _read_pair(Path(args[0]), args[1])
    return rgb, with_weight(make_targets(inst))


# --- GPU-side augmentation -------------------------------------------------------------------

#: The 8 signed permutation matrices of the square's symmetry group (flips, 90-degree turns),
#: acting on (x, y) column vectors.
D4 = np.array(
    [
        [[a * 1, 0], [0, b * 1]] if swap == 0 else [[0, a * 1], [b * 1, 0]]
        for swap in (0, 1)
        for a in (1, -1)
        for b in (1, -1)
    ],
    np.float32,
)


def sample_batch(images, targets, batch: int, crop: int, scale_range, gen):
    """Random crops with random scale and flip / 90-degree rotation, on the images' device.

    Args:
        images: list of (3, H, W) uint8 tensors.
        targets: list of (5, H, W) float16 tensors: :func:`make_targets` plus the loss
            weight (:func:`with_weight`).
        batch: number of crops.
        crop: output side in pixels.
        scale_range: (lo, hi) of the zoom; a crop covers ``crop * s`` source pixels.
        gen: ``torch.Generator`` on the CPU (the sampling decisions are tiny).

    Returns:
        x: (batch, 3, crop, crop) float in [0, 1].
        y: (batch, 5, crop, crop) float targets in the crop's frame: the h / v maps are
        permuted and negated with the flip / rotation so they still point away from centroids;
        the last channel is the 0/1 loss weight.
    """
    import torch
    from torch.nn import functional as F

    dev = images[0].device
    lo, hi = scale_range
    win = int(math.ceil(crop * hi)) + 2
    s = torch.exp(torch.empty(batch).uniform_(math.log(lo), math.log(hi), generator=gen))
    k = torch.randint(0, 8, (batch,), generator=gen)
    idx = torch.randint(0, len(images), (batch,), generator=gen)
    stack = []
    for b in range(batch):
        img, tgt = images[idx[b]], targets[idx[b]]
        h, w = img.shape[1:]
        y0 = int(torch.randint(0, max(1, h - win + 1), (1,), generator=gen))
        x0 = int(torch.randint(0, max(1, w - win + 1), (1,), generator=gen))
        piece = torch.cat(
            [img[:, y0 : y0 + win, x0 : x0 + win].float() / 255.0, tgt[:, y0 : y0 + win, x0 : x0 + win].float()], 0
        )
        if piece.shape[1] < win or piece.shape[2] < win:  # an image smaller than a window
            piece = F.pad(piece, (0, win - piece.shape[2], 0, win - piece.shape[1]), mode="replicate")
        stack.append(piece)
    src = torch.stack(stack)
    M = torch.from_numpy(D4)[k].to(dev)  # (B, 2, 2)
    # Source pixel of each output pixel: window centre + s * M @ (offset from crop centre).
    o = torch.arange(crop, device=dev, dtype=torch.float32) - (crop - 1) / 2
    oy, ox = torch.meshgrid(o, o, indexing="ij")
    off = torch.stack([ox, oy], -1).reshape(-1, 2)  # (P, 2) as (x, y)
    p = (win - 1) / 2 + s.to(dev)[:, None, None] * torch.einsum("bij,pj->bpi", M, off)
    grid = ((2 * p + 1) / win - 1).reshape(batch, crop, crop, 2)
    out = F.grid_sample(src, grid, mode="bilinear", padding_mode="border", align_corners=False)
    x, y = out[:, :3], out[:, 3:]
    # Offsets seen in the crop are M^T times the source offsets.
    hv = torch.einsum("bji,bjyx->biyx", M, y[:, 1:3])
    # A pixel keeps its weight only when fully inside the weighted area (no half-known edges).
    y = torch.cat([(y[:, :1] > 0.5).float(), hv, y[:, 3:4], (y[:, 4:5] > 0.999).float()], 1)
    return x, y


def colour_jitter(x, gen, strong: bool = True):
    """H&E stain and acquisition variation, per crop.

    Stain jitter in HED optical-density space (Tellez et al. 2018): each stain concentration is
    scaled and shifted; then brightness / contrast, an occasional 2x down-and-up resampling (a
    20x scan resampled to 40x looks like this) or blur, and sensor noise.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].
        gen: CPU ``torch.Generator``.
        strong: the v2 setting: hematoxylin scaled 0.6-1.6 (TCGA breast nuclei are far darker
            than CoNSeP's) and half the crops down-and-up resampled by 1.6-2.4x, so that the
            CoNSeP crops also look like 20x scans upsampled by the pipeline. False: the v1
            ranges (0.7-1.3, a quarter of the crops at exactly 2x).

    Returns:
        (B, 3, H, W) float RGB in [0, 1].
    """
    import torch
    from torch.nn import functional as F

    from napari_uam.segment.stain import HED_FROM_RGB, RGB_FROM_HED

    b, dev = x.shape[0], x.device

    def u(lo, hi, *shape):
        return torch.empty(b, *shape).uniform_(lo, hi, generator=gen).to(dev)

    od = -torch.log(x.clamp(1.0 / 255.0, 1.0))
    hed = torch.einsum("bcyx,cd->bdyx", od, torch.tensor(HED_FROM_RGB, dtype=x.dtype, device=dev))
    h_lo, h_hi = (0.6, 1.6) if strong else (0.7, 1.3)
    alpha = torch.cat([u(h_lo, h_hi, 1), u(0.7, 1.3, 1), u(0.9, 1.1, 1)], 1)[:, :, None, None]
    beta = torch.cat([u(-0.08, 0.08, 2), u(-0.02, 0.02, 1)], 1)[:, :, None, None]
    hed = hed * alpha + beta
    od = torch.einsum("bdyx,dc->bcyx", hed, torch.tensor(RGB_FROM_HED, dtype=x.dtype, device=dev))
    x = torch.exp(-od.clamp_min(0.0))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.8, 1.2, 1, 1, 1) + mean + u(-0.08, 0.08, 1, 1, 1)
    r = torch.rand(b, generator=gen).to(dev)[:, None, None, None]
    hh, ww = x.shape[-2:]
    # One random down factor per batch (interpolate takes one size); area-average down, then
    # bilinear up, as a 20x scanner plus the pipeline's upsampling would give.
    k = float(torch.empty(1).uniform_(1.6, 2.4, generator=gen)) if strong else 2.0
    small = F.interpolate(x, size=(max(8, round(hh / k)), max(8, round(ww / k))), mode="area")
    low = F.interpolate(small, size=(hh, ww), mode="bilinear", align_corners=False)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    p_low = 0.5 if strong else 0.25
    x = torch.where(r < p_low, low, torch.where(r < p_low + 0.1, blur, x))
    # Drawn on the device from the global (seeded) generator: a CPU draw of B*3*H*W numbers
    # plus its upload would cost more than the training step.
    x = x + torch.randn_like(x) * u(0.0, 0.02, 1, 1, 1)
    return x.clamp(0.0, 1.0)


# --- JPEG compression (recipe v4) --------------------------------------------------------------

#: The JPEG standard's example quantisation tables (ITU-T T.81 Annex K.1), luminance and
#: chrominance, in row-major order of the 8x8 DCT coefficients.
JPEG_LUMA = np.array(
    [
        [16, 11, 10, 16, 24, 40, 51, 61],
        [12, 12, 14, 19, 26, 58, 60, 55],
        [14, 13, 16, 24, 40, 57, 69, 56],
        [14, 17, 22, 29, 51, 87, 80, 62],
        [18, 22, 37, 56, 68, 109, 103, 77],
        [24, 35, 55, 64, 81, 104, 113, 92],
        [49, 64, 78, 87, 103, 121, 120, 101],
        [72, 92, 95, 98, 112, 100, 103, 99],
    ],
    np.float32,
)
JPEG_CHROMA = np.full((8, 8), 99, np.float32)
JPEG_CHROMA[:4, :4] = [[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]]


def jpeg_tables(quality) -> tuple[np.ndarray, np.ndarray]:
    """libjpeg's quality scaling of the standard tables (``jpeg_set_quality``, baseline).

    Args:
        quality: int or array of ints in 1..100.

    Returns:
        (luma, chroma): (..., 8, 8) float32 quantisation steps, as PIL / libjpeg write them.
    """
    q = np.clip(np.asarray(quality, np.int64), 1, 100)
    scale = np.where(q < 50, 5000 // q, 200 - 2 * q)[..., None, None]

    def one(base):
        return np.clip((base.astype(np.int64) * scale + 50) // 100, 1, 255).astype(np.float32)

    return one(JPEG_LUMA), one(JPEG_CHROMA)


def _dct_matrix(device, dtype):
    import torch

    k = torch.arange(8, dtype=torch.float64)
    c = torch.cos((2 * k[None, :] + 1) * k[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    c[0] /= math.sqrt(2)
    return c.to(device, dtype)  # orthonormal DCT-II: coefficients = C @ block @ C.T


def _quantise_blocks(plane, q, C):
    """Round-trip one (B, H, W) plane (H, W multiples of 8, level-shifted) through the DCT."""
    b, h, w = plane.shape
    blk = plane.reshape(b, h // 8, 8, w // 8, 8).transpose(2, 3)  # (B, h/8, w/8, 8, 8)
    coef = C @ blk @ C.T
    q = q[:, None, None]
    coef = (coef / q).round() * q
    return (C.T @ coef @ C).transpose(2, 3).reshape(b, h, w)


def jpeg_compress(x, quality):
    """A simulation of a baseline JPEG round trip (PIL / libjpeg defaults).

    RGB -> YCbCr (JFIF, full range), 4:2:0 chroma subsampling (2x2 means), 8x8 block DCT,
    quantisation with the standard tables scaled for ``quality`` as libjpeg does, inverse DCT,
    chroma upsampling as libjpeg's "fancy" (triangle, i.e. bilinear at half-pixel centres)
    upsampling, YCbCr -> RGB, rounding to 8 bits. Sides that are not multiples of 16 are
    padded (edge replicate) and cropped back.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].
        quality: (B,) ints in 1..100 (one JPEG quality per image), or one int.

    Returns:
        (B, 3, H, W) float RGB in [0, 1], multiples of 1/255.
    """
    import torch
    from torch.nn import functional as F

    b, _, h, w = x.shape
    dev = x.device
    dt = torch.float32
    qual = np.broadcast_to(np.asarray(quality if np.ndim(quality) else [quality] * b), (b,))
    ql, qc = (torch.from_numpy(t).to(dev, dt) for t in jpeg_tables(qual))
    C = _dct_matrix(dev, dt)
    ph, pw = (-h) % 16, (-w) % 16
    v = torch.round(x.to(dt).clamp(0, 1) * 255.0)
    if ph or pw:
        v = F.pad(v, (0, pw, 0, ph), mode="replicate")
    r, g, bl = v[:, 0], v[:, 1], v[:, 2]
    y = 0.299 * r + 0.587 * g + 0.114 * bl
    cb = -0.168735892 * r - 0.331264108 * g + 0.5 * bl
    cr = 0.5 * r - 0.418687589 * g - 0.081312411 * bl
    chroma = F.avg_pool2d(torch.stack([cb, cr], 1), 2)  # (B, 2, H/2, W/2), centred at 0
    y = _quantise_blocks(y - 128.0, ql, C) + 128.0
    y = torch.round(y).clamp(0, 255)
    cbcr = torch.stack([_quantise_blocks(chroma[:, i], qc, C) for i in range(2)], 1)
    cbcr = torch.round(cbcr + 128.0).clamp(0, 255) - 128.0
    cbcr = F.interpolate(cbcr, scale_factor=2, mode="bilinear", align_corners=False)
    cb, cr = cbcr[:, 0], cbcr[:, 1]
    rgb = torch.stack([y + 1.402 * cr, y - 0.344136286 * cb - 0.714136286 * cr, y + 1.772 * cb], 1)
    rgb = torch.round(rgb).clamp(0, 255)[:, :, :h, :w] / 255.0
    return rgb.to(x.dtype)


def jpeg_augment(x, gen, p: float = 0.5, quality=(30, 95)):
    """JPEG-compress a share ``p`` of the crops, each at a random quality in ``quality``.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].
        gen: CPU ``torch.Generator``.
        p: share of crops compressed.
        quality: (lo, hi) inclusive range of JPEG qualities, drawn uniformly.

    Returns:
        (B, 3, H, W) float RGB in [0, 1].
    """
    import torch

    b = x.shape[0]
    pick = torch.rand(b, generator=gen) < p
    q = torch.randint(quality[0], quality[1] + 1, (b,), generator=gen)
    if not bool(pick.any()):
        return x
    i = torch.nonzero(pick).flatten()
    out = x.clone()
    out[i.to(x.device)] = jpeg_compress(x[i.to(x.device)], q[i].numpy())
    return out


# --- loss ------------------------------------------------------------------------------------


def loss_fn(raw, y):
    """HoVer-Net's losses plus a distance-map term.

    Every term is a mean over the pixels of weight 1 (the last target channel): all of them
    for fully annotated crops, only the known ones for weakly annotated crops.

    Args:
        raw: (B, 4, H, W) network outputs.
        y: (B, 5, H, W) targets of :func:`sample_batch` (last channel: loss weight).

    Returns:
        (total loss, dict of detached 0-d tensors with the parts).
    """
    import torch
    from torch.nn import functional as F

    raw = raw.float()
    fg_t, hv_t, d_t, w = y[:, :1], y[:, 1:3], y[:, 3:4], y[:, 4:5]
    n = w.sum() + 1
    bce = (F.binary_cross_entropy_with_logits(raw[:, :1], fg_t, reduction="none") * w).sum() / n
    p = torch.sigmoid(raw[:, :1]) * w
    dice = 1 - (2 * (p * fg_t).sum() + 1) / (p.sum() + (fg_t * w).sum() + 1)
    hv = torch.tanh(raw[:, 1:3])
    mse = (((hv - hv_t) ** 2) * w).sum() / (2 * n)

    # Gradient of h along x and of v along y: sharp at borders between touching nuclei, the
    # very signal the post-processing splits on (HoVer-Net's MSGE, on nuclear pixels).
    def grads(t):
        return torch.stack([t[:, 0, 1:-1, 2:] - t[:, 0, 1:-1, :-2], t[:, 1, 2:, 1:-1] - t[:, 1, :-2, 1:-1]], 1)

    m = (fg_t * w)[:, :, 1:-1, 1:-1]
    msge = (((grads(hv) - grads(hv_t)) ** 2) * m).sum() / (2 * m.sum() + 1)
    dmse = (((torch.sigmoid(raw[:, 3:]) - d_t) ** 2) * w).sum() / n
    total = bce + dice + mse + msge + 2 * dmse
    # Detached tensors, not floats: reading them back every step would stall the GPU queue.
    parts = {"bce": bce, "dice": dice, "hv_mse": mse, "msge": msge, "dist": dmse}
    return total, {k: v.detach() for k, v in parts.items()}


# --- validation ------------------------------------------------------------------------------


def _post_and_score(args):
    from napari_uam.scale import resize_labels
    from napari_uam.segment import metrics as M
    from napari_uam.segment.postprocess import PostParams, instances

    maps, gt, net_mpp, shape = args
    lab = resize_labels(instances(maps, net_mpp, PostParams()), shape)
    return M.instance_scores(gt, resize_labels(lab, gt.shape))


def validate(model, root: Path, ids, device: str, workers: int, log) -> dict:
    """Held-out scores at 0.25 um/px and after resampling the image to 0.5 um/px.

    The network runs on ``device`` through :func:`.learned.predict_maps` (the backend's
    code path); post-processing and scoring run in ``workers`` processes.
    """
    from napari_uam.scale import rescale_image, scale_factor
    from napari_uam.segment.learned import predict_maps

    jobs, keys = [], []
    for i in ids:
        rgb, gt = _read_pair(root, i)
        for mpp in (CONSEP_MPP, 0.5):
            img = rescale_image(rgb, CONSEP_MPP / mpp)
            net_img = rescale_image(img, scale_factor(mpp, CONSEP_MPP))
            maps = predict_maps(model, net_img, device)
            jobs.append((maps, gt, CONSEP_MPP, img.shape[:2]))
            keys.append((i, mpp))
    if workers <= 1:  # in process: a worker's start-up would cost more than a small check
        scores = [_post_and_score(j) for j in jobs]
    else:
        # "spawn": this process holds a CUDA context, which forked children must not inherit.
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            scores = list(ex.map(_post_and_score, jobs))
    out = {}
    for mpp in (CONSEP_MPP, 0.5):
        rows = [dict(image=i, **s) for (i, m), s in zip(keys, scores) if m == mpp]
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("aji", "pq", "dq", "sq", "dice", "f1")}
        mean["n_pred/n_true"] = float(sum(r["n_pred"] for r in rows) / max(1, sum(r["n_true"] for r in rows)))
        out[f"{mpp:g}"] = {"mean": mean, "per_image": rows}
        log(f"val {mpp:g} um/px images {list(ids)}: " + " ".join(f"{k}={v:.4f}" for k, v in mean.items()))
    return out


def _points_one(args) -> dict:
    """tp / fp / fn of one point-annotated image: learned (from maps) and watershed."""
    from napari_uam.scale import resize_labels
    from napari_uam.segment import metrics as M
    from napari_uam.segment.postprocess import PostParams, instances
    from napari_uam.segment.watershed import WatershedParams, segment_watershed

    maps, rgb, pts, net_mpp, mpp = args
    radius = POINT_MATCH_UM / mpp
    out = {}
    for name, lab in (
        ("learned", resize_labels(instances(maps, net_mpp, PostParams()), rgb.shape[:2])),
        ("watershed", segment_watershed(rgb, mpp, WatershedParams())),
    ):
        s = M.point_detection_scores(M.centroids(lab), pts, radius)
        out[name] = {k: s[k] for k in ("tp", "fp", "fn")}
    return out


def validate_points(model, paths, device: str, workers: int, log, label: str) -> dict:
    """Pooled centroid-vs-point precision / recall / F1 (3 um) on BRCA-M2C images at 0.5 um/px.

    ``paths`` are the ``*.jpg`` images (each with its ``*_points.csv``).

    The learned model runs through the backend's code path (resample to the network's pixel
    size, :func:`.learned.predict_maps`, default post-processing, labels resized back); the
    classical watershed is scored on the same images for comparison.
    """
    from PIL import Image

    from napari_uam.scale import rescale_image, scale_factor
    from napari_uam.segment.learned import predict_maps

    jobs = []
    for path in map(Path, paths):
        rgb = np.array(Image.open(path).convert("RGB"))
        maps = predict_maps(model, rescale_image(rgb, scale_factor(BRCA_MPP, CONSEP_MPP)), device)
        jobs.append((maps, rgb, read_points(path.with_name(path.stem + "_points.csv")), CONSEP_MPP, BRCA_MPP))
    if workers <= 1:
        rows = [_points_one(j) for j in jobs]
    else:
        with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as ex:
            rows = list(ex.map(_points_one, jobs))
    out = {}
    for name in ("learned", "watershed"):
        tp, fp, fn = (sum(r[name][k] for r in rows) for k in ("tp", "fp", "fn"))
        out[name] = {
            "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn),
            "f1": 2 * tp / max(1, 2 * tp + fp + fn),
            "n_images": len(rows),
            "n_points": tp + fn,
        }
        log(
            f"{label} {name}: "
            + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in out[name].items())
        )
    return out


#: Held-out targets of issue #5 at 40x (CoNSeP 21-27, 0.25 um/px).
TARGET_AJI, TARGET_PQ = 0.55, 0.53


def auto_range(val: dict, points: dict | None) -> list[float] | None | str:
    """The pixel sizes where "auto" may pick this network, from its held-out numbers.

    Returns:
        None (any pixel size) when it meets the 40x targets on CoNSeP 21-27 *and* detects the
        BRCA-M2C val cells (20x) at least as well as the watershed; [0.2, 0.35] (40x-like only)
        when it meets the 40x targets only; "never" otherwise.
    """
    m = val[f"{CONSEP_MPP:g}"]["mean"]
    if not (m["aji"] >= TARGET_AJI and m["pq"] >= TARGET_PQ):
        return "never"
    if points and points["learned"]["f1"] >= points["watershed"]["f1"]:
        return None
    return [0.2, 0.35]


def should_ship(auto, val: dict, init: dict | None) -> bool:
    """Whether these weights should replace the ones they were fine-tuned from.

    Yes when "auto" may pick them at every pixel size (40x targets met and 20x cells found at
    least as well as by the watershed); when they are for 40x only, only if they are not worse
    there than the starting weights (AJI and PQ at 0.25 um/px as recorded at their training);
    never when they miss the 40x targets.
    """
    if auto == "never":
        return False
    if auto is None:
        return True
    if init is None:
        return True
    meta = init.get("meta", {})
    ref = meta.get("held_out", {}).get(f"{CONSEP_MPP:g}")
    # Only numbers on the same held-out images compare; otherwise keep what is there.
    if ref is None or meta.get("held_out_images") != val.get("images"):
        return False
    m = val[f"{CONSEP_MPP:g}"]["mean"]
    return m["aji"] >= ref["aji"] and m["pq"] >= ref["pq"]


# --- training --------------------------------------------------------------------------------


def lr_factor(frac: float, warm: float = 0.03) -> float:
    """Share of the peak learning rate at ``frac`` of the time budget: linear warm-up, then
    cosine to 1 % of the peak (both in elapsed time, so any throughput completes it)."""
    if frac < warm:
        return frac / warm
    return 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))


def optimise_step(model, opt, x, y, ema_f, model_f, step: int, ema: float, device_type: str):
    """One optimiser step on a batch, then the EMA update; returns the loss parts.

    Args:
        model, opt: the network in training mode and its optimiser.
        x, y: a batch of :func:`sample_batch` (after colour jitter).
        ema_f, model_f: the floating-point tensors of the EMA copy and of ``model``.
        step: the number of the step being taken (1 for the first).
        ema: the EMA decay, reached after a warm-up so a short run is not dominated by the
            random initialisation.
        device_type: "cuda" (bf16 autocast) or "cpu".
    """
    import torch

    with torch.autocast(device_type, dtype=torch.bfloat16, enabled=device_type == "cuda"):
        raw = model(x)
    loss, parts = loss_fn(raw, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
    opt.step()
    d = min(ema, (1 + step) / (10 + step))
    with torch.no_grad():
        torch._foreach_lerp_(ema_f, model_f, 1 - d)
    return loss.detach(), parts


def _sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _ids(text: str) -> list[int]:
    """'1-20' or '1,3,5' or '21' -> list of ints."""
    out = []
    for part in text.split(","):
        a, _, b = part.partition("-")
        out += list(range(int(a), int(b or a) + 1))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with train_N.jpg / train_N_inst.png")
    ap.add_argument("--out", type=Path, required=True, help="output folder")
    ap.add_argument("--minutes", type=float, default=5.0, help="training-loop time budget")
    ap.add_argument("--max-steps", type=int, default=0, help="stop after this many steps too (0: no cap)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--train-ids", default="1-20")
    ap.add_argument("--val-ids", default="21-27")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--weight-decay", type=float, default=1e-4)
    ap.add_argument("--ema", type=float, default=0.999)
    ap.add_argument("--scale", type=float, nargs=2, default=(0.8, 1.25), help="zoom range")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="U-Net widths")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--brca-train",
        type=Path,
        default=None,
        help="BRCA-M2C train folder (*.jpg + *_points.csv): weak supervision at 20x",
    )
    ap.add_argument(
        "--brca-val", type=Path, default=None, help="BRCA-M2C val folder: point F1 of the result (never trained on)"
    )
    ap.add_argument("--brca-frac", type=float, default=0.375, help="share of each batch from --brca-train")
    ap.add_argument("--brca-limit", type=int, default=0, help="use only the first N BRCA train images (0: all)")
    ap.add_argument("--v1-aug", action="store_true", help="the v1 colour / resampling ranges")
    ap.add_argument(
        "--init",
        type=Path,
        default=None,
        help="start from this checkpoint (fine-tuning; its architecture overrides --widths)",
    )
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    import torch

    from napari_uam.segment.learned import NET_MPP
    from napari_uam.segment.unet import NucleiUNet, UNetConfig, n_parameters

    args.out.mkdir(parents=True, exist_ok=True)
    log_file = open(args.out / "train.log", "w")
    t_start = time.perf_counter()

    def log(msg: str) -> None:
        line = f"[{time.perf_counter() - t_start:7.1f}s] {msg}"
        print(line, flush=True)
        log_file.write(line + "\n")
        log_file.flush()

    assert NET_MPP == CONSEP_MPP, "the network is trained at CoNSeP's native pixel size"
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    dev = torch.device(args.device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log(f"command: {' '.join(sys.argv)}")

    train_ids, val_ids = _ids(args.train_ids), _ids(args.val_ids)
    assert not set(train_ids) & set(val_ids), "training and held-out images overlap"
    # Targets are computed in worker processes before CUDA is initialised in this one.
    jobs = [(str(args.data), i) for i in train_ids]
    if args.workers <= 1:
        pairs = [_load_train(j) for j in jobs]
    else:
        with ProcessPoolExecutor(args.workers) as ex:
            pairs = list(ex.map(_load_train, jobs))
    weak, train_paths = [], []
    if args.brca_train is not None:
        if args.brca_val is not None and args.brca_train.resolve() == args.brca_val.resolve():
            ap.error("--brca-train and --brca-val must be different folders")
        paths = sorted(str(q) for q in args.brca_train.glob("*.jpg"))
        paths = paths[: args.brca_limit] if args.brca_limit > 0 else paths
        if not paths:
            ap.error(f"no *.jpg in {args.brca_train}")
        train_paths = paths
        if args.workers <= 1:
            weak = [_load_weak(q) for q in paths]
        else:
            with ProcessPoolExecutor(args.workers) as ex:
                weak = list(ex.map(_load_weak, paths, chunksize=4))

    def upload(group):
        return (
            [torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(dev) for rgb, _ in group],
            [torch.from_numpy(t).to(dev, torch.float16) for _, t in group],
        )

    images, targets = upload(pairs)
    w_images, w_targets = upload(weak)
    known = float(np.mean([t[4].mean() for _, t in weak])) if weak else 0.0
    del pairs, weak
    log(f"torch {torch.__version__} device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""))
    log(f"loaded {len(images)} training images {args.train_ids} with targets")
    if w_images:
        log(
            f"loaded {len(w_images)} BRCA-M2C train images with weak targets ({known:.1%} of pixels with a known label)"
        )
    n_weak = int(round(args.batch * args.brca_frac)) if w_images else 0

    cfg = UNetConfig(widths=tuple(args.widths)) if args.widths else UNetConfig()
    init = None
    if args.init is not None:
        from napari_uam.segment.learned import load_checkpoint

        init = load_checkpoint(args.init)
        cfg = UNetConfig.from_dict(init["config"])
    model = NucleiUNet(cfg)
    if init is not None:
        model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in init["state_dict"].items()})
        log(f"initialised from {args.init} (trained {init.get('meta', {}).get('date', '?')})")
    model = model.to(dev).to(memory_format=torch.channels_last)
    ema = NucleiUNet(cfg).to(dev).to(memory_format=torch.channels_last)
    ema.load_state_dict(model.state_dict())
    ema.eval()
    for p in ema.parameters():
        p.requires_grad_(False)
    # Floating-point weights and BN statistics of both nets (views sharing their storage).
    ema_f = [v for v in ema.state_dict().values() if v.dtype.is_floating_point]
    model_f = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
    n_par = n_parameters(model)
    log(f"model {cfg.to_dict()} parameters {n_par}")
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)

    budget = args.minutes * 60.0
    warm = 0.03
    step, t0, last_log = 0, time.perf_counter(), 0.0
    losses = []
    while True:
        frac = (time.perf_counter() - t0) / budget
        if frac >= 1.0 or 0 < args.max_steps <= step:
            break
        lr_f = lr_factor(frac, warm)
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_f
        with torch.no_grad():
            x, y = sample_batch(images, targets, args.batch - n_weak, args.crop, args.scale, gen)
            if n_weak:
                xw, yw = sample_batch(w_images, w_targets, n_weak, args.crop, args.scale, gen)
                x, y = torch.cat([x, xw]), torch.cat([y, yw])
            x = colour_jitter(x, gen, strong=not args.v1_aug).contiguous(memory_format=torch.channels_last)
        step += 1
        _, parts = optimise_step(model, opt, x, y, ema_f, model_f, step, args.ema, dev.type)
        losses = (losses + [torch.stack(list(parts.values()))])[-50:]
        now = time.perf_counter() - t0
        if now - last_log > max(5.0, budget / 30) or step == 1:
            last_log = now
            avg = dict(zip(parts, torch.stack(losses).mean(0).tolist()))
            log(f"step {step} lr {args.lr * lr_f:.2e} " + " ".join(f"{k}={v:.4f}" for k, v in avg.items()))
    train_s = time.perf_counter() - t0
    log(f"trained {step} steps in {train_s:.1f}s ({step * args.batch / train_s:.1f} crops/s)")

    ema.load_state_dict(
        {**model.state_dict(), **{k: v for k, v in ema.state_dict().items() if v.dtype.is_floating_point}}
    )
    val = validate(ema, args.data, val_ids, str(dev), args.workers, log)
    points = {}
    if args.brca_val is not None:
        val_paths = sorted(args.brca_val.glob("*.jpg"))
        points["brca_val"] = validate_points(ema, val_paths, str(dev), args.workers, log, "brca_val")
    if train_paths:  # the images it was trained on: how well the weak targets were fitted
        points["brca_train"] = validate_points(ema, train_paths, str(dev), args.workers, log, "brca_train")
    auto = auto_range(val, points.get("brca_val"))
    log(f"auto picks this network for: {'any pixel size' if auto is None else auto}")
    ship = should_ship(auto, {**val, "images": val_ids}, init)
    log(f"verdict: {'SHIP' if ship else 'KEEP the current weights'} (see should_ship)")

    state = {
        k: (v.detach().half() if v.dtype.is_floating_point else v.detach()).cpu().contiguous()
        for k, v in ema.state_dict().items()
    }
    meta = {
        "dataset": DATASET,
        "train_images": train_ids,
        "held_out_images": val_ids,
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": " ".join(sys.argv),
        "steps": step,
        "train_seconds": round(train_s, 1),
        "batch": args.batch,
        "crop": args.crop,
        "lr": args.lr,
        "parameters": n_par,
        "device": torch.cuda.get_device_name(dev) if cuda else platform.processor() or "cpu",
        "torch": str(torch.__version__),
        "held_out": {m: v["mean"] for m, v in val.items()},
        "brca_m2c": points,
        "weak_supervision": (
            f"BRCA-M2C train ({args.brca_train.name}), {len(w_images)} images, {n_weak} of {args.batch} crops "
            "per batch: watershed nuclei confirmed by one annotated point, background away from "
            "points and watershed nuclei, the rest ignored"
            if w_images
            else None
        ),
        "init": (
            f"{args.init.name} (sha256 {_sha256(args.init)[:12]}, trained {init.get('meta', {}).get('date', '?')})"
            if init is not None
            else None
        ),
        "augmentation": "v1" if args.v1_aug else "v2 (hematoxylin 0.6-1.6, half the crops down-up 1.6-2.4x)",
        "auto_mpp_range": auto,
        "ship": ship,
    }
    ckpt = {
        "format": "napari-uam nuclei U-Net v1",
        "auto_mpp_range": auto,
        "config": cfg.to_dict(),
        "net_mpp": NET_MPP,
        "state_dict": state,
        "meta": meta,
    }
    torch.save(ckpt, args.out / "nuclei_unet.pt")
    (args.out / "metrics.json").write_text(json.dumps({"meta": meta, "held_out": val, "brca_m2c": points}, indent=1))
    # Reload exactly as the backend will (weights_only torch.load), so a file that cannot be
    # shipped fails here rather than on a user's machine.
    from napari_uam.segment.learned import build_model, load_checkpoint

    build_model(load_checkpoint(args.out / "nuclei_unet.pt"))
    size = (args.out / "nuclei_unet.pt").stat().st_size
    log(
        f"wrote {args.out / 'nuclei_unet.pt'} ({size / 1e6:.2f} MB), metrics.json, train.log; "
        f"total {time.perf_counter() - t_start:.1f}s"
    )
    log_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
