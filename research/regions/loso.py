"""Leave-one-source-out (LOSO) recipe of the tumor-region model, and the shipped model.

One command on one GPU runs every fold as its own process, side by side::

    python -m research.regions.loso run --data .gpu_data/regions --out OUT --phase-s 150

Phase A, in parallel: MAMIM pretraining of the SSMamba encoder on the whole H&E pool of the
pack (every region image and tile, labelled or not, plus the nucleus sets; stain and scale
augmentation), the folds of the arms without MAMIM (train on every source but one mask source,
test on it), the all-source models of those arms, and the evaluation of the current shipped
weights on every source (the baseline). Phase B, once the encoder is pretrained: the same
for the arms that start from it. Every job trains for the same wall-clock budget with a
time-based cosine schedule (steps done are recorded), then writes ``OUT/jobs/<job>.json``;
all-source models also write ``OUT/ckpt/<arm>.pt`` (float16). ``OUT/loso_results.json``
gathers everything.

Training data per step: a batch of crops from the mask sources (a source drawn uniformly,
then an image by area; BCE + soft Dice on non-ignored pixels, plus the cell BCE of the
multimodal model on the cells of the crop) and half as many tiles from the tile sets
(image-level weak supervision: a tumor tile's top-k pooled probability is pushed to 1, every
pixel of a benign tile to 0). Augmentation: flips / transposes, scale 0.8-1.25, stain jitter
in optical density, brightness / contrast.

Metrics (UAM Appendix C, threshold 0.5, pixels pooled over the held-out source at the pack's
2 um/px, ignored pixels left out): precision, cIoU, mIoU, cDICE, mDICE; plus the cell
accuracy of the >50 % rule (the predicted mask at each nucleus centroid, nuclei being 3-5 px
wide at 2 um/px) against the rule applied to the source's mask as drawn, next to UAM's own
cell prediction and the multimodal cell head.

``report`` renders docs/results.md (section ``regions``) and the model card from the JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
#: arm -> (cell tokens, MAMIM encoder)
ARMS = {
    "image-only": (False, False),
    "multimodal": (True, False),
    "image-only + MAMIM": (False, True),
    "multimodal + MAMIM": (True, True),
}
METRICS = ("precision", "cIoU", "mIoU", "cDICE", "mDICE")
IGNORE = 255
#: Sources the previous shipped weights (release 0.2, before this recipe) were trained on.
BASELINE_TRAINED = ("camelyon", "bcss")
#: Row name of those weights (multimodal, SHA-256 231296f7...; ``git show adf48bd:src/napari_uam/weights/tumor_mask.pt``).
BASELINE = "previous weights (multimodal, CAMELYON + BCSS)"


def _log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


# ----------------------------------------------------------------------------- data


@dataclass
class Item:
    key: str
    source: str
    kind: str
    label: int | None
    mpp: float  # stored pixel size
    image: "torch.Tensor"  # (3, h, w) uint8 on the device  # noqa: F821
    target: "torch.Tensor | None" = None  # (h, w) uint8 0/1/255 (training)  # noqa: F821
    eval_target: "np.ndarray | None" = None
    yx: "torch.Tensor | None" = None  # noqa: F821
    vec: "torch.Tensor | None" = None  # noqa: F821
    truth: "torch.Tensor | None" = None  # noqa: F821


def load_pack(folder: Path, device: str, with_pretrain: bool = False) -> tuple[dict, list[Item], list]:
    """The pack's items on ``device`` (and the pretraining-only images when asked)."""
    import torch
    from PIL import Image

    meta = json.loads((folder / "meta.json").read_text())

    def img(key):
        a = np.asarray(Image.open(folder / "img" / f"{key}.jpg").convert("RGB"))
        return torch.from_numpy(np.ascontiguousarray(a)).permute(2, 0, 1).contiguous().to(device)

    items = []
    for r in meta["items"]:
        it = Item(r["key"], r["source"], r["kind"], r["label"], float(r["stored_mpp"]), img(r["key"]))
        if r["kind"] == "mask":
            t = np.asarray(Image.open(folder / "tgt" / f"{r['key']}.png"))
            it.target = torch.from_numpy(np.ascontiguousarray(t)).to(device)
            e = folder / "evt" / f"{r['key']}.png"
            it.eval_target = np.asarray(Image.open(e)) if e.is_file() else t
        c = folder / "cells" / f"{r['key']}.npz"
        if c.is_file():
            z = np.load(c)
            it.yx = torch.from_numpy(z["yx"]).float().to(device)
            it.vec = torch.from_numpy(z["vec"]).float().to(device)
            it.truth = torch.from_numpy(z["truth"]).long().to(device)
        items.append(it)
    pre = [img(r["key"]) for r in meta["pretrain"]] if with_pretrain else []
    return meta, items, pre


