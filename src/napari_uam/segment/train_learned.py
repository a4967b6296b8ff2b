"""Train the nuclei U-Net of the "learned" backend on CoNSeP within a fixed time budget.

Everything after loading lives on the device: the 20 training images and their targets are
uploaded once, random crops are cut, rescaled, flipped / rotated and colour-jittered on the GPU
(bf16 autocast, channels_last), and the learning rate follows a cosine of the *elapsed time*,
so the schedule completes whatever the throughput and the run stops by itself after
``--minutes``. The exponential moving average of the weights is what is validated and saved.

Writes into ``--out``:

* ``nuclei_unet.pt``: fp16 checkpoint for :mod:`napari_uam.segment.learned` (config,
  net_mpp, state_dict, meta).
* ``metrics.json``: held-out scores (AJI, PQ, DQ, SQ, Dice, F1; mean and per image) at
  0.25 um/px and after resampling the image to 0.5 um/px, plus the training summary.
* ``train.log``: the console log.

Usage (GPU, about 6 minutes in all)::

    PYTHONPATH=src python -m napari_uam.segment.train_learned --data .gpu_data/consep \\
        --out "$OUT" --minutes 5 --device cuda

Smoke test on a CPU::

    PYTHONPATH=src python -m napari_uam.segment.train_learned --data ../shared/data/consep \\
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


def _read_pair(root: Path, i: int) -> tuple[np.ndarray, np.ndarray]:
    from PIL import Image

    # np.array (a writable copy): torch.from_numpy warns on PIL's read-only buffers.
    rgb = np.array(Image.open(root / f"train_{i}.jpg").convert("RGB"))
    inst = np.asarray(Image.open(root / f"train_{i}_inst.png")).astype(np.int32)
    return rgb, inst


def _load_train(args: tuple[str, int]) -> tuple[np.ndarray, np.ndarray]:
    rgb, inst = _read_pair(Path(args[0]), args[1])
    return rgb, make_targets(inst)


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
        targets: list of (4, H, W) float16 tensors from :func:`make_targets`.
        batch: number of crops.
        crop: output side in pixels.
        scale_range: (lo, hi) of the zoom; a crop covers ``crop * s`` source pixels.
        gen: ``torch.Generator`` on the CPU (the sampling decisions are tiny).

    Returns:
        x: (batch, 3, crop, crop) float in [0, 1].
        y: (batch, 4, crop, crop) float targets in the crop's frame: the h / v maps are
        permuted and negated with the flip / rotation so they still point away from centroids.
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
        piece = torch.cat([img[:, y0 : y0 + win, x0 : x0 + win].float() / 255.0,
                           tgt[:, y0 : y0 + win, x0 : x0 + win].float()], 0)
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
    y = torch.cat([(y[:, :1] > 0.5).float(), hv, y[:, 3:]], 1)
    return x, y


def colour_jitter(x, gen):
    """H&E stain and acquisition variation, per crop.

    Stain jitter in HED optical-density space (Tellez et al. 2018): each stain concentration is
    scaled and shifted; then brightness / contrast, an occasional 2x down-and-up resampling (a
    20x scan resampled to 40x looks like this) or blur, and sensor noise.

    Args:
        x: (B, 3, H, W) float RGB in [0, 1].
        gen: CPU ``torch.Generator``.

    Returns:
        (B, 3, H, W) float RGB in [0, 1].
    """
    import torch
    from torch.nn import functional as F

    from .stain import HED_FROM_RGB, RGB_FROM_HED

    b, dev = x.shape[0], x.device

    def u(lo, hi, *shape):
        return torch.empty(b, *shape).uniform_(lo, hi, generator=gen).to(dev)

    od = -torch.log(x.clamp(1.0 / 255.0, 1.0))
    hed = torch.einsum("bcyx,cd->bdyx", od, torch.tensor(HED_FROM_RGB, dtype=x.dtype, device=dev))
    alpha = torch.cat([u(0.7, 1.3, 2), u(0.9, 1.1, 1)], 1)[:, :, None, None]
    beta = torch.cat([u(-0.08, 0.08, 2), u(-0.02, 0.02, 1)], 1)[:, :, None, None]
    hed = hed * alpha + beta
    od = torch.einsum("bdyx,dc->bcyx", hed, torch.tensor(RGB_FROM_HED, dtype=x.dtype, device=dev))
    x = torch.exp(-od.clamp_min(0.0))
    mean = x.mean((1, 2, 3), keepdim=True)
    x = (x - mean) * u(0.8, 1.2, 1, 1, 1) + mean + u(-0.08, 0.08, 1, 1, 1)
    r = torch.rand(b, generator=gen).to(dev)[:, None, None, None]
    low = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0, mode="bilinear", align_corners=False)
    blur = F.avg_pool2d(F.pad(x, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    x = torch.where(r < 0.25, low, torch.where(r < 0.35, blur, x))
    # Drawn on the device from the global (seeded) generator: a CPU draw of B*3*H*W numbers
    # plus its upload would cost more than the training step.
    x = x + torch.randn_like(x) * u(0.0, 0.02, 1, 1, 1)
    return x.clamp(0.0, 1.0)


# --- loss ------------------------------------------------------------------------------------


def loss_fn(raw, y):
    """HoVer-Net's losses plus a distance-map term.

    Args:
        raw: (B, 4, H, W) network outputs.
        y: (B, 4, H, W) targets of :func:`sample_batch`.

    Returns:
        (total loss, dict of detached 0-d tensors with the parts).
    """
    import torch
    from torch.nn import functional as F

    raw = raw.float()
    fg_t, hv_t, d_t = y[:, :1], y[:, 1:3], y[:, 3:]
    bce = F.binary_cross_entropy_with_logits(raw[:, :1], fg_t)
    p = torch.sigmoid(raw[:, :1])
    dice = 1 - (2 * (p * fg_t).sum() + 1) / (p.sum() + fg_t.sum() + 1)
    hv = torch.tanh(raw[:, 1:3])
    mse = F.mse_loss(hv, hv_t)
    # Gradient of h along x and of v along y: sharp at borders between touching nuclei, the
    # very signal the post-processing splits on (HoVer-Net's MSGE, on nuclear pixels).
    def grads(t):
        return torch.stack([t[:, 0, 1:-1, 2:] - t[:, 0, 1:-1, :-2], t[:, 1, 2:, 1:-1] - t[:, 1, :-2, 1:-1]], 1)

    m = fg_t[:, :, 1:-1, 1:-1]
    msge = (((grads(hv) - grads(hv_t)) ** 2) * m).sum() / (2 * m.sum() + 1)
    dmse = F.mse_loss(torch.sigmoid(raw[:, 3:]), d_t)
    total = bce + dice + mse + msge + 2 * dmse
    # Detached tensors, not floats: reading them back every step would stall the GPU queue.
    parts = {"bce": bce, "dice": dice, "hv_mse": mse, "msge": msge, "dist": dmse}
    return total, {k: v.detach() for k, v in parts.items()}


# --- validation ------------------------------------------------------------------------------


def _post_and_score(args):
    from ..scale import resize_labels
    from . import metrics as M
    from .postprocess import PostParams, instances

    maps, gt, net_mpp, shape = args
    lab = resize_labels(instances(maps, net_mpp, PostParams()), shape)
    return M.instance_scores(gt, resize_labels(lab, gt.shape))


def validate(model, root: Path, ids, device: str, workers: int, log) -> dict:
    """Held-out scores at 0.25 um/px and after resampling the image to 0.5 um/px.

    The network runs on ``device`` through :func:`.learned.predict_maps` (the backend's
    code path); post-processing and scoring run in ``workers`` processes.
    """
    from ..scale import rescale_image, scale_factor
    from .learned import predict_maps

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


# --- training --------------------------------------------------------------------------------


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
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    args = ap.parse_args(argv)

    import torch

    from .learned import NET_MPP
    from .unet import NucleiUNet, UNetConfig, n_parameters

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
    images = [torch.from_numpy(rgb).permute(2, 0, 1).contiguous().to(dev) for rgb, _ in pairs]
    targets = [torch.from_numpy(t).to(dev, torch.float16) for _, t in pairs]
    del pairs
    log(f"torch {torch.__version__} device {dev}" + (f" ({torch.cuda.get_device_name(dev)})" if cuda else ""))
    log(f"loaded {len(images)} training images {args.train_ids} with targets")

    cfg = UNetConfig(widths=tuple(args.widths)) if args.widths else UNetConfig()
    model = NucleiUNet(cfg).to(dev).to(memory_format=torch.channels_last)
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
        # Linear warm-up, then cosine to 1% of the peak, both in elapsed time.
        lr_f = frac / warm if frac < warm else 0.01 + 0.99 * 0.5 * (1 + math.cos(math.pi * (frac - warm) / (1 - warm)))
        for g in opt.param_groups:
            g["lr"] = args.lr * lr_f
        with torch.no_grad():
            x, y = sample_batch(images, targets, args.batch, args.crop, args.scale, gen)
            x = colour_jitter(x, gen).contiguous(memory_format=torch.channels_last)
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=cuda):
            raw = model(x)
        loss, parts = loss_fn(raw, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        step += 1
        # EMA with a warm-up so a short run is not dominated by the random initialisation.
        d = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema_f, model_f, 1 - d)
        losses = (losses + [torch.stack(list(parts.values()))])[-50:]
        now = time.perf_counter() - t0
        if now - last_log > max(5.0, budget / 30) or step == 1:
            last_log = now
            avg = dict(zip(parts, torch.stack(losses).mean(0).tolist()))
            log(f"step {step} lr {args.lr * lr_f:.2e} " + " ".join(f"{k}={v:.4f}" for k, v in avg.items()))
    train_s = time.perf_counter() - t0
    log(f"trained {step} steps in {train_s:.1f}s ({step * args.batch / train_s:.1f} crops/s)")

    ema.load_state_dict({**model.state_dict(), **{k: v for k, v in ema.state_dict().items() if v.dtype.is_floating_point}})
    val = validate(ema, args.data, val_ids, str(dev), args.workers, log)

    state = {k: (v.detach().half() if v.dtype.is_floating_point else v.detach()).cpu().contiguous()
             for k, v in ema.state_dict().items()}
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
    }
    ckpt = {"format": "napari-uam nuclei U-Net v1", "config": cfg.to_dict(), "net_mpp": NET_MPP,
            "state_dict": state, "meta": meta}
    torch.save(ckpt, args.out / "nuclei_unet.pt")
    (args.out / "metrics.json").write_text(json.dumps({"meta": meta, "held_out": val}, indent=1))
    # Reload exactly as the backend will (weights_only torch.load), so a file that cannot be
    # shipped fails here rather than on a user's machine.
    from .learned import build_model, load_checkpoint

    build_model(load_checkpoint(args.out / "nuclei_unet.pt"))
    size = (args.out / "nuclei_unet.pt").stat().st_size
    log(f"wrote {args.out / 'nuclei_unet.pt'} ({size / 1e6:.2f} MB), metrics.json, train.log; "
        f"total {time.perf_counter() - t_start:.1f}s")
    log_file.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
