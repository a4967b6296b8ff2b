"""Leave-one-source-out (LOSO) training of the nuclei U-Net on every nucleus set, in one GPU run.

For each source of :mod:`.nuclei_sets`, a network is trained on all the *other* sources and
scored on that one; one more network (``all``) is trained on every source with the same recipe
and is what ships. The folds train at the same time, one process each, on one GPU (the
network is small: one process alone leaves the GPU mostly idle). Every fold gets the same
time budget and the cosine schedule runs on elapsed time, so the shipped network saw the
recipe that the LOSO table scores.

Recipe ``v3``: crops from every training source with equal probability per source (within a
source, proportional to image area), at the network's 0.25 um/px with scale jitter 0.8-1.25;
BRCA-M2C (points) through the weak targets of :func:`research.segmentation.train_learned.weak_targets`
for a quarter of each batch; the v2 HED stain / blur / noise jitter plus saturation, hue and
gamma jitter; images smaller than a crop window are padded with loss weight 0. Recipe ``v4``
(``--recipe v4``): v3, then half the crops JPEG-compressed at a random quality 30-95 (4:2:0
chroma), simulated on the GPU (:func:`research.segmentation.train_learned.jpeg_compress`).

Scores per held-out source, through the backend's own code path (resample to 0.25 um/px,
tiled network, marker watershed, labels back at the image's size): AJI, PQ, pixel Dice and
detection F1 of centroids within 3 um (instance sources), or point precision / recall / F1
within 3 um (BRCA-M2C). A small grid of post-processing settings is scored on the same
held-out maps; the setting with the best worst-source AJI is recorded (``post_choice``) and
stored with the shipped weights.

Usage (GPU machine, ~9 minutes)::

    PYTHONPATH=src:. python -m research.segmentation.loso --data .gpu_data/nuclei --out "$OUT/loso" \\
        --minutes 6

Smoke test on a CPU (seconds)::

    PYTHONPATH=src:. python -m research.segmentation.loso --data ../shared/data --out /tmp/loso \\
        --minutes 0.1 --device cpu --batch 2 --crop 64 --sources puma,gbm40 --limit 2
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import multiprocessing
import os
import subprocess
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np

from napari_uam.scale import rescale_image, resize_labels, scale_factor
from napari_uam.segment import metrics as M
from napari_uam.segment.postprocess import PostParams, instances
from research.segmentation.train_learned import make_targets, weak_targets, with_weight

from . import nuclei_sets as N

NET_MPP = 0.25
POINT_UM = 3.0
#: Crops are cut from windows of ``ceil(crop * 1.25) + 2`` pixels; smaller images are padded.
MIN_SIDE = 336
#: Post-processing settings scored on the held-out maps (fg threshold, marker threshold). The
#: first four are the v3 run's grid; v3's pick (marker 0.35) lay on the grid's low edge and its
#: worst source (CoNSeP) misses nuclei (recall 0.58, precision 0.90), so two settings that call
#: more markers / foreground were added after it (marker 0.25; fg 0.4 with marker 0.35).
POST_GRID = [dict(fg_threshold=0.5, marker_threshold=m) for m in (0.35, 0.45, 0.55)] + [
    dict(fg_threshold=0.4, marker_threshold=0.45),
    dict(fg_threshold=0.5, marker_threshold=0.25),
    dict(fg_threshold=0.4, marker_threshold=0.35),
]
#: Training recipes: ``v3`` (shipped 2026-12-02) and ``v4`` = v3 + JPEG-compression augmentation.
RECIPES = {
    "v3": "v3 (every nucleus source, LOSO-selected; research/segmentation/loso.py)",
    "v4": "v4 (v3 + JPEG augmentation: half the crops at JPEG quality 30-95, 4:2:0; research/segmentation/loso.py)",
}
#: v4's JPEG augmentation: share of crops compressed, and the quality range (uniform, inclusive).
JPEG_P, JPEG_Q = 0.5, (30, 95)


# --- targets ---------------------------------------------------------------------------------


def _pad(img: np.ndarray, tgt: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pad a small image (reflect) and its targets (zeros: weight 0) to :data:`MIN_SIDE`."""
    h, w = img.shape[:2]
    ph, pw = max(0, MIN_SIDE - h), max(0, MIN_SIDE - w)
    if not (ph or pw):
        return img, tgt
    img = np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="reflect")
    tgt = np.pad(tgt, ((0, 0), (0, ph), (0, pw)))
    return img, tgt