class Sampler:
    """Random augmented crops on the device (see the module docstring)."""

    def __init__(
        self,
        items: list[Item],
        sources: list[str],
        crop: int,
        seed: int,
        device: str,
        n_vec: int,
        pool: list | None = None,
    ):
        import torch

        self.crop, self.device, self.n_vec = crop, device, n_vec
        self.gen = np.random.default_rng(seed)
        self.mask_src = {}
        self.tile_src = {}
        for it in items:
            if it.source not in sources:
                continue
            if it.kind == "mask":
                self.mask_src.setdefault(it.source, []).append(it)
            else:
                self.tile_src.setdefault(it.source, {}).setdefault(int(it.label), []).append(it)
        self.mask_w = {
            s: np.array([i.image.shape[1] * i.image.shape[2] for i in v], float) for s, v in self.mask_src.items()
        }
        self.pool = pool or []
        self.torch = torch

    def _window(self, image, target, yx, scale):
        """One crop at magnification ``scale``, flipped; returns image (3, c, c) float,
        target (c, c) uint8 (IGNORE outside the image) and cell positions in the crop."""
        torch, F, g, c = self.torch, self.torch.nn.functional, self.gen, self.crop
        cs = max(int(round(c / scale)), 8)
        _, h, w = image.shape
        y0 = int(g.integers(min(0, h - cs), max(h - cs, 0) + 1))
        x0 = int(g.integers(min(0, w - cs), max(w - cs, 0) + 1))
        ys, xs = max(y0, 0), max(x0, 0)
        ye, xe = min(y0 + cs, h), min(x0 + cs, w)
        im = torch.full((3, cs, cs), 255, dtype=torch.uint8, device=image.device)
        im[:, ys - y0 : ye - y0, xs - x0 : xe - x0] = image[:, ys:ye, xs:xe]
        tg = torch.full((cs, cs), IGNORE, dtype=torch.uint8, device=image.device)
        if target is not None:
            tg[ys - y0 : ye - y0, xs - x0 : xe - x0] = target[ys:ye, xs:xe]
        im = F.interpolate(im[None].float(), size=(c, c), mode="bilinear", align_corners=False, antialias=cs > c)[0]
        tg = F.interpolate(tg[None, None].float(), size=(c, c), mode="nearest")[0, 0]
        sel = None
        pos = None
        if yx is not None and len(yx):
            sel = (yx[:, 0] >= y0) & (yx[:, 0] < y0 + cs) & (yx[:, 1] >= x0) & (yx[:, 1] < x0 + cs)
            pos = (yx[sel] - yx.new_tensor([y0, x0]) + 0.5) * (c / cs) - 0.5
        if g.random() < 0.5:
            im, tg = im.flip(-1), tg.flip(-1)
            pos = None if pos is None else torch.stack([pos[:, 0], c - 1 - pos[:, 1]], 1)
        if g.random() < 0.5:
            im, tg = im.flip(-2), tg.flip(-2)
            pos = None if pos is None else torch.stack([c - 1 - pos[:, 0], pos[:, 1]], 1)
        if g.random() < 0.5:
            im, tg = im.transpose(-1, -2), tg.transpose(-1, -2)
            pos = None if pos is None else pos.flip(1)
        return im, tg, sel, pos

    def _stain(self, x):
        """Stain / colour jitter of a (B, 3, c, c) [0, 255] batch, in optical density."""
        torch, b = self.torch, x.shape[0]
        g = self.gen
        od = -torch.log((x + 1.0) / 256.0)
        a = torch.from_numpy(g.uniform(0.8, 1.2, (b, 3, 1, 1)).astype(np.float32)).to(x.device)
        s = torch.from_numpy(g.uniform(-0.08, 0.08, (b, 3, 1, 1)).astype(np.float32)).to(x.device)
        x = torch.exp(-(od * a + s)) * 256.0 - 1.0
        con = torch.from_numpy(g.uniform(0.85, 1.15, (b, 1, 1, 1)).astype(np.float32)).to(x.device)
        bri = torch.from_numpy(g.uniform(-15, 15, (b, 1, 1, 1)).astype(np.float32)).to(x.device)
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * con + mean + bri).clamp(0, 255)

    def _scale(self):
        return float(np.exp(self.gen.uniform(np.log(0.8), np.log(1.25))))

    def batch(self, n_mask: int, n_weak: int, with_cells: bool):
        """Images (B, 3, c, c) standardised, target (B, 1, c, c) in {0, 1}, valid pixel weights,
        per-row kind (1 mask, 2 weak positive, 3 weak negative), cells P, V, T, M."""
        from napari_uam.models.multimodal import standardise

        torch, g = self.torch, self.gen
        ims, tgs, kinds, cells = [], [], [], []
        msrc = sorted(self.mask_src)
        for _ in range(n_mask if msrc else 0):
            s = msrc[g.integers(len(msrc))]
            w = self.mask_w[s]
            it = self.mask_src[s][g.choice(len(w), p=w / w.sum())]
            im, tg, sel, pos = self._window(
                it.image, it.target, it.yx if with_cells else None, it.mpp / 2.0 * self._scale()
            )
            ims.append(im)
            tgs.append(tg)
            kinds.append(1)
            cells.append(None if sel is None else (pos, it.vec[sel], it.truth[sel]))
        tsrc = sorted(self.tile_src)
        for _ in range((n_weak if msrc else n_mask + n_weak) if tsrc else 0):
            s = tsrc[g.integers(len(tsrc))]
            labels = sorted(self.tile_src[s])
            lab = labels[g.integers(len(labels))]
            pool = self.tile_src[s][lab]
            it = pool[g.integers(len(pool))]
            # Tiles coarser than the working pixel size are magnified to it (scale > 1).
            im, tg, _, _ = self._window(it.image, None, None, it.mpp / 2.0 * self._scale())
            tg = torch.full_like(tg, lab)  # the label holds for the whole tile
            ims.append(im)
            tgs.append(tg)
            kinds.append(2 if lab == 1 else 3)
            cells.append(None)
        x = standardise(self._stain(torch.stack(ims)))
        t = torch.stack(tgs)[:, None]
        valid = (t != IGNORE).float()
        t = torch.where(t == IGNORE, torch.zeros_like(t), t)
        kinds = torch.tensor(kinds, device=x.device)
        n = max([len(c[0]) for c in cells if c is not None] + [1])
        B = len(ims)
        P = torch.zeros(B, n, 2, device=x.device)
        V = torch.zeros(B, n, self.n_vec, device=x.device)
        T = torch.zeros(B, n, dtype=torch.long, device=x.device)
        M = torch.zeros(B, n, dtype=torch.bool, device=x.device)
        for i, c in enumerate(cells):
            if c is not None and len(c[0]):
                k = len(c[0])
                P[i, :k], V[i, :k], T[i, :k], M[i, :k] = c[0], c[1], c[2], True
        return x, t, valid, kinds, P, V, T, M

    def pretrain_batch(self, n: int, items: list[Item]):
        from napari_uam.models.multimodal import standardise

        torch, g = self.torch, self.gen
        pool = [i.image for i in items] + list(self.pool)
        ims = []
        for _ in range(n):
            im = pool[g.integers(len(pool))]
            ims.append(self._window(im, None, None, self._scale())[0])
        return standardise(self._stain(torch.stack(ims)))


# ----------------------------------------------------------------------------- training


def region_loss(
    logits, t, valid, kinds, cell_logits=None, T=None, M=None, cell_weight=0.5, weak_weight=0.5, topk_frac=0.05
):
    """Mask rows: BCE + soft Dice on valid pixels; weak rows: top-k pooled BCE (tumor tile)
    or per-pixel BCE to 0 (benign tile); plus the cell BCE."""
    import torch
    import torch.nn.functional as F

    loss = logits.new_zeros(())
    m = kinds == 1
    if m.any():
        lg, tt, vv = logits[m], t[m], valid[m]
        bce = (F.binary_cross_entropy_with_logits(lg, tt, reduction="none") * vv).sum() / vv.sum().clamp(min=1)
        p = torch.sigmoid(lg) * vv
        dice = 1 - (2 * (p * tt * vv).sum() + 1) / (p.sum() + (tt * vv).sum() + 1)
        loss = loss + bce + dice
    pos, neg = kinds == 2, kinds == 3
    if pos.any():
        flat = logits[pos].flatten(1)
        k = max(int(flat.shape[1] * topk_frac), 1)
        top = flat.topk(k, dim=1).values
        pooled = torch.sigmoid(top).mean(1).clamp(1e-6, 1 - 1e-6)
        loss = loss + weak_weight * (-torch.log(pooled)).mean()
    if neg.any():
        loss = loss + weak_weight * F.binary_cross_entropy_with_logits(logits[neg], torch.zeros_like(logits[neg]))
    if cell_logits is not None and M is not None and M.any():
        loss = loss + cell_weight * F.binary_cross_entropy_with_logits(cell_logits[M], T[M].float())
    return loss


