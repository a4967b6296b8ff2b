"""Tune the learned backend's post-processing (:class:`~.postprocess.PostParams`) on CPU.

The network is run once per image and its maps are cached; only the cheap marker watershed is
re-run for each candidate, so a search costs seconds per candidate instead of a network pass.

Data used (held-out CoNSeP images 21-27 and BRCA-M2C val are never read):

* CoNSeP images 1-20 (the network's training images), at the native 0.25 um/px and after
  resampling the image to 0.5 um/px as the pipeline does. Objective: mean over images and
  both pixel sizes of (AJI + PQ) / 2.
* BRCA-M2C *train* (20x, 0.5 um/px), a subset: centroid-vs-point F1 within 3 um, reported for
  the defaults and the chosen parameters (a check that the CoNSeP tuning carries over to
  another organ and scanner, not part of the objective).

Search: coordinate descent over a small grid per parameter, starting from the defaults, until a
full round changes nothing.

Usage::

    PYTHONPATH=src python -m research.segmentation.tune_post --data ../shared/data \\
        --out runs/seg_tune [--write-weights]

``--write-weights`` stores the chosen values in the shipped checkpoint's ``postprocess`` entry
(with the search summary under ``meta["postprocess_tuning"]``), which
:func:`~.learned.segment_learned` applies on every call.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from napari_uam.scale import rescale_image, resize_labels, scale_factor
from napari_uam.segment import metrics as M
from napari_uam.segment.postprocess import PostParams, instances

CONSEP_MPP = 0.25
BRCA_MPP = 0.5
POINT_RADIUS_UM = 3.0
#: Candidate values per parameter (the defaults are among them), the most influential first:
#: the marker threshold decides merges versus splits, the rest trims the edges.
GRID = {
    "marker_threshold": (0.3, 0.35, 0.4, 0.45, 0.55, 0.6, 0.65, 0.7),
    "energy_threshold": (0.25, 0.35, 0.5, 2.0),
    "fg_threshold": (0.4, 0.5, 0.6),
    "smooth_sigma_um": (0.0, 0.25, 0.5),
    "marker_min_area_um2": (0.25, 0.75, 1.5),
    "min_area_um2": (1.0, 3.0, 5.0),
}


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def network_maps(model, rgb: np.ndarray, mpp: float, net_mpp: float) -> np.ndarray:
    """(4, h, w) float16 maps at the network's pixel size for an image at ``mpp``."""
    from napari_uam.segment.learned import predict_maps

    img = rescale_image(rgb, scale_factor(mpp, net_mpp))
    return predict_maps(model, img).astype(np.float16)


def build_cache(data: Path, cache: Path, consep_ids, brca_every: int, log) -> list[dict]:
    """Compute (or reuse) the cached maps; returns one record per (image, pixel size)."""
    from napari_uam.segment.learned import _model

    model, ckpt = _model("cpu")
    net_mpp = float(ckpt["net_mpp"])
    cache.mkdir(parents=True, exist_ok=True)
    items = []
    for i in consep_ids:
        for mpp in (CONSEP_MPP, 0.5):
            items.append(
                {
                    "kind": "consep",
                    "image": i,
                    "mpp": mpp,
                    "rgb": data / "consep" / f"train_{i}.jpg",
                    "gt": data / "consep" / f"train_{i}_inst.png",
                }
            )
    brca = sorted((data / "brca_m2c" / "train").glob("*.jpg"))[:: max(1, brca_every)]
    for p in brca:
        items.append(
            {"kind": "brca", "image": p.stem, "mpp": BRCA_MPP, "rgb": p, "gt": p.with_name(p.stem + "_points.csv")}
        )
    t0 = time.perf_counter()
    for k, it in enumerate(items):
        it["maps"] = cache / f"{it['kind']}_{it['image']}_{it['mpp']:g}.npy"
        if not it["maps"].exists():
            rgb = _rgb(it["rgb"])
            if it["kind"] == "consep" and it["mpp"] != CONSEP_MPP:
                rgb = rescale_image(rgb, CONSEP_MPP / it["mpp"])
            np.save(it["maps"], network_maps(model, rgb, it["mpp"], net_mpp))
            log(
                f"cached {k + 1}/{len(items)} {it['kind']} {it['image']} @ {it['mpp']:g} um/px "
                f"({time.perf_counter() - t0:.0f}s)"
            )
        it.update(net_mpp=net_mpp, rgb=str(it["rgb"]), gt=str(it["gt"]), maps=str(it["maps"]))
    return items