def targets_of(im: N.NucleusImage) -> tuple[np.ndarray, np.ndarray]:
    """(image uint8 at 0.25 um/px, (5, h, w) float16 targets + weight) of one image."""
    rgb = im.rgb()
    if im.kind == "points":
        img, tgt = weak_targets(rgb, im.points(), im.mpp)
    else:
        img = rescale_image(rgb, scale_factor(im.mpp, NET_MPP))
        inst = resize_labels(im.instances(), img.shape[:2])
        tgt = with_weight(make_targets(inst))
    img, tgt = _pad(img, tgt)
    return img, tgt.astype(np.float16)


def _prepare_one(args) -> str:
    im, cache = args
    out = Path(cache) / f"{im.source}__{im.image_id}.npz"
    if not out.exists():
        img, tgt = targets_of(im)
        np.savez(out, img=img, tgt=tgt)
    return str(out)


def prepare(data: Path, cache: Path, sources: list[str], workers: int, limit: int = 0) -> dict:
    """Targets of every training image of ``sources``, cached as ``.npz``; {source: [files]}."""
    cache.mkdir(parents=True, exist_ok=True)
    jobs = []
    for s in sources:
        ims = [im for im in N.images(s, data)]
        jobs += [(im, str(cache)) for im in (ims[:limit] if limit else ims)]
    with ProcessPoolExecutor(workers) as ex:
        files = list(ex.map(_prepare_one, jobs, chunksize=2))
    out: dict = {}
    for (im, _), f in zip(jobs, files):
        # BRCA-M2C val never trains a network (it stays a patient-disjoint check).
        if im.split != "val":
            out.setdefault(im.source, []).append(f)
    return out


# --- augmentation ----------------------------------------------------------------------------


def colour_jitter_v3(x, gen):
    """The v2 stain jitter, then saturation 0.7-1.3, hue rotation +-0.1 rad and gamma 0.8-1.25."""
    import torch

    from research.segmentation.train_learned import colour_jitter

    x = colour_jitter(x, gen, strong=True)
    b, dev = x.shape[0], x.device

    def u(lo, hi):
        return torch.empty(b).uniform_(lo, hi, generator=gen).to(dev)[:, None, None, None]

    grey = x.mean(1, keepdim=True)
    x = grey + (x - grey) * u(0.7, 1.3)
    # Rotation about the grey axis (Rodrigues): a hue shift that keeps brightness.
    theta = torch.empty(b).uniform_(-0.1, 0.1, generator=gen)
    k = torch.ones(3) / math.sqrt(3.0)
    K = torch.tensor([[0, -k[2], k[1]], [k[2], 0, -k[0]], [-k[1], k[0], 0]])
    R = torch.eye(3) + torch.sin(theta)[:, None, None] * K + (1 - torch.cos(theta))[:, None, None] * (K @ K)
    x = torch.einsum("bij,bjyx->biyx", R.to(dev, x.dtype), x)
    x = x.clamp(1e-4, 1.0) ** u(0.8, 1.25)
    return x.clamp(0.0, 1.0)


def _sample(images, targets, probs, n, crop, scale, gen):
    """``n`` crops from images drawn with probabilities ``probs`` (train_learned.sample_batch)."""
    import torch

    from research.segmentation.train_learned import sample_batch

    # sample_batch then draws uniformly among these n images: still one draw from ``probs``
    # per crop, in distribution.
    idx = torch.multinomial(probs, n, replacement=True, generator=gen).tolist()
    return sample_batch([images[i] for i in idx], [targets[i] for i in idx], n, crop, scale, gen)


# --- one fold --------------------------------------------------------------------------------