def _lr(progress: float, warm: float = 0.03) -> float:
    if progress < warm:
        return max(progress / warm, 0.02)
    return 0.5 * (1 + math.cos(math.pi * min((progress - warm) / (1 - warm), 1.0)))


def new_model(use_cells: bool, n_vec: int, device: str):
    from napari_uam.models.multimodal import TumorRegionNet
    from napari_uam.models.ssm import set_ssm_backend

    m = TumorRegionNet(use_cells=use_cells, cell_features=n_vec)
    return set_ssm_backend(m, "torch", "parallel" if device == "cuda" else "recurrent").to(device)


def train(
    model, sampler: Sampler, seconds: float, max_steps: int, batch: int, lr: float, seed: int, use_cells: bool, log=_log
) -> dict:
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    model.train()
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps:
        prog = max(step / max_steps, (time.perf_counter() - t0) / seconds)
        if prog >= 1:
            break
        for gp in opt.param_groups:
            gp["lr"] = lr * _lr(prog)
        x, t, valid, kinds, P, V, T, M = sampler.batch(batch, batch // 2, use_cells)
        if use_cells:
            logits, cl = model(x, P, V, M)
        else:
            logits, cl = model(x)
        loss = region_loss(logits, t, valid, kinds, cl, T, M)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
        if log and step % 200 == 0:
            log(f"  step {step} loss {np.mean(losses[-50:]):.4f}")
    k = max(len(losses) // 10, 1)
    return {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "first_loss": float(np.mean(losses[:k])) if losses else None,
        "last_loss": float(np.mean(losses[-k:])) if losses else None,
    }


def pretrain(
    encoder, sampler: Sampler, items, seconds: float, max_steps: int, batch: int, lr: float, seed: int
) -> dict:
    import torch

    from napari_uam.models.ssmamba import MAMIMDecoder, mamim_loss

    torch.manual_seed(seed)
    dev = next(encoder.parameters()).device
    dec = MAMIMDecoder(encoder.widths, backend="torch").to(dev)
    from napari_uam.models.ssm import set_ssm_backend

    set_ssm_backend(dec, "torch", "parallel" if dev.type == "cuda" else "recurrent")
    params = list(encoder.parameters()) + list(dec.parameters())
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.05)
    tg = torch.Generator().manual_seed(seed)
    encoder.train()
    t0, step, losses = time.perf_counter(), 0, []
    while step < max_steps:
        prog = max(step / max_steps, (time.perf_counter() - t0) / seconds)
        if prog >= 1:
            break
        for gp in opt.param_groups:
            gp["lr"] = lr * _lr(prog)
        x = sampler.pretrain_batch(batch, items)
        loss = mamim_loss(encoder, dec, x, generator=tg)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        step += 1
    k = max(len(losses) // 10, 1)
    return {
        "steps": step,
        "seconds": time.perf_counter() - t0,
        "first_loss": float(np.mean(losses[:k])),
        "last_loss": float(np.mean(losses[-k:])),
        "pool_images": len(items) + len(sampler.pool),
    }


# ----------------------------------------------------------------------------- evaluation


def confusion(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """[TP, FP, FN, TN] over the annotated pixels (truth 0 / 1; IGNORE left out)."""
    keep = truth != IGNORE
    p, t = pred[keep].astype(bool), truth[keep] == 1
    tp = int(np.count_nonzero(p & t))
    fp = int(np.count_nonzero(p & ~t))
    fn = int(np.count_nonzero(~p & t))
    return np.array([tp, fp, fn, int(keep.sum()) - tp - fp - fn], dtype=np.int64)


def metrics(counts) -> dict:
    from research.regions.train_multimodal import segmentation_metrics

    return segmentation_metrics(np.asarray(counts))


def predict_batch(model, images: "torch.Tensor", mpp: float, device: str, work_mpp: float = 2.0) -> np.ndarray:  # noqa: F821
    """:func:`napari_uam.tumor.predict_probability` for a (B, 3, h, w) uint8 batch of images of
    one size and pixel size, without cells; (B, h, w) probabilities."""
    import torch
    import torch.nn.functional as F

    from napari_uam.models.multimodal import standardise

    b, _, h, w = images.shape
    f = mpp / work_mpp
    hw, ww = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
    x = images.float()
    if (hw, ww) != (h, w):
        x = (
            F.interpolate(x, size=(hw, ww), mode="area")
            if f < 1
            else F.interpolate(x, size=(hw, ww), mode="bilinear", align_corners=False)
        )
    x = standardise(x)
    ph, pw = -hw % 32, -ww % 32
    x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < hw and pw < ww else "replicate")
    with torch.no_grad():
        logits, _ = model(x)
        p = torch.sigmoid(logits[..., :hw, :ww].float())
        if (hw, ww) != (h, w):
            p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    return p[:, 0].clamp(0, 1).cpu().numpy()


def predict_items(model, items: list[Item], device: str, use_cells: bool, chunk: int = 32) -> dict:
    """key -> (h, w) probability; images with cells one by one through the product's
    ``predict_probability``, the others batched by size."""
    import torch

    from napari_uam.tumor import predict_probability

    out, groups = {}, {}
    model.eval()
    for it in items:
        if use_cells and it.vec is not None and len(it.vec):
            rgb = it.image.permute(1, 2, 0).cpu().numpy()
            out[it.key] = predict_probability(
                model, rgb, it.mpp, 2.0, it.vec.cpu().numpy(), it.yx.cpu().numpy(), device
            )
        else:
            groups.setdefault((tuple(it.image.shape), round(it.mpp, 4)), []).append(it)
    for (_, mpp), its in groups.items():
        for lo in range(0, len(its), chunk):
            part = its[lo : lo + chunk]
            probs = predict_batch(model, torch.stack([i.image for i in part]), mpp, device)
            out.update({i.key: p for i, p in zip(part, probs)})
    return out


def evaluate(model, items: list[Item], source: str, device: str, use_cells: bool) -> dict:
    """Pooled Appendix C metrics of ``model`` on one mask source, and the cell accuracies."""
    counts = np.zeros(4, np.int64)
    rule_ok = uam_ok = head_ok = n_cells = n_head = 0
    missed = big = 0
    model.eval()
    mine = [i for i in items if i.source == source and i.kind == "mask"]
    probs = predict_items(model, mine, device, use_cells)
    for it in mine:
        pred = probs[it.key] > 0.5
        truth = it.eval_target
        counts += confusion(pred, truth)
        ann = truth != IGNORE
        if ann.any() and (truth[ann] == 1).mean() >= 1 / 3:
            big += 1
            missed += int(not pred.any())
        if it.truth is not None and len(it.truth):
            yy = np.clip(np.round(it.yx[:, 0].cpu().numpy()).astype(int), 0, pred.shape[0] - 1)
            xx = np.clip(np.round(it.yx[:, 1].cpu().numpy()).astype(int), 0, pred.shape[1] - 1)
            tr = it.truth.cpu().numpy()
            rule_ok += int((pred[yy, xx].astype(int) == tr).sum())
            uam_ok += int(((it.vec[:, -1].cpu().numpy() > 0.5).astype(int) == tr).sum())
            n_cells += len(tr)
            if use_cells and model.use_cells:
                cl = _head(model, it, device)
                if cl is not None:
                    head_ok += int(((cl > 0).astype(int) == tr).sum())
                    n_head += len(tr)
    out = {
        **metrics(counts),
        "pixels": counts.tolist(),
        "n_cells": n_cells,
        "images_third_tumor": big,
        "images_third_tumor_empty": missed,
        "cells_rule_accuracy": 100.0 * rule_ok / n_cells if n_cells else None,
        "cells_uam_accuracy": 100.0 * uam_ok / n_cells if n_cells else None,
    }
    if n_head:
        out["cells_head_accuracy"] = 100.0 * head_ok / n_head
    return out


def _head(model, it: Item, device: str):
    import torch
    import torch.nn.functional as F

    from napari_uam.models.multimodal import standardise

    x = standardise(it.image[None].float())
    h, w = x.shape[-2:]
    x = F.pad(x, (0, -w % 32, 0, -h % 32), mode="replicate").to(device)
    with torch.no_grad():
        _, cl = model(
            x,
            it.yx[None].to(device),
            it.vec[None].to(device),
            torch.ones(1, len(it.yx), dtype=torch.bool, device=device),
        )
    return None if cl is None else cl[0].cpu().numpy()


def evaluate_tiles(model, items: list[Item], device: str, use_cells: bool) -> dict:
    """Tile sets: share of tumor tiles with a non-empty mask and of benign tiles with an
    empty one (only meaningful for models that did not train on them: the baseline)."""
    out = {}
    for s in sorted({i.source for i in items if i.kind == "tiles"}):
        hit = {0: [0, 0], 1: [0, 0]}
        mine = [i for i in items if i.source == s]
        probs = predict_items(model, mine, device, False)
        for it in mine:
            frac = float((probs[it.key] > 0.5).mean())
            ok = frac > 0 if it.label == 1 else frac == 0
            hit[it.label][0] += int(ok)
            hit[it.label][1] += 1
        out[s] = {
            "tumor_tiles_nonempty": 100.0 * hit[1][0] / max(hit[1][1], 1),
            "benign_tiles_empty": 100.0 * hit[0][0] / max(hit[0][1], 1),
            "n": hit[0][1] + hit[1][1],
        }
    return out


# ----------------------------------------------------------------------------- jobs


def run_job(a) -> dict:
    import torch

    torch.set_num_threads(1)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t_load = time.perf_counter()
    meta, items, pool = load_pack(Path(a.data), device, with_pretrain=a.kind == "pretrain")
    n_vec = int(meta["cell_encoder"]["n_vector"])
    sources = sorted({i.source for i in items})
    mask_sources = sorted({i.source for i in items if i.kind == "mask"})
    res = {
        "job": a.job,
        "kind": a.kind,
        "arm": a.arm,
        "holdout": a.holdout,
        "device": device,
        "load_s": time.perf_counter() - t_load,
        "seed": a.seed,
    }
    out = Path(a.out)
    if a.kind == "baseline":
        from napari_uam.models.ssm import set_ssm_backend
        from napari_uam.tumor import TumorMaskModel, read_tumor_checkpoint

        tm = TumorMaskModel(read_tumor_checkpoint(a.weights), device=device, backend="torch")
        set_ssm_backend(tm.model, "torch", "parallel" if device == "cuda" else "recurrent")
        res["eval"] = {s: evaluate(tm.model, items, s, device, tm.uses_cells) for s in mask_sources}
        res["tiles"] = evaluate_tiles(tm.model, items, device, tm.uses_cells)
        res["uses_cells"] = tm.uses_cells
        return res
    sampler = Sampler(items, [s for s in sources if s != a.holdout], a.crop, a.seed, device, n_vec, pool)
    if a.kind == "pretrain":
        from napari_uam.models.ssm import set_ssm_backend
        from napari_uam.models.ssmamba import SSMambaEncoder

        enc = set_ssm_backend(SSMambaEncoder(), "torch", "parallel" if device == "cuda" else "recurrent").to(device)
        res["fit"] = pretrain(enc, sampler, items, a.seconds, a.max_steps, a.batch * 2, a.lr, a.seed)
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        tmp = out / "ckpt" / "mamim_encoder.pt.tmp"
        torch.save({k: v.detach().cpu() for k, v in enc.state_dict().items()}, tmp)
        os.replace(tmp, out / "ckpt" / "mamim_encoder.pt")  # the waiting jobs see it whole
        return res
    use_cells, mamim = ARMS[a.arm]
    model = new_model(use_cells, n_vec, device)
    if mamim:
        enc_path = out / "ckpt" / "mamim_encoder.pt"
        while not enc_path.is_file():  # started with phase A: data loaded, waiting for the encoder
            if (out / "jobs" / "pretrain.json").is_file():
                raise RuntimeError("MAMIM pretraining ended without an encoder")
            time.sleep(1.0)
        res["waited_s"] = time.perf_counter() - t_load
        state = torch.load(enc_path, map_location=device)
        model.encoder.load_state_dict(state)
    res["fit"] = train(model, sampler, a.seconds, a.max_steps, a.batch, a.lr, a.seed, use_cells, log=None)
    if a.holdout:
        res["eval"] = {a.holdout: evaluate(model, items, a.holdout, device, use_cells)}
    else:  # all-source model: shipped candidate
        from napari_uam.models.ssm import set_ssm_backend
        from napari_uam.tumor import read_tumor_checkpoint, save_tumor_checkpoint

        old = read_tumor_checkpoint(a.weights)
        ship = set_ssm_backend(model.cpu(), "auto", "auto")
        name = a.arm.replace(" + ", "_").replace("-", "_")
        (out / "ckpt").mkdir(parents=True, exist_ok=True)
        res["sha256"] = save_tumor_checkpoint(
            out / "ckpt" / f"{name}.pt",
            ship,
            work_mpp=2.0,
            cell_encoder=old["cell_encoder"] if use_cells else None,
            training={
                "recipe": "research/regions/loso.py",
                "arm": a.arm,
                "sources": sources,
                "fit": res["fit"],
                "seed": a.seed,
                "device": device,
                "batch": a.batch,
                "crop": a.crop,
                "lr": a.lr,
                "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
            },
            model_id="tumor_mask",
            half=True,
        )
        res["checkpoint"] = f"ckpt/{name}.pt"
    return res


def job_main(a) -> int:
    out = Path(a.out) / "jobs"
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    try:
        res = run_job(a)
    except Exception as err:  # recorded, so that the other jobs' results still come back
        import traceback

        res = {"job": a.job, "error": f"{type(err).__name__}: {err}", "trace": traceback.format_exc()[-3000:]}
    res["total_s"] = time.perf_counter() - t0
    (out / f"{a.job}.json").write_text(json.dumps(res, indent=1, default=float))
    return 0


def orchestrate(a) -> int:
    """Phase A and B as parallel processes (see the module docstring)."""
    out = Path(a.out)
    (out / "jobs").mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    t_start = time.time()
    meta = json.loads((Path(a.data) / "meta.json").read_text())
    holdouts = a.holdouts or sorted({r["source"] for r in meta["items"] if r["kind"] == "mask"})

    def spawn(job, kind, arm="", holdout="", seconds=a.phase_s):
        cmd = [
            sys.executable,
            "-m",
            "research.regions.loso",
            "job",
            "--job",
            job,
            "--kind",
            kind,
            "--arm",
            arm,
            "--holdout",
            holdout,
            "--data",
            a.data,
            "--out",
            a.out,
            "--seconds",
            str(seconds),
            "--max-steps",
            str(a.max_steps),
            "--batch",
            str(a.batch),
            "--crop",
            str(a.crop),
            "--lr",
            str(a.lr),
            "--seed",
            str(a.seed),
            "--weights",
            a.weights,
        ]
        log = open(out / "jobs" / f"{job}.log", "w")
        return job, subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(REPO))

    def name(arm):
        return arm.replace(" + ", "_").replace("-", "_")

    arms = [x for x in a.arms if x in ARMS]
    plain = [x for x in arms if not ARMS[x][1]]
    with_mamim = [x for x in arms if ARMS[x][1]]
    procs = []
    pre = spawn("pretrain", "pretrain", seconds=a.pretrain_s or a.phase_s) if with_mamim else None
    procs.append(spawn("baseline", "baseline"))
    for arm in plain:
        procs += [spawn(f"{name(arm)}__{h}", "fold", arm, h) for h in holdouts]
        if a.finals:
            procs.append(spawn(f"{name(arm)}__all", "final", arm, ""))
    # Phase B jobs start now too: they load the data, then wait for the pretrained encoder.
    for arm in with_mamim:
        procs += [spawn(f"{name(arm)}__{h}", "fold", arm, h) for h in holdouts]
        if a.finals:
            procs.append(spawn(f"{name(arm)}__all", "final", arm, ""))
    _log(f"{len(procs) + bool(pre)} jobs started")
    if pre is not None:
        pre[1].wait()
        _log(f"pretraining done after {time.time() - t_start:.0f} s")
    for job, p in procs:
        p.wait()
    results = {}
    for f in sorted((out / "jobs").glob("*.json")):
        results[f.stem] = json.loads(f.read_text())
    summary = {
        "settings": {
            "phase_s": a.phase_s,
            "pretrain_s": a.pretrain_s or a.phase_s,
            "max_steps": a.max_steps,
            "batch": a.batch,
            "weak_batch": a.batch // 2,
            "crop": a.crop,
            "lr": a.lr,
            "seed": a.seed,
            "work_mpp": meta["work_mpp"],
            "arms": arms,
            "holdouts": holdouts,
        },
        "pack": {
            "items": len(meta["items"]),
            "pretrain": len(meta["pretrain"]),
            "per_source": {s: sum(r["source"] == s for r in meta["items"]) for s in meta["sources"]},
            "cells": {s: sum(r["n_cells"] for r in meta["items"] if r["source"] == s) for s in meta["sources"]},
            "cell_encoder": meta["cell_encoder"],
            "sources": meta["sources"],
            "caps": meta.get("caps"),
        },
        "jobs": results,
        "total_s": time.time() - t_start,
    }
    (out / "loso_results.json").write_text(json.dumps(summary, indent=1, default=float))
    errs = [k for k, v in results.items() if "error" in v]
    _log(f"done in {summary['total_s']:.0f} s; {len(results)} jobs, errors: {errs}")
    return 0


# ----------------------------------------------------------------------------- report


def table(summary: dict) -> dict:
    """arm -> source -> metrics (LOSO), plus 'current weights' -> source -> metrics."""
    jobs = summary["jobs"]
    t: dict = {}
    base = jobs.get("baseline", {})
    if "eval" in base:
        t[BASELINE] = base["eval"]
    for arm in summary["settings"]["arms"]:
        n = arm.replace(" + ", "_").replace("-", "_")
        row = {}
        for h in summary["settings"]["holdouts"]:
            j = jobs.get(f"{n}__{h}", {})
            if "eval" in j:
                row[h] = j["eval"][h]
        if row:
            t[arm] = row
    return t


def summarise(row: dict, holdouts: list[str]) -> dict:
    """Mean and worst (minimum) of every metric over the held-out sources."""
    out = {}
    for k in METRICS:
        vals = [row[h][k] for h in holdouts if h in row and row[h][k] is not None and np.isfinite(row[h][k])]
        out[k] = {
            "mean": float(np.mean(vals)) if vals else float("nan"),
            "worst": float(np.min(vals)) if vals else float("nan"),
            "n": len(vals),
        }
    return out


def decide(summary: dict) -> dict:
    """The best LOSO arm by mean mDICE, and whether it beats the current weights on both the
    mean and the worst mDICE over the same sources (then it ships)."""
    hold = summary["settings"]["holdouts"]
    t = table(summary)
    arms = {a: summarise(r, hold) for a, r in t.items() if a != BASELINE and len(r) == len(hold)}
    if not arms:
        return {"winner": None, "ship": False, "reason": "no complete LOSO arm"}
    win = max(arms, key=lambda a: arms[a]["mDICE"]["mean"])
    # Compared on the sources held out for both: on the ones the current weights were trained
    # on, their row is in-distribution and no leave-out model can be judged against it.
    unseen = [h for h in hold if h not in BASELINE_TRAINED]
    mine = summarise(t[win], unseen)["mDICE"]
    base = summarise(t.get(BASELINE, {}), unseen)["mDICE"]
    ok = (mine["mean"] > base["mean"]) and (mine["worst"] > base["worst"])
    n = win.replace(" + ", "_").replace("-", "_")
    final = summary["jobs"].get(f"{n}__all", {})
    where = f"over the sources held out for both ({', '.join(unseen)})"
    return {
        "winner": win,
        "ship": bool(ok and "checkpoint" in final),
        "checkpoint": final.get("checkpoint"),
        "winner_mDICE": arms[win]["mDICE"],
        "winner_mDICE_unseen": mine,
        "baseline_mDICE_unseen": base,
        "reason": f"beats the previous weights on mean and worst mDICE {where}"
        if ok
        else f"does not beat the previous weights on both mean and worst mDICE {where}",
    }


def _f(v):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.1f}"


