"""Pack every region source at the working pixel size into one folder for the GPU carry.

    python -m research.regions.pack --out .gpu_data/regions        # ~8 min on 2 CPU cores

Per image ``<key>`` (see :mod:`research.regions.sources` for what the targets mean):

``img/<key>.jpg``   RGB resampled (area) to ``--work-mpp`` (2 um/px); images coarser than that
                    are kept as they are (nothing to gain from upsampling in the pack: the
                    trainer resamples on the GPU)
``tgt/<key>.png``   mask sources: uint8 target at the same size, 1 tumor / 0 not / 255 ignore
                    (a stored pixel is 1 or 0 when more than half of its area is, else 255)
``evt/<key>.png``   only where the evaluation target differs from the training one (CAMELYON)
``cells/<key>.npz`` sources with cells: ``yx`` (n, 2) centroids in stored pixels, ``vec``
                    (n, 17) float16 UAM cell vectors of the cell encoder embedded in the
                    tumor checkpoint (``--tumor-weights``), ``truth`` (n,) the >50 % rule on
                    the source's mask as drawn, at the native resolution
``meta.json``       work_mpp, sources (what tumor means, handling, licences), items (key,
                    source, kind, group, label, mpp, stored size, n_cells), pretrain keys,
                    the cell encoder's id / SHA-256 / feature names

Nuclei are segmented and measured with the product's own pipeline at the native resolution
(``segment_nuclei`` + ``measure_cells``), cached in ``--cache`` so that a rerun is quick.
To stay under the 64 MiB carry, EBHI, the oral and the LC25000 tiles are subsampled
round-robin over cases (``CAPS``); the nucleus sets add their images, unlabelled, to the
MAMIM pretraining pool.
"""

from __future__ import annotations

import argparse
import json
import time
from collections import defaultdict
from dataclasses import asdict
from pathlib import Path

import numpy as np
from PIL import Image

from . import sources as S

#: Most images kept per (source, class); round-robin over groups (cases) so many cases appear.
CAPS = {
    ("ebhi", True): 300,
    ("ebhi", False): 360,
    ("oral_oscc", 1): 300,
    ("oral_oscc", 0): 287,
    ("lc25000_lung", 1): 300,
    ("lc25000_lung", 0): 150,
}
QUALITY = 85


def _cap_key(it: S.RegionItem):
    if it.source == "ebhi":
        return ("ebhi", bool(it.extra.get("malignant")))
    return (it.source, it.label)


def subsample(its: list[S.RegionItem]) -> list[S.RegionItem]:
    """At most ``CAPS`` items per (source, class), taken round-robin over groups (cases)."""
    by: dict = defaultdict(lambda: defaultdict(list))
    for it in its:
        by[_cap_key(it)][it.group].append(it)
    keep = set()
    for ck, groups in by.items():
        cap = CAPS.get(ck)
        flat = [x for g in groups.values() for x in g]
        if cap is None or len(flat) <= cap:
            keep.update(x.key for x in flat)
            continue
        queues, n = [list(g) for _, g in sorted(groups.items())], 0
        while n < cap:
            for q in queues:
                if q and n < cap:
                    keep.add(q.pop(0).key)
                    n += 1
    return [it for it in its if it.key in keep]


def stored_size(shape, mpp: float, work_mpp: float) -> tuple[int, int]:
    f = min(mpp / work_mpp, 1.0)
    return max(int(round(shape[0] * f)), 1), max(int(round(shape[1] * f)), 1)