def train_fold(
    files: dict,
    holdout: str,
    out: Path,
    minutes: float,
    device: str,
    batch: int,
    crop: int,
    lr: float,
    seed: int,
    weak_frac: float = 0.25,
    widths=None,
    init: Path | None = None,
    post: dict | None = None,
    recipe: str = "v3",
) -> dict:
    """Train one network on every source of ``files`` except ``holdout``; write its checkpoint."""
    import torch

    from research.segmentation.train_learned import jpeg_augment, lr_factor, optimise_step
    from napari_uam.segment.unet import NucleiUNet, UNetConfig, n_parameters

    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    dev = torch.device(device)
    cuda = dev.type == "cuda"
    if cuda:
        torch.backends.cudnn.benchmark = True
    train_sources = [s for s in files if s != holdout]

    def load(fs):
        imgs, tgts, areas = [], [], []
        for f in fs:
            z = np.load(f)
            imgs.append(torch.from_numpy(z["img"]).permute(2, 0, 1).contiguous().to(dev))
            tgts.append(torch.from_numpy(z["tgt"]).to(dev))
            areas.append(float(z["img"].shape[0] * z["img"].shape[1]))
        return imgs, tgts, areas

    full, weak = (
        [s for s in train_sources if N.SOURCES[s].kind == "instances"],
        [s for s in train_sources if N.SOURCES[s].kind == "points"],
    )
    groups = {}
    for name, members in (("full", full), ("weak", weak)):
        imgs, tgts, probs = [], [], []
        for s in members:
            a, b, areas = load(files[s])
            imgs += a
            tgts += b
            # Equal weight per source; within a source, proportional to image area.
            probs += [w / sum(areas) for w in areas]
        if imgs:
            groups[name] = (imgs, tgts, torch.tensor(probs, dtype=torch.float64))
    n_weak = int(round(batch * weak_frac)) if "weak" in groups else 0

    cfg = UNetConfig(widths=tuple(widths)) if widths else UNetConfig()
    model = NucleiUNet(cfg)
    init_meta = None
    if init is not None:  # continue a fold's training (the shipped network: more steps alone)
        ck = torch.load(init, map_location="cpu", weights_only=True)
        cfg = UNetConfig.from_dict(ck["config"])
        model = NucleiUNet(cfg)
        model.load_state_dict({k: v.float() if v.dtype.is_floating_point else v for k, v in ck["state_dict"].items()})
        init_meta = {k: ck["meta"].get(k) for k in ("steps", "train_seconds", "date", "train_sources")}
    model = model.to(dev).to(memory_format=torch.channels_last)
    ema = NucleiUNet(cfg).to(dev).to(memory_format=torch.channels_last)
    ema.load_state_dict(model.state_dict())
    ema.eval()
    ema_f = [v for v in ema.state_dict().values() if v.dtype.is_floating_point]
    model_f = [v for v in model.state_dict().values() if v.dtype.is_floating_point]
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    budget, warm = minutes * 60.0, 0.03
    step, t0, log = 0, time.perf_counter(), []
    while True:
        frac = (time.perf_counter() - t0) / budget
        if frac >= 1.0:
            break
        lr_f = lr_factor(frac, warm)
        for g in opt.param_groups:
            g["lr"] = lr * lr_f
        with torch.no_grad():
            x, y = _sample(*groups["full"], batch - n_weak, crop, (0.8, 1.25), gen)
            if n_weak:
                xw, yw = _sample(*groups["weak"], n_weak, crop, (0.8, 1.25), gen)
                x, y = torch.cat([x, xw]), torch.cat([y, yw])
            x = colour_jitter_v3(x, gen)
            if recipe == "v4":  # compression comes last, after the scanner's noise
                x = jpeg_augment(x, gen, JPEG_P, JPEG_Q)
            x = x.contiguous(memory_format=torch.channels_last)
        step += 1
        loss, _ = optimise_step(model, opt, x, y, ema_f, model_f, step, 0.999, dev.type)
        if step % 500 == 0 or step == 50:
            log.append((step, round(time.perf_counter() - t0, 1), float(loss)))
            print(f"[{holdout}] step {step} {time.perf_counter() - t0:.0f}s loss {float(loss):.4f}", flush=True)
    train_s = time.perf_counter() - t0
    state = {
        k: (v.detach().half() if v.dtype.is_floating_point else v.detach()).cpu().contiguous()
        for k, v in ema.state_dict().items()
    }
    meta = {
        "recipe": RECIPES[recipe],
        "train_sources": train_sources,
        "held_out_source": None if holdout == "all" else holdout,
        "steps": step,
        "train_seconds": round(train_s, 1),
        "batch": batch,
        "crop": crop,
        "lr": lr,
        "seed": seed,
        "weak_fraction": n_weak / batch,
        "parameters": n_parameters(model),
        "device": torch.cuda.get_device_name(dev) if cuda else "cpu",
        "torch": str(torch.__version__),
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "loss_log": log,
        "init": init_meta,
    }
    ckpt = {
        "format": "napari-uam nuclei U-Net v1",
        "auto_mpp_range": None,
        "config": cfg.to_dict(),
        "net_mpp": NET_MPP,
        "state_dict": state,
        "meta": meta,
    }
    if post:
        ckpt["postprocess"] = dict(post)
    torch.save(ckpt, out / "nuclei_unet.pt")
    print(f"[{holdout}] {step} steps in {train_s:.0f}s", flush=True)
    return meta