def render(summary: dict, results_md: Path, card: Path | None, decision: dict) -> None:
    from research.sections import markers, replace_section

    hold = summary["settings"]["holdouts"]
    t = table(summary)
    s = summary["settings"]
    lines = [
        markers("regions")[0],
        "## Tumor-region mask: leave-one-source-out (LOSO)",
        "",
        "Regenerate: `python -m research.regions.loso report --json docs/regions_loso.json` "
        "(the run: `python -m research.regions.pack` on the CPU, then "
        "`python -m research.regions.loso run` on one GPU).",
        "",
        f"Each fold trains on every region source but one (the tile sets always as weak supervision) and is "
        f"tested on the held-out source: pixels pooled at {s['work_mpp']} um/px, threshold 0.5, ignored pixels "
        f"(epithelium-only sources: the stroma between tumor glands; see research/regions/sources.py) left out. "
        f"Every fold: {s['phase_s']:.0f} s of training on the shared GPU (steps recorded in the JSON), batch "
        f"{s['batch']} mask crops + {s['weak_batch']} tiles of {s['crop']} px, seed {s['seed']} (one seed). "
        "MAMIM: the encoder pretrained "
        f"for {s['pretrain_s']:.0f} s on the whole H&E pool ({summary['pack']['items']} labelled images and tiles "
        f"+ {summary['pack']['pretrain']} nucleus-set images, the held-out source's images included, unlabelled). "
        "The previous shipped weights are scored on every source the same way; they were trained on CAMELYON "
        "and BCSS, so those two rows are not held out for them.",
        "",
    ]
    hdr = (
        "| model | source | "
        + " | ".join(METRICS)
        + " | cells: >50 % rule | cells: UAM | cells: head | empty where >= 1/3 tumor |"
    )
    lines += [hdr, "|" + "---|" * (len(METRICS) + 6)]
    for arm, row in t.items():
        for h in hold:
            if h not in row:
                continue
            m = row[h]
            e = f"{m.get('images_third_tumor_empty', 0)}/{m.get('images_third_tumor', 0)}"
            lines.append(
                f"| {arm} | {h} | "
                + " | ".join(_f(m[k]) for k in METRICS)
                + f" | {_f(m.get('cells_rule_accuracy'))} | {_f(m.get('cells_uam_accuracy'))} | "
                f"{_f(m.get('cells_head_accuracy'))} | {e} |"
            )
        sm = summarise(row, hold)
        lines.append(f"| **{arm}** | **mean** | " + " | ".join(_f(sm[k]["mean"]) for k in METRICS) + " | | | | |")
        lines.append(f"| **{arm}** | **worst** | " + " | ".join(_f(sm[k]["worst"]) for k in METRICS) + " | | | | |")
    # The current weights trained on CAMELYON and BCSS: compare on the sources no model saw too.
    unseen = [h for h in hold if h not in BASELINE_TRAINED]
    lines += [
        "",
        f"mDICE mean / worst over all {len(hold)} sources, and over the {len(unseen)} sources that are "
        f"held out for every row, the current weights included ({', '.join(unseen)}):",
        "",
        "| model | mean (all) | worst (all) | mean (unseen) | worst (unseen) |",
        "|---|---|---|---|---|",
    ]
    for arm, row in t.items():
        a_, u_ = summarise(row, hold)["mDICE"], summarise(row, unseen)["mDICE"]
        lines.append(f"| {arm} | {_f(a_['mean'])} | {_f(a_['worst'])} | {_f(u_['mean'])} | {_f(u_['worst'])} |")
    steps = [j["fit"]["steps"] for k, j in summary["jobs"].items() if "__" in k and "fit" in j]
    if steps:
        lines += [
            "",
            f"Steps done per fine-tune in the {s['phase_s']:.0f} s budget: {min(steps)}-{max(steps)} "
            f"({len(summary['jobs'])} processes shared the GPU); MAMIM: {summary['jobs'].get('pretrain', {}).get('fit', {}).get('steps')} steps.",
        ]
    tiles = summary["jobs"].get("baseline", {}).get("tiles")
    if tiles:
        lines += [
            "",
            "Current shipped weights on the tile sets (never trained on them): "
            + "; ".join(
                f"{k}: {_f(v['tumor_tiles_nonempty'])} % of tumor tiles with a non-empty mask, "
                f"{_f(v['benign_tiles_empty'])} % of benign tiles empty"
                for k, v in tiles.items()
            )
            + ".",
        ]
    lines += [
        "",
        f"Decision of this {s['phase_s']:.0f} s comparison: best LOSO arm **{decision.get('winner')}** "
        "(mean mDICE); "
        + ("its all-source model qualifies" if decision.get("ship") else "not shipped")
        + f" ({decision['reason']}). The longer 3-seed run below decides what ships.",
        markers("regions")[1],
    ]
    replace_section(results_md, "\n".join(lines), markers("regions"), "# Results")