def _score_one(args) -> dict:
    """Scores of one cached image under one parameter set (runs in a worker process)."""
    it, params = args
    maps = np.load(it["maps"]).astype(np.float32)
    lab = instances(maps, it["net_mpp"], PostParams(**params))
    if it["kind"] == "consep":
        gt = np.asarray(Image.open(it["gt"])).astype(np.int32)
        s = M.instance_scores(gt, resize_labels(lab, gt.shape))
        return {k: s[k] for k in ("aji", "pq", "dq", "sq", "dice", "f1", "n_pred", "n_true")}
    pts = np.loadtxt(it["gt"], delimiter=",", skiprows=1, usecols=(0, 1)).reshape(-1, 2)
    with Image.open(it["rgb"]) as im:
        shape = (im.height, im.width)
    s = M.point_detection_scores(M.centroids(resize_labels(lab, shape)), pts, POINT_RADIUS_UM / it["mpp"])
    return {k: s[k] for k in ("tp", "fp", "fn")}


def evaluate(items: list[dict], params: dict, pool, kinds=("consep",)) -> dict:
    """Mean CoNSeP scores per pixel size, the objective, and pooled BRCA F1 if asked."""
    sel = [it for it in items if it["kind"] in kinds]
    rows = list(pool.map(_score_one, [(it, params) for it in sel], chunksize=2))
    out: dict = {}
    for mpp in (CONSEP_MPP, 0.5):
        r = [s for it, s in zip(sel, rows) if it["kind"] == "consep" and it["mpp"] == mpp]
        if r:
            out[f"{mpp:g}"] = {k: float(np.mean([x[k] for x in r])) for k in ("aji", "pq", "dq", "sq", "dice", "f1")}
            out[f"{mpp:g}"]["n_pred/n_true"] = sum(x["n_pred"] for x in r) / max(1, sum(x["n_true"] for x in r))
    scales = [m for m in ("0.25", "0.5") if m in out]
    if scales:
        out["objective"] = float(np.mean([(out[m]["aji"] + out[m]["pq"]) / 2 for m in scales]))
    b = [s for it, s in zip(sel, rows) if it["kind"] == "brca"]
    if b:
        tp, fp, fn = (sum(x[k] for x in b) for k in ("tp", "fp", "fn"))
        out["brca_train"] = {
            "precision": tp / max(1, tp + fp),
            "recall": tp / max(1, tp + fn),
            "f1": 2 * tp / max(1, 2 * tp + fp + fn),
            "n_images": len(b),
        }
    return out