# --- evaluation ------------------------------------------------------------------------------


def score_labels(lab: np.ndarray, im: N.NucleusImage) -> dict:
    """Scores of one image's labels (at the image's own size) against its annotation.

    Instance sources: AJI, PQ (DQ, SQ), pixel Dice, detection F1 at IoU 0.5 (``f1_iou``) and the
    centroid counts ``tp`` / ``fp`` / ``fn`` within :data:`POINT_UM` of a true centroid (one to
    one). Point sources: those counts against the annotated points. Shared by the LOSO folds and
    ``benchmarks/segmentation_bench.py`` so both tables are scored alike.
    """
    cen = M.centroids(lab)
    radius = POINT_UM / im.mpp
    if im.kind == "points":
        s = M.point_detection_scores(cen, im.points(), radius)
        return {k: s[k] for k in ("tp", "fp", "fn")}
    gt = im.instances()
    s = M.instance_scores(gt, lab)
    p = M.point_detection_scores(cen, M.centroids(gt), radius)
    return {
        "aji": s["aji"],
        "pq": s["pq"],
        "dq": s["dq"],
        "sq": s["sq"],
        "dice": s["dice"],
        "f1_iou": s["f1"],
        "tp": p["tp"],
        "fp": p["fp"],
        "fn": p["fn"],
        "n_true": s["n_true"],
        "n_pred": s["n_pred"],
    }


def _score_one(args) -> list[dict]:
    """Scores of one held-out image for every post-processing setting of the grid."""
    maps, im_dict, grid = args
    im = N.NucleusImage(**im_dict)
    shape = im.rgb().shape[:2]
    return [
        {
            "grid": k,
            "image": im.image_id,
            **score_labels(resize_labels(instances(maps, NET_MPP, PostParams.from_kwargs(**params)), shape), im),
        }
        for k, params in enumerate(grid)
    ]


def evaluate(
    ckpt_path: Path, ims: list[N.NucleusImage], device: str, workers: int, grid=POST_GRID, transform=None
) -> list[dict]:
    """Per-image scores of a checkpoint on ``ims`` for each post-processing setting of ``grid``;
    ``transform(rgb) -> rgb`` (optional) is applied to each image before the network (e.g. a
    stain normalisation under test)."""
    from napari_uam.segment.learned import build_model, load_checkpoint, predict_maps

    model = build_model(load_checkpoint(ckpt_path), device)
    jobs = []
    for im in ims:
        rgb = im.rgb() if transform is None else transform(im.rgb())
        maps = predict_maps(model, rescale_image(rgb, scale_factor(im.mpp, NET_MPP)), device)
        jobs.append((maps, asdict(im), grid))
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
        return [r for rows in ex.map(_score_one, jobs) for r in rows]