def arm_vs_baseline(summary: dict, arm: str) -> dict:
    """mDICE mean / worst and empty masks of ``arm`` and of the previous weights over the
    sources held out for both (see :data:`BASELINE_TRAINED`)."""
    hold = summary["settings"]["holdouts"]
    unseen = [h for h in hold if h not in BASELINE_TRAINED]
    t = table(summary)
    out = {}
    for name in (arm, BASELINE):
        row = t.get(name, {})
        out[name] = {
            **summarise(row, unseen)["mDICE"],
            "empty": sum(row[h].get("images_third_tumor_empty", 0) for h in unseen if h in row),
        }
    out["beats"] = (out[arm]["mean"] > out[BASELINE]["mean"]) and (out[arm]["worst"] > out[BASELINE]["worst"])
    out["unseen"] = unseen
    return out


def decide_seeds(seeds: dict, cells: dict, arm: str = "image-only") -> dict:
    """What ships from the 3-seed run.

    The arm must beat the previous weights on mean and worst mDICE over the sources held out
    for both in every seed. Of its all-source models (one per seed), the one with the best worst
    balanced accuracy on the cell-labelled sources no region model was trained on (the only
    held-out check of the shipped files themselves) ships, if it also beats the previous
    weights there on worst and mean.
    """
    per_seed = {r["settings"]["seed"]: arm_vs_baseline(r, arm) for r in seeds["runs"]}
    if not all(v["beats"] for v in per_seed.values()):
        return {"ship": None, "per_seed": per_seed, "reason": f"{arm} does not beat the previous weights in every seed"}

    def worst_mean(key):
        v = [cells["sources"][src][key]["balanced_accuracy"] for src in cells["sources"]]
        return min(v), float(np.mean(v))

    cand = {k: worst_mean(k) for k in cells["weights"] if k.startswith("seed")}
    best = max(cand, key=lambda k: cand[k][0])
    prev = worst_mean("previous")
    ok = cand[best][0] > prev[0] and cand[best][1] > prev[1]
    return {
        "ship": best if ok else None,
        "per_seed": per_seed,
        "cells": cand,
        "cells_previous": prev,
        "reason": (
            f"{arm} beats the previous weights in every seed; the {best} all-source model has the best "
            f"worst cell balanced accuracy ({cand[best][0]:.1f} vs {prev[0]:.1f}, mean {cand[best][1]:.1f} "
            f"vs {prev[1]:.1f})"
        )
        if ok
        else f"no all-source model beats the previous weights on the cell-labelled sources ({cand})",
    }


