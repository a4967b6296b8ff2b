"""Cell-labelled sets (CoNSeP, BRCA-M2C) as an auxiliary signal for the tumor-region models.

These sets have no region masks, only labelled nuclei (tumor / non-tumor, from each set's
``meta.json``). Claiming a region mask from them would be dishonest; what they do say is
local: a labelled tumor nucleus lies in tumor tissue, a lymphocyte or stromal nucleus in
non-tumor tissue, at least at the nucleus itself. So, for the region models, each labelled
cell gives

- a *weak region target*: a disc of :data:`WEAK_RADIUS_UM` (about one nucleus) around its
  centroid, target 1 for tumor and 0 otherwise, weight 1 there and 0 everywhere else (pixels
  claimed by both a tumor and a non-tumor disc get weight 0): the segmentation loss only
  looks at those discs;
- its class as a target of the multimodal model's cell head (the same cell loss as on the
  region sets, from the cells' UAM vectors).

Only the *training* splits are used (CoNSeP train, BRCA-M2C train patients), so the
validation numbers of the region models stay on the held-out region images.

The sets are packed once on the CPU, from the classification cell tables (which hold the
radiomics features, the centroids and the targets) and the images, into a small folder for
the GPU carry: images resampled to :data:`PACK_MPP` (the finest working scale), UAM vectors in
float16::

    python -m research.regions.cell_sets --tables .gpu_data/consep.parquet \
        .gpu_data/brca_m2c.parquet --data ../shared/data --out .gpu_carry/cell_sets
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Pixel size of the packed images (um/px): the finest working scale of the region training
#: (2 um/px x 0.8), so that every training scale is a downsampling.
PACK_MPP = 1.6
#: Radius of a cell's weak region target (um): about one nucleus.
WEAK_RADIUS_UM = 4.0


@dataclass
class CellSetImage:
    """One packed cell-labelled image: (H, W, 3) uint8 at ``mpp``; cells with y, x (pixels of
    this image), target (1 = tumor) and the UAM vector columns ``uam_*``."""

    key: str
    dataset: str
    image: np.ndarray
    cells: pd.DataFrame
    mpp: float


def _image_path(data_dir: Path, dataset: str, image: str, split: str) -> Path:
    if dataset == "brca_m2c":
        return data_dir / "brca_m2c" / split / f"{image}.jpg"
    return data_dir / dataset / f"{image}.jpg"


def pack_cell_sets(tables, data_dir, out_dir, uam_weights=None, log=print) -> dict:
    """Pack the training images of the cell tables (see the module docstring).

    Args:
        tables: cell-table parquet files (columns dataset, split, image, y, x, target and the
            classifier's features, as ``research.cells.datasets`` writes them).
        data_dir: ``../shared/data`` (images and each set's ``meta.json``).
        out_dir: output folder.
        uam_weights: UAM checkpoint for the cell vectors (default: the shipped one).

    Returns:
        The ``meta.json`` written.
    """
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from napari_uam.models.multimodal import uam_cell_inputs
    from napari_uam.classify.checkpoint import load_classifier
    from research.regions.prepared import uam_columns

    data_dir, out = Path(data_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = load_classifier(uam_weights, device="cpu", backend="torch")
    meta = {"pack_mpp": PACK_MPP, "weak_radius_um": WEAK_RADIUS_UM, "images": {}, "sources": {}}
    for table_path in tables:
        table = pd.read_parquet(table_path)
        table = table[table["split"] == "train"]
        for dataset, rows in table.groupby("dataset"):
            meta_path = data_dir / dataset / "meta.json"
            if not meta_path.is_file():  # BRCA-M2C keeps one per split
                meta_path = data_dir / dataset / "train" / "meta.json"
            ds_meta = json.loads(meta_path.read_text())
            mpp = float(ds_meta["mpp"])
            meta["sources"][dataset] = {
                "mpp": mpp,
                "tumor_classes": ds_meta.get("tumor_classes"),
                "licence": ds_meta.get("licence"),
                "source": ds_meta.get("source"),
            }
            vec = uam_cell_inputs(clf, rows[clf.feature_names])
            vec_cols = uam_columns(vec.shape[1])
            for image, idx in rows.groupby("image").indices.items():
                cells = rows.iloc[idx]
                rgb = np.asarray(Image.open(_image_path(data_dir, dataset, image, "train")).convert("RGB"))
                h, w = rgb.shape[:2]
                f = mpp / PACK_MPP
                hw, ww = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
                x = torch.from_numpy(np.ascontiguousarray(rgb)).permute(2, 0, 1)[None].float()
                small = F.interpolate(x, size=(hw, ww), mode="area")[0].permute(1, 2, 0).round().byte().numpy()
                key = f"{dataset}_{image}"
                Image.fromarray(small).save(out / f"{key}.png")
                packed = pd.DataFrame(
                    {
                        "y": ((cells["y"].to_numpy() + 0.5) * hw / h - 0.5).astype(np.float32),
                        "x": ((cells["x"].to_numpy() + 0.5) * ww / w - 0.5).astype(np.float32),
                        "target": cells["target"].to_numpy(np.int64),
                    }
                )
                packed = pd.concat([packed, pd.DataFrame(vec[idx].astype(np.float16), columns=vec_cols)], axis=1)
                packed.to_parquet(out / f"{key}_cells.parquet", index=False, compression="zstd")
                meta["images"][key] = {"dataset": dataset, "n_cells": len(packed), "n_tumor": int(packed.target.sum())}
    meta["uam"] = {"model_id": clf.model_id, "sha256": clf.sha256, "n_vector": int(vec.shape[1])}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"packed {len(meta['images'])} cell-labelled training images into {out}")
    return meta


def load_cell_sets(folder) -> list[CellSetImage]:
    """The packed cell-labelled images of :func:`pack_cell_sets`.

    Raises:
        FileNotFoundError: ``folder`` lacks ``meta.json``.
    """
    from PIL import Image

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(
            f"{folder}/meta.json missing: pack the cell sets first (python -m research.regions.cell_sets --help)."
        )
    meta = json.loads((folder / "meta.json").read_text())
    return [
        CellSetImage(
            key,
            m["dataset"],
            np.asarray(Image.open(folder / f"{key}.png").convert("RGB")),
            pd.read_parquet(folder / f"{key}_cells.parquet"),
            float(meta["pack_mpp"]),
        )
        for key, m in meta["images"].items()
    ]


def weak_targets(pos, target, shape, radius_px: float):
    """Weak region target and weight maps from labelled cells.

    Args:
        pos: (n, 2) float y, x in pixels; target: (n,) 0/1; shape: (h, w); radius_px: disc radius.

    Returns:
        mask (h, w) float32 (1 in tumor discs), weight (h, w) float32 (1 in the discs, 0 outside
        and where a tumor and a non-tumor disc overlap).
    """
    h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    tumor = np.zeros((h, w), bool)
    other = np.zeros((h, w), bool)
    r = int(np.ceil(radius_px))
    for (y, x), t in zip(np.asarray(pos, np.float64), np.asarray(target)):
        y0, y1 = max(int(np.floor(y)) - r, 0), min(int(np.ceil(y)) + r + 1, h)
        x0, x1 = max(int(np.floor(x)) - r, 0), min(int(np.ceil(x)) + r + 1, w)
        if y0 >= y1 or x0 >= x1:
            continue
        disc = (yy[y0:y1, x0:x1] - y) ** 2 + (xx[y0:y1, x0:x1] - x) ** 2 <= radius_px**2
        (tumor if t else other)[y0:y1, x0:x1] |= disc
    weight = (tumor ^ other).astype(np.float32)
    return (tumor & ~other).astype(np.float32), weight


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", nargs="+", required=True, help="classification cell tables (parquet)")
    p.add_argument("--data", required=True, help="../shared/data")
    p.add_argument("--out", required=True)
    p.add_argument("--uam", default=None, help="UAM checkpoint for the cell vectors (default: shipped)")
    a = p.parse_args(argv)
    pack_cell_sets(a.tables, a.data, a.out, a.uam)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