def summarise(rows: list[dict], kind: str) -> dict:
    """Mean AJI / PQ / Dice over images and pooled detection F1 (or point P / R / F1)."""
    tp, fp, fn = (sum(r[k] for r in rows) for k in ("tp", "fp", "fn"))
    out = {
        "n_images": len(rows),
        "precision": tp / max(1, tp + fp),
        "recall": tp / max(1, tp + fn),
        "f1": 2 * tp / max(1, 2 * tp + fp + fn),
    }
    if kind == "instances":
        for k in ("aji", "pq", "dice"):
            out[k] = float(np.mean([r[k] for r in rows]))
    return out


def table(rows_by_source: dict, grid_index: int) -> dict:
    """{source: summary} for one post-processing setting, plus mean and worst."""
    per = {}
    for s, rows in rows_by_source.items():
        per[s] = summarise([r for r in rows if r["grid"] == grid_index], N.SOURCES[s].kind)
    inst = [v for s, v in per.items() if N.SOURCES[s].kind == "instances"]
    agg = {}
    for k in ("aji", "pq", "dice"):
        vals = [v[k] for v in inst]
        agg[k] = {"mean": float(np.mean(vals)), "worst": float(np.min(vals))} if vals else None
    f1 = [v["f1"] for v in per.values()]
    agg["f1"] = {"mean": float(np.mean(f1)), "worst": float(np.min(f1))}
    return {"per_source": per, "aggregate": agg, "post": POST_GRID[grid_index]}


def torch_post(ckpt_path: Path) -> dict:
    """The post-processing settings stored with a checkpoint, over the defaults of the grid."""
    import torch

    stored = torch.load(ckpt_path, map_location="cpu", weights_only=True).get("postprocess", {})
    return {"fg_threshold": 0.5, "marker_threshold": 0.45, **{k: float(v) for k, v in stored.items()}}


def _split(data: Path, image_id: str) -> str:
    return next((im.split for im in N.images("brca_m2c", data) if im.image_id == image_id), "all")


def _worst(t: dict) -> float:
    """Worst-source AJI of a LOSO table (worst F1 when no instance source was scored)."""
    agg = t["aggregate"]
    return agg["aji"]["worst"] if agg["aji"] else agg["f1"]["worst"]


