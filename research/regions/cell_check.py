"""Tumor-region masks judged on cell-labelled sources no region model was trained on.

    git show adf48bd:src/napari_uam/weights/tumor_mask.pt > runs/previous_tumor_mask.pt
    python -m research.regions.cell_check --weights previous=runs/previous_tumor_mask.pt \
        seed0=runs/regions/seed0/ckpt/image_only.pt seed1=runs/regions/seed1/ckpt/image_only.pt \
        seed2=runs/regions/seed2/ckpt/image_only.pt mm_seed0=runs/regions/seed0/ckpt/multimodal.pt \
        --per-source 10 --out docs/regions_cell_check.json

(``runs/regions/seed<N>`` are the unpacked ``regions_run.tgz`` of ``research/regions/device_loso.sh``;
seed 0's ``image_only.pt`` is the shipped ``src/napari_uam/weights/tumor_mask.pt``.)

For every labelled cell of BRCA-M2C (points), CoNSeP and MoNuSAC (ground-truth nuclei with a
class), the mask's probability at the cell's centre is read and the cell called tumor above 0.5
(the UAM paper's image-based cell classification, at the centroid). Accuracy and balanced
accuracy per source against the source's own tumor classes; the first ``--per-source`` images of
each source (sorted names), the same images for every model. Multimodal models get the
product's own cell table (segment + measure), as ``napari-uam classify`` gives them.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from research.cells.sources import DEFAULT_ROOT

#: source -> (folder, points or instance table suffix, mpp)
SETS = {
    "brca_m2c": ("brca_m2c/val", "_points.csv", 0.5),
    "consep": ("consep", "_cells.csv", 0.25),
    "monusac": ("monusac", "_cells.csv", 0.25),
}


def cells_of(root: Path, source: str, n: int):
    folder, suffix, mpp = SETS[source]
    d = Path(root) / folder
    tumor = {str(c) for c in json.loads((d / "meta.json").read_text())["tumor_classes"]}
    for f in sorted(d.glob(f"*{suffix}"))[:n]:
        stem = f.name[: -len(suffix)]
        t = pd.read_csv(f)
        yield stem, d / f"{stem}.jpg", mpp, t[["y", "x"]].to_numpy(float), t["class"].astype(str).isin(tumor).to_numpy()


def probability(model, rgb, mpp):
    if model.uses_cells:
        from napari_uam.pipeline import measure_cells, segment_nuclei

        labels = segment_nuclei(rgb, mpp)
        return model.predict(rgb, mpp, measure_cells(rgb, labels, mpp, device="cpu"))
    return model.predict(rgb, mpp)


def main(argv=None) -> int:
    from napari_uam.tumor import TumorMaskModel, read_tumor_checkpoint

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", nargs="+", required=True, help="name=path.pt")
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--per-source", type=int, default=12)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    models = {
        w.split("=", 1)[0]: TumorMaskModel(read_tumor_checkpoint(w.split("=", 1)[1]), device="cpu") for w in a.weights
    }
    res: dict = {"per_source": a.per_source, "weights": dict(w.split("=", 1) for w in a.weights), "sources": {}}
    for source in SETS:
        pred = {k: [] for k in models}
        truth, n_img, t0 = [], 0, time.perf_counter()
        for stem, path, mpp, yx, tum in cells_of(a.data, source, a.per_source):
            rgb = np.asarray(Image.open(path).convert("RGB"))
            iy = np.clip(np.round(yx[:, 0]).astype(int), 0, rgb.shape[0] - 1)
            ix = np.clip(np.round(yx[:, 1]).astype(int), 0, rgb.shape[1] - 1)
            for k, m in models.items():
                pred[k].append(probability(m, rgb, mpp)[iy, ix] > 0.5)
            truth.append(tum)
            n_img += 1
        y = np.concatenate(truth)
        row = {"images": n_img, "cells": int(len(y)), "tumor_cells": int(y.sum())}
        for k in models:
            p = np.concatenate(pred[k])
            tpr = float((p & y).sum() / max(y.sum(), 1))
            tnr = float((~p & ~y).sum() / max((~y).sum(), 1))
            row[k] = {
                "accuracy": 100 * float((p == y).mean()),
                "balanced_accuracy": 50 * (tpr + tnr),
                "tumor_recall": 100 * tpr,
                "non_tumor_specificity": 100 * tnr,
            }
        res["sources"][source] = row
        print(
            source,
            f"{time.perf_counter() - t0:.0f} s",
            json.dumps({k: round(row[k]["balanced_accuracy"], 1) for k in models}),
            flush=True,
        )
    a.out.write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