def coordinate_search(items, pool, log, max_rounds: int = 2) -> tuple[dict, list[dict]]:
    """Coordinate descent over :data:`GRID` from the defaults; returns (best, history).

    Args:
        items: cached records of :func:`build_cache` (only the CoNSeP ones are scored).
        pool: executor whose ``map`` scores images in parallel.
        log: ``log(message)``.
        max_rounds: passes over all parameters (stops early when a pass changes nothing).
    """
    best = asdict(PostParams())
    seen: dict[tuple, float] = {}
    history = []

    def score(p: dict) -> float:
        key = tuple(sorted(p.items()))
        if key not in seen:
            t = time.perf_counter()
            r = evaluate(items, p, pool)
            seen[key] = r["objective"]
            history.append({"params": dict(p), **r})
            scales = " ".join(f"{m}: aji {r[m]['aji']:.4f} pq {r[m]['pq']:.4f}" for m in ("0.25", "0.5") if m in r)
            log(f"obj {r['objective']:.4f} {scales} { {k: p[k] for k in GRID} } ({time.perf_counter() - t:.0f}s)")
        return seen[key]

    best_obj = score(best)
    for rnd in range(max_rounds):
        changed = False
        for name, values in GRID.items():
            for v in values:
                cand = {**best, name: float(v)}
                obj = score(cand)
                # A strict improvement only: ties keep the earlier (default-side) value.
                if obj > best_obj + 1e-5:
                    best, best_obj, changed = cand, obj, True
        log(f"round {rnd + 1}: best objective {best_obj:.4f} {best}")
        if not changed:
            break
    return best, history


def write_weights(path: Path, best: dict, summary: dict) -> None:
    """Store ``best`` as the checkpoint's post-processing defaults (weights untouched)."""
    import torch

    ckpt = dict(torch.load(path, map_location="cpu", weights_only=True))
    ckpt["postprocess"] = {k: float(v) for k, v in best.items()}
    ckpt["meta"] = {**ckpt.get("meta", {}), "postprocess_tuning": summary}
    tmp = path.with_suffix(".pt.tmp")
    torch.save(ckpt, tmp)
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, required=True, help="folder with consep/ and brca_m2c/")
    ap.add_argument("--out", type=Path, required=True, help="output folder (cache, tuning.json)")
    ap.add_argument("--consep-ids", default="1-20", help="tuning images (never 21-27)")
    ap.add_argument("--brca-every", type=int, default=4, help="use every n-th BRCA-M2C train image")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the network pass")
    ap.add_argument(
        "--search-mpp",
        type=float,
        nargs="+",
        default=[CONSEP_MPP, 0.5],
        help="CoNSeP pixel sizes scored during the search (the final report has both)",
    )
    ap.add_argument("--rounds", type=int, default=2, help="coordinate-descent passes at most")
    ap.add_argument("--write-weights", action="store_true", help="store the result in the shipped checkpoint")
    args = ap.parse_args(argv)

    import torch

    from napari_uam.segment.learned import weights_path
    from research.segmentation.train_learned import _ids

    torch.set_num_threads(args.threads)
    ids = _ids(args.consep_ids)
    if set(ids) & set(range(21, 28)):
        ap.error("CoNSeP images 21-27 are held out: they may not be used for tuning")
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.0f}s] {msg}", flush=True)

    items = build_cache(args.data, args.out / "cache", ids, args.brca_every, log)
    with ProcessPoolExecutor(max(1, args.workers)) as pool:
        search = [it for it in items if it["kind"] == "consep" and it["mpp"] in args.search_mpp]
        best, history = coordinate_search(search, pool, log, args.rounds)
        default = evaluate(items, asdict(PostParams()), pool, kinds=("consep", "brca"))
        tuned = evaluate(items, best, pool, kinds=("consep", "brca"))
    summary = {
        "date": dt.date.today().isoformat(),
        "command": "python -m research.segmentation.tune_post " + " ".join(argv if argv is not None else sys.argv[1:]),
        "consep_images": ids,
        "objective": "mean over images of (AJI + PQ) / 2 at "
        + " and ".join(f"{m:g}" for m in args.search_mpp)
        + " um/px",
        "brca_train_images": sum(it["kind"] == "brca" for it in items),
        "params": best,
        "default_scores": default,
        "tuned_scores": tuned,
        "candidates": len(history),
    }
    (args.out / "tuning.json").write_text(json.dumps({**summary, "history": history}, indent=1))
    log(f"defaults: {json.dumps(default)}")
    log(f"tuned:    {json.dumps(tuned)}")
    if args.write_weights:
        write_weights(weights_path(), best, summary)
        log(f"wrote post-processing defaults into {weights_path()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