# --- driver ----------------------------------------------------------------------------------


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=N.DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--minutes", type=float, default=6.0)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="v3", help="training recipe (v4: + JPEG augmentation)")
    ap.add_argument("--sources", default="", help="comma list (default: every available source)")
    ap.add_argument("--folds", default="", help="comma list of folds to train (default: every source + all)")
    ap.add_argument("--limit", type=int, default=0, help="images per source (smoke tests)")
    ap.add_argument("--widths", type=int, nargs="+", default=None, help="U-Net widths (default: the v3 network's)")
    ap.add_argument("--workers", type=int, default=min(16, os.cpu_count() or 1))
    ap.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="also score these weights on every source (e.g. the previous shipped network)",
    )
    ap.add_argument("--init", type=Path, default=None, help="start every fold from these weights")
    ap.add_argument("--post", default="", help="post-processing stored with the weights, e.g. marker_threshold=0.35")
    ap.add_argument(
        "--eval-all",
        action="store_true",
        help="also score the 'all' network on every source (in distribution: it trained on them)",
    )
    ap.add_argument("--fold", default=None, help=argparse.SUPPRESS)  # internal: train one fold
    args = ap.parse_args(argv)

    sources = args.sources.split(",") if args.sources else N.available_sources(args.data)
    cache = args.out / "cache"
    t0 = time.perf_counter()
    files = prepare(args.data, cache, sources, args.workers, args.limit)
    if args.fold is not None:  # a child process: train one fold and exit
        post = dict((k, float(v)) for k, v in (kv.split("=") for kv in args.post.split(","))) if args.post else None
        train_fold(
            files,
            args.fold,
            args.out / args.fold,
            args.minutes,
            args.device,
            args.batch,
            args.crop,
            args.lr,
            args.seed,
            widths=args.widths,
            init=args.init,
            post=post,
            recipe=args.recipe,
        )
        return 0
    print(f"targets of {sum(map(len, files.values()))} images ready in {time.perf_counter() - t0:.0f}s", flush=True)
    folds = args.folds.split(",") if args.folds else [*sources, "all"]
    cmd = [
        sys.executable,
        "-m",
        "research.segmentation.loso",
        "--data",
        str(args.data),
        "--out",
        str(args.out),
        "--minutes",
        str(args.minutes),
        "--device",
        args.device,
        "--batch",
        str(args.batch),
        "--crop",
        str(args.crop),
        "--lr",
        str(args.lr),
        "--seed",
        str(args.seed),
        "--recipe",
        args.recipe,
        "--sources",
        ",".join(sources),
        "--limit",
        str(args.limit),
        "--workers",
        "1",
        "--post",
        args.post,
    ]
    if args.init is not None:
        cmd += ["--init", str(args.init)]
    if args.widths:
        cmd += ["--widths", *map(str, args.widths)]
    procs = {f: subprocess.Popen(cmd + ["--fold", f]) for f in folds}
    for f, p in procs.items():
        if p.wait() != 0:
            print(f"fold {f} failed ({p.returncode})", flush=True)
    print(f"trained {len(folds)} folds by {time.perf_counter() - t0:.0f}s", flush=True)

    result = {
        "date": dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "recipe": args.recipe,
        "widths": args.widths,
        "post_grid": POST_GRID,
        "command": " ".join(sys.argv),
        "sources": {s: asdict(N.SOURCES[s]) for s in sources},
    }
    rows_by_source = {}
    for s in folds:
        ck = args.out / s / "nuclei_unet.pt"
        if s == "all" or not ck.exists():
            continue
        rows_by_source[s] = evaluate(ck, N.images(s, args.data)[: args.limit or None], args.device, args.workers)
        tables = [table(rows_by_source, k) for k in range(len(POST_GRID))]
        best = max(range(len(POST_GRID)), key=lambda k: _worst(tables[k]))
        default = next(k for k, g in enumerate(POST_GRID) if g == dict(fg_threshold=0.5, marker_threshold=0.45))
        result.update(loso_tables=tables, post_choice=best, post_default=default, loso_rows=rows_by_source)
        # Written after every source, so a run stopped by a time limit keeps what it scored.
        (args.out / "loso.json").write_text(json.dumps(result, indent=1))
        print(f"scored {s} by {time.perf_counter() - t0:.0f}s", flush=True)
    if rows_by_source:
        print(f"post-processing chosen by worst-source AJI: {POST_GRID[result['post_choice']]}", flush=True)
    ck_all = args.out / "all" / "nuclei_unet.pt"
    if args.eval_all and ck_all.exists():
        post = torch_post(ck_all)
        rows = {
            s: evaluate(ck_all, N.images(s, args.data)[: args.limit or None], args.device, args.workers, grid=[post])
            for s in sources
        }
        result["all_in_distribution"] = {
            "post": post,
            "table": table(rows, 0)["per_source"],
            "brca_m2c_val": summarise(
                [r for r in rows.get("brca_m2c", []) if _split(args.data, r["image"]) == "val"], "points"
            )
            if "brca_m2c" in rows
            else None,
        }
    if args.baseline is not None:
        base = {
            s: evaluate(
                args.baseline,
                N.images(s, args.data)[: args.limit or None],
                args.device,
                args.workers,
                grid=[dict(fg_threshold=0.5, marker_threshold=0.45)],
            )
            for s in sources
        }
        result["baseline"] = {"weights": str(args.baseline), "table": table(base, 0)["per_source"] if base else {}}
    for s in folds:
        meta_f = args.out / s / "nuclei_unet.pt"
        if meta_f.exists():
            import torch

            result.setdefault("folds", {})[s] = torch.load(meta_f, weights_only=True)["meta"]
    (args.out / "loso.json").write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out / 'loso.json'} after {time.perf_counter() - t0:.0f}s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