def render_seeds(seeds: dict, cells: dict, results_md: Path, card: Path | None, arm: str = "image-only") -> dict:
    """docs/results.md section ``regions-seeds`` and the model card's LOSO section."""
    from research.sections import markers, replace_section

    runs = sorted(seeds["runs"], key=lambda r: r["settings"]["seed"])
    hold = runs[0]["settings"]["holdouts"]
    d = decide_seeds(seeds, cells, arm)
    tabs = {r["settings"]["seed"]: table(r) for r in runs}
    s0 = runs[0]["settings"]
    steps = {
        r["settings"]["seed"]: [
            j["fit"]["steps"]
            for k, j in r["jobs"].items()
            if "__" in k and "fit" in j and k.startswith(arm.replace("-", "_"))
        ]
        for r in runs
    }
    n_jobs = {r["settings"]["seed"]: len(r["jobs"]) for r in runs}
    lines = [
        markers("regions-seeds")[0],
        "## Tumor-region mask: longer training, 3 seeds, and the shipped model",
        "",
        "Regenerate: `python -m research.regions.loso report` (reads docs/regions_loso_seeds.json and "
        "docs/regions_cell_check.json). The runs: `bash research/regions/device_loso.sh` (seed 0, arms image-only "
        'and multimodal) and `SEEDS="1 2" bash research/regions/device_loso.sh` (image-only), both with '
        f"`PHASE_S={s0['phase_s']:.0f}`, on one H200; the cell check: `python -m research.regions.cell_check` (command in "
        "its docstring).",
        "",
        f"The same LOSO folds as above, but {s0['phase_s']:.0f} s per job with fewer processes on the GPU "
        f"({', '.join(f'seed {k}: {v} jobs' for k, v in n_jobs.items())}), so each fine-tune ran "
        + ", ".join(f"seed {k}: {min(v)}-{max(v)}" for k, v in steps.items() if v)
        + " steps (the 4-arm run: 464-701). "
        "Batch, crop, learning rate and augmentation as above. mDICE per held-out source (%), per seed; "
        "`empty` = images where a third or more is tumor and the mask is empty.",
        "",
    ]
    hdr = ["source"] + [f"{arm} s{k}" for k in tabs] + [f"{arm} mean", "precision (mean)", "empty (s0/s1/s2)"]
    mm = "multimodal" in tabs[0]
    if mm:
        hdr += ["multimodal s0"]
    hdr += [BASELINE]
    lines += ["| " + " | ".join(hdr) + " |", "|" + "---|" * len(hdr)]
    base = tabs[0].get(BASELINE, {})
    for h in hold:
        v = [tabs[k][arm][h]["mDICE"] for k in tabs]
        pr = [tabs[k][arm][h]["precision"] for k in tabs]
        em = "/".join(str(tabs[k][arm][h].get("images_third_tumor_empty", 0)) for k in tabs)
        row = (
            [h]
            + [_f(x) for x in v]
            + [_f(float(np.mean(v))), _f(float(np.mean(pr))), f"{em} of {tabs[0][arm][h].get('images_third_tumor', 0)}"]
        )
        if mm:
            row += [_f(tabs[0]["multimodal"][h]["mDICE"])]
        row += [_f(base[h]["mDICE"]) if h in base else "n/a"]
        lines.append("| " + " | ".join(row) + " |")
    unseen = d["per_seed"][runs[0]["settings"]["seed"]]["unseen"]
    lines += [
        "",
        f"Over the sources held out for every model, the previous weights included ({', '.join(unseen)}):",
        "",
        "| model | mDICE mean | mDICE worst | empty masks |",
        "|---|---|---|---|",
    ]
    for k, v in d["per_seed"].items():
        lines.append(f"| {arm} seed {k} | {_f(v[arm]['mean'])} | {_f(v[arm]['worst'])} | {v[arm]['empty']} |")
    pb = d["per_seed"][runs[0]["settings"]["seed"]][BASELINE]
    lines.append(f"| {BASELINE} | {_f(pb['mean'])} | {_f(pb['worst'])} | {pb['empty']} |")
    names = list(cells["weights"])
    lines += [
        "",
        "The all-source models themselves, on cell-labelled sources that no region model was trained on "
        f"(first {cells['per_source']} images of each; a cell is tumor when the mask's probability at its centre "
        "is above 0.5): balanced accuracy (%) against each source's tumor classes. The previous weights' cell "
        "tokens come from a UAM trained on CoNSeP and BRCA-M2C, so their rows there are not fully held out.",
        "",
        "| source | cells | " + " | ".join(names) + " |",
        "|" + "---|" * (len(names) + 2),
    ]
    for src, row in cells["sources"].items():
        lines.append(f"| {src} | {row['cells']} | " + " | ".join(_f(row[n]["balanced_accuracy"]) for n in names) + " |")
    for lab, fn in (("mean", np.mean), ("worst", np.min)):
        lines.append(
            f"| **{lab}** | | "
            + " | ".join(
                _f(float(fn([cells["sources"][src][n]["balanced_accuracy"] for src in cells["sources"]])))
                for n in names
            )
            + " |"
        )
    lines += [
        "",
        (
            f"Decision: **{arm}, {d['ship']}'s all-source model ships** as `tumor_mask.pt` ({d['reason']})."
            if d["ship"]
            else f"Decision: the previous weights are kept ({d['reason']})."
        ),
        "The seeds differ by up to 20 points on one source (BCSS, MoNuSAC): one seed per arm, as in the 4-arm run "
        "above, is not enough to rank arms closer than that.",
    ]
    if d["ship"]:
        k = int(d["ship"].removeprefix("seed"))
        me, pb = d["per_seed"][k][arm], d["per_seed"][k][BASELINE]
        best_md = max(float(np.mean([tabs[j][arm][h]["mDICE"] for j in tabs])) for h in hold)
        best_pr = max(float(np.mean([tabs[j][arm][h]["precision"] for j in tabs])) for h in hold)
        lines += [
            "",
            "What this does not fix (read from the tables above): "
            + (
                f"the shipped seed's LOSO fold left {me['empty']} images with an empty mask where a third or more "
                f"is tumor (previous weights: {pb['empty']}), all on EBHI; "
                if me["empty"] > pb["empty"]
                else ""
            )
            + "held out, CAMELYON lymph nodes stay at about 40 % mDICE for every new model (the previous weights, "
            "trained on them, 81.9 %); the issue's aim of mDICE >= 80 % and precision >= 80 % on new organs and "
            f"hospitals is **not met** on any held-out source (best 3-seed mean mDICE {best_md:.1f} %, best mean "
            f"precision {best_pr:.1f} %).",
        ]
    lines.append(markers("regions-seeds")[1])
    replace_section(results_md, "\n".join(lines), markers("regions-seeds"), "# Results")
    if card is not None and d["ship"]:
        _card(runs, card, arm, hold, d, cells)
    return d