def resample_target(t: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Area-resample a 0/1/255 target: 1 or 0 where more than half the area is, else 255."""
    if t.shape == size:
        return t
    out = np.full(size, S.IGNORE, np.uint8)
    fr = {}
    for v in (0, 1):
        im = Image.fromarray((t == v).astype(np.float32), mode="F")
        fr[v] = np.asarray(im.resize((size[1], size[0]), Image.BOX))
    out[fr[1] > 0.5] = 1
    out[fr[0] > 0.5] = 0
    return out


def _cells(it: S.RegionItem, rgb: np.ndarray, clf, cache: Path):
    """(yx native, vec, truth) of one image, segmented + measured once (cached)."""
    from napari_uam.models.multimodal import uam_cell_inputs
    from napari_uam.pipeline import measure_cells, segment_nuclei

    f = cache / f"{it.key}.npz"
    if f.is_file():
        z = np.load(f)
        return z["yx"], z["vec"], z["truth"]
    from napari_uam.errors import NoNucleiError

    try:
        labels = segment_nuclei(rgb, it.mpp)
        table = measure_cells(rgb, labels, it.mpp, device="cpu")
    except NoNucleiError:  # the product's segmenter finds none (some CAMELYON tiles): no cell tokens
        table = []
    if len(table):
        vec = uam_cell_inputs(clf, table[clf.feature_names]).astype(np.float16)
        truth = S.cell_truth(it, labels).reindex(table["label"].to_numpy()).fillna(0).to_numpy(np.int8)
        yx = table[["y", "x"]].to_numpy(np.float32)
    else:
        vec, truth, yx = (
            np.zeros((0, clf.model.head.in_features + 1), np.float16),
            np.zeros(0, np.int8),
            np.zeros((0, 2), np.float32),
        )
    cache.mkdir(parents=True, exist_ok=True)
    np.savez(f, yx=yx, vec=vec, truth=truth)
    return yx, vec, truth


def pack(
    root: Path,
    out: Path,
    cache: Path,
    tumor_weights: Path,
    work_mpp: float = 2.0,
    only: list[str] | None = None,
    log=print,
) -> dict:
    from napari_uam.classify.checkpoint import CellClassifier, file_sha256
    from napari_uam.tumor import read_tumor_checkpoint

    ckpt = read_tumor_checkpoint(tumor_weights)
    clf = CellClassifier(ckpt["cell_encoder"], device="cpu", backend="torch")
    for sub in ("img", "tgt", "evt", "cells"):
        (out / sub).mkdir(parents=True, exist_ok=True)
    meta = {
        "work_mpp": work_mpp,
        "quality": QUALITY,
        "sources": {n: asdict(s) for n, s in S.SOURCES.items()},
        "cell_encoder": {
            "from": str(tumor_weights.name),
            "tumor_sha256": file_sha256(tumor_weights),
            "model_id": clf.model_id,
            "feature_names": list(clf.feature_names),
            "n_vector": int(clf.model.head.in_features + 1),
        },
        "items": [],
        "pretrain": [],
        "caps": {f"{a}:{b}": c for (a, b), c in CAPS.items()},
    }
    for name in only or list(S.SOURCES):
        t0 = time.perf_counter()
        its = subsample(S.items(name, root))
        src = S.SOURCES[name]
        n_cells = 0
        for it in its:
            rgb = np.asarray(Image.open(it.path).convert("RGB"))
            size = stored_size(rgb.shape, it.mpp, work_mpp)
            small = (
                Image.fromarray(rgb).resize((size[1], size[0]), Image.BOX)
                if size != rgb.shape[:2]
                else Image.fromarray(rgb)
            )
            small.save(out / "img" / f"{it.key}.jpg", quality=QUALITY)
            rec = {
                "key": it.key,
                "source": name,
                "kind": src.kind,
                "group": it.group,
                "label": it.label,
                "mpp": it.mpp,
                "stored_mpp": it.mpp * rgb.shape[0] / size[0],
                "size": list(size),
                "malignant": it.extra.get("malignant"),
                "n_cells": 0,
            }
            if src.kind == "mask":
                t = S.pixel_target(it, rgb, for_training=True)
                Image.fromarray(resample_target(t, size)).save(out / "tgt" / f"{it.key}.png", optimize=True)
                if name == "camelyon":
                    e = S.pixel_target(it, rgb, for_training=False)
                    Image.fromarray(resample_target(e, size)).save(out / "evt" / f"{it.key}.png", optimize=True)
                    rec["eval_target"] = True
            if src.cells:
                yx, vec, truth = _cells(it, rgb, clf, cache)
                f = np.array([size[0] / rgb.shape[0], size[1] / rgb.shape[1]], np.float32)
                np.savez_compressed(
                    out / "cells" / f"{it.key}.npz", yx=((yx + 0.5) * f - 0.5).astype(np.float32), vec=vec, truth=truth
                )
                rec["n_cells"] = int(len(yx))
                n_cells += len(yx)
            meta["items"].append(rec)
        log(
            f"{name}: {len(its)} images, {n_cells} cells, {time.perf_counter() - t0:.0f} s; "
            f"pack {_size(out) / 2**20:.1f} MiB"
        )
    if only is None or "pretrain" in only:
        for set_name, p, mpp in S.iter_pretrain_images(root):
            rgb = np.asarray(Image.open(p).convert("RGB"))
            size = stored_size(rgb.shape, mpp, work_mpp)
            key = f"pre_{set_name}_{p.stem}"
            Image.fromarray(rgb).resize((size[1], size[0]), Image.BOX).save(out / "img" / f"{key}.jpg", quality=QUALITY)
            meta["pretrain"].append({"key": key, "set": set_name, "mpp": mpp, "size": list(size)})
        log(f"pretraining pool: {len(meta['pretrain'])} nucleus-set images; pack {_size(out) / 2**20:.1f} MiB")
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=S.DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, default=Path(".gpu_data/regions"))
    ap.add_argument("--cache", type=Path, default=Path(".gpu_data/regions_cells_cache"))
    ap.add_argument(
        "--tumor-weights",
        type=Path,
        default=Path(__file__).resolve().parents[2] / "src" / "napari_uam" / "weights" / "tumor_mask.pt",
    )
    ap.add_argument("--work-mpp", type=float, default=2.0)
    ap.add_argument("--only", nargs="+", default=None, help="sources (and/or 'pretrain') to pack")
    a = ap.parse_args(argv)
    meta = pack(a.data, a.out, a.cache, a.tumor_weights, a.work_mpp, a.only)
    print(
        f"{len(meta['items'])} labelled + {len(meta['pretrain'])} pretraining images, "
        f"{_size(a.out) / 2**20:.1f} MiB in {a.out}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