def _card(runs, card: Path, arm: str, hold, d: dict, cells: dict) -> None:
    srcs = runs[0]["pack"]["sources"]
    lines = [
        f"- {n} ({v['kind']}): {v['organ']}; {v['hospital']}; licence: {v['licence']}; "
        f"{v['mpp']} um/px{' (estimate)' if v['mpp_estimated'] else ''}; tumor = {v['tumor_means']} -> {v['handling']}"
        for n, v in srcs.items()
    ]
    seed = int(d["ship"].removeprefix("seed"))
    run = next(r for r in runs if r["settings"]["seed"] == seed)
    row = table(run)[arm]
    tab = ["| source | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 1)]
    for h in hold:
        tab.append(f"| {h} | " + " | ".join(_f(row[h][k]) for k in METRICS) + " |")
    sm = summarise(row, hold)
    tab.append("| mean | " + " | ".join(_f(sm[k]["mean"]) for k in METRICS) + " |")
    tab.append("| worst | " + " | ".join(_f(sm[k]["worst"]) for k in METRICS) + " |")
    text = card.read_text() if card.is_file() else "# Model card: `tumor_mask`\n"
    start, end = "<!-- regions-loso:start -->", "<!-- regions-loso:end -->"
    body = "\n".join(
        [
            start,
            "## Training sources and leave-one-source-out evaluation",
            "",
            f"Recipe: {arm}, seed {seed}, `research/regions/loso.py` ({run['settings']['phase_s']:.0f} s on one "
            f"H200, batch {run['settings']['batch']}, crop {run['settings']['crop']} px at "
            f"{run['settings']['work_mpp']} um/px). Regenerate this section with `python -m research.regions.loso report`.",
            "",
            "Training sources (what 'tumor' means in each and how it is used):",
            "",
            *lines,
            "",
            "LOSO table of this recipe and seed (%, pooled pixels of each held-out source; the 3-seed table "
            "is in docs/results.md):",
            "",
            *tab,
            "",
            "Cell-labelled sources no region model saw, balanced accuracy of the mask at cell centres: "
            + ", ".join(
                f"{src} {cells['sources'][src][d['ship']]['balanced_accuracy']:.1f} %" for src in cells["sources"]
            )
            + " (previous weights: "
            + ", ".join(f"{cells['sources'][src]['previous']['balanced_accuracy']:.1f}" for src in cells["sources"])
            + ").",
            end,
        ]
    )
    if start in text and end in text:
        text = text.split(start)[0] + body + text.split(end, 1)[1]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    card.write_text(text)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    weights = str(REPO / "src" / "napari_uam" / "weights" / "tumor_mask.pt")
    for name in ("run", "job"):
        p = sub.add_parser(name)
        p.add_argument("--data", default=".gpu_data/regions")
        p.add_argument("--out", default="regions_out")
        p.add_argument("--max-steps", type=int, default=100000)
        p.add_argument("--batch", type=int, default=16)
        p.add_argument("--crop", type=int, default=128)
        p.add_argument("--lr", type=float, default=2e-3)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--weights", default=weights, help="current tumor-mask checkpoint (baseline, cell encoder)")
        if name == "run":
            p.add_argument("--phase-s", type=float, default=150.0, help="training seconds of every job")
            p.add_argument("--pretrain-s", type=float, default=None)
            p.add_argument("--arms", type=lambda s: [x.strip() for x in s.split(",")], default=list(ARMS))
            p.add_argument("--holdouts", nargs="*", default=None)
            p.add_argument("--no-finals", dest="finals", action="store_false")
        else:
            p.add_argument("--job", required=True)
            p.add_argument("--kind", choices=("pretrain", "fold", "final", "baseline"), required=True)
            p.add_argument("--arm", default="")
            p.add_argument("--holdout", default="")
            p.add_argument("--seconds", type=float, default=150.0)
    p = sub.add_parser("report")
    p.add_argument("--json", default=str(REPO / "docs" / "regions_loso.json"))
    p.add_argument("--seeds-json", default=str(REPO / "docs" / "regions_loso_seeds.json"))
    p.add_argument("--cell-check", default=str(REPO / "docs" / "regions_cell_check.json"))
    p.add_argument("--results-md", default=str(REPO / "docs" / "results.md"))
    p.add_argument("--card", default=str(REPO / "src" / "napari_uam" / "weights" / "tumor_mask.md"))
    a = ap.parse_args(argv)
    if a.cmd == "run":
        return orchestrate(a)
    if a.cmd == "job":
        return job_main(a)
    summary = json.loads(Path(a.json).read_text())
    d = decide(summary)
    render(summary, Path(a.results_md), Path(a.card), d)
    seeds = json.loads(Path(a.seeds_json).read_text())
    ds = render_seeds(seeds, json.loads(Path(a.cell_check).read_text()), Path(a.results_md), Path(a.card))
    print(json.dumps({"four_arms": d, "seeds": ds}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
