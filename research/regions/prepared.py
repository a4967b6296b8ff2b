"""Tumor-region data sets: images, region masks, nuclei, cell tables and the hold-out split.

The region images of ``../shared/data/regions`` (CAMELYON16 lymph-node tiles and one BCSS
breast ROI) are prepared once on the CPU with the pipeline's own stages
(:func:`napari_uam.pipeline.segment_nuclei` and :func:`~napari_uam.pipeline.measure_cells`)
into a self-contained folder that can be carried to a GPU machine (no pyradiomics / napari
needed there)::

    python -m research.regions.prepared --data ../shared/data/regions \
        --out .gpu_carry/regions_work --pack .gpu_carry/regions

Layout of the prepared folder (``<key>`` = ``<dataset>_<image id>``)::

    meta.json                 mpp per dataset (CAMELYON's is an estimate), split, counts
    <key>.jpg                 the RGB image (copied unchanged)
    <key>_tumor.png           uint8 region mask (255 = tumor)
    <key>_nuclei.png          uint16 nuclei instance labels (0 = background)
    <key>_cells.parquet       label, y, x, area_um2, region_target, then the radiomics features
                              (packed copy: the UAM cell vectors uam_e0.., uam_p_tumor instead)

Pixel sizes. BCSS is 0.25 um/px. The CAMELYON tiles are "resampled" with no pixel size; we
use :data:`CAMELYON_MPP` = 0.75 um/px, estimated from nucleus sizes (see
``docs/results.md``, multimodal section, and :func:`estimate_mpp`): the median CoNSeP
ground-truth lymphocyte nucleus (11.2 um^2 at a known 0.25 um/px) against the median nucleus
segmented in the (lymphocyte-rich) CAMELYON tiles gives 0.57-0.70 um/px depending on the
segmenter's assumed scale (recorded in ``meta.json``), and the lymphocyte diameters (5-6 px for nuclei of ~5-7 um) give
~1 um/px. The estimate is therefore uncertain by about +-30 %; the region models are trained
with random scale jitter of that size.

Hold-out (whole images, fixed): every fourth CAMELYON tile in natural order (8 of 32) is
validation; BCSS is one ROI, so it is cut into a training part (top 70 % of rows) and a
spatially disjoint validation block (bottom 25 %), with a 5 % gap between them.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: Estimated pixel size of the CAMELYON tiles (um/px); see the module docstring.
CAMELYON_MPP = 0.75
#: Known pixel sizes of the other region sets (um/px).
KNOWN_MPP = {"bcss": 0.25}
#: Segmentation backend per dataset ("auto" otherwise). On the strongly purple BCSS stain the
#: learned U-Net finds 108 nuclei in a 1024x1024 crop where the watershed finds 552 (checked
#: by eye: the watershed is right), so BCSS uses the watershed.
SEGMENT_BACKEND = {"bcss": "watershed"}
#: BCSS row fractions: training rows [0, TRAIN_FRAC), validation rows [VAL_FROM, 1).
BCSS_TRAIN_FRAC, BCSS_VAL_FROM = 0.70, 0.75


@dataclass
class RegionImage:
    """One prepared region image (or the train / validation part of one).

    Attributes:
        key: ``<dataset>_<id>``.
        dataset: ``"camelyon"`` or ``"bcss"``.
        image: (H, W, 3) uint8 RGB.
        mask: (H, W) bool tumor region.
        nuclei: (H, W) int32 nuclei labels.
        cells: cell table (label, y, x, area_um2, region_target, features...); y/x in this
            crop's pixels.
        mpp: pixel size (um/px).
        split: ``"train"`` or ``"val"``.
    """

    key: str
    dataset: str
    image: np.ndarray
    mask: np.ndarray
    nuclei: np.ndarray
    cells: pd.DataFrame
    mpp: float
    split: str


def _natural(s: str):
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def source_images(data_dir) -> list[tuple[str, str, Path, Path]]:
    """(dataset, image id, image path, mask path) of every region image, in natural order.

    Raises:
        FileNotFoundError: ``data_dir`` holds no ``<dataset>/<id>.jpg`` + ``<id>_tumor.png``.
    """
    data_dir = Path(data_dir)
    out = []
    for ds_dir in sorted(p for p in data_dir.iterdir() if p.is_dir()) if data_dir.is_dir() else []:
        for img in sorted(ds_dir.glob("*.jpg"), key=lambda p: _natural(p.stem)):
            mask = img.with_name(f"{img.stem}_tumor.png")
            if mask.is_file():
                out.append((ds_dir.name, img.stem, img, mask))
    if not out:
        raise FileNotFoundError(
            f"No region images (<dataset>/<id>.jpg with <id>_tumor.png) under {data_dir}; "
            "point --data at ../shared/data/regions."
        )
    return out


def dataset_mpp(dataset: str) -> float:
    """Pixel size used for a region dataset (CAMELYON: the documented estimate)."""
    return float(KNOWN_MPP.get(dataset, CAMELYON_MPP))


def camelyon_split(ids: list[str]) -> dict[str, str]:
    """Fixed whole-tile hold-out: every fourth tile (natural order) is validation."""
    ids = sorted(ids, key=_natural)
    return {i: ("val" if k % 4 == 3 else "train") for k, i in enumerate(ids)}


def estimate_mpp(camelyon_dir, consep_dir, guesses=(0.75, 1.0), n_tiles: int = 6) -> dict:
    """Pixel-size estimate of CAMELYON tiles from nucleus areas (CPU, ~1 min).

    Compares the median CoNSeP ground-truth lymphocyte nucleus area (um^2, known 0.25 um/px)
    with the median area (px) of nuclei segmented by the watershed backend in the first
    ``n_tiles`` CAMELYON tiles, for each assumed pixel size in ``guesses`` (the watershed's
    size priors depend on it): ``mpp = sqrt(area_um2 / area_px)``.

    Returns:
        ``{"reference_um2": ..., "estimates": {guess: mpp}}``.
    """
    from PIL import Image

    from napari_uam.segment import segment

    consep_dir, camelyon_dir = Path(consep_dir), Path(camelyon_dir)
    ref = []
    for csv in sorted(consep_dir.glob("*_cells.csv"))[:10]:
        gt = np.asarray(Image.open(csv.with_name(csv.name.replace("_cells.csv", "_inst.png")))).astype(np.int64)
        cells = pd.read_csv(csv)
        area = np.bincount(gt.ravel())
        lab = cells.loc[cells["class"].astype(str) == "inflammatory", "label"].to_numpy()
        ref.extend(area[lab[lab < area.size]] * 0.25**2)
    ref_um2 = float(np.median(ref))
    tiles = sorted(camelyon_dir.glob("*.jpg"), key=lambda p: _natural(p.stem))[:n_tiles]
    est = {}
    for g in guesses:
        areas = []
        for t in tiles:
            rgb = np.asarray(Image.open(t).convert("RGB"))
            c = np.bincount(segment(rgb, g, backend="watershed").ravel())[1:]
            areas.extend(c[c > 0])
        est[float(g)] = float(np.sqrt(ref_um2 / np.median(areas)))
    return {"reference_um2": ref_um2, "estimates": est}


def prepare(data_dir, out_dir, log=print, limit: int | None = None, mpp_evidence: dict | None = None) -> dict:
    """Segment, measure and label every region image into ``out_dir`` (see module docstring).

    Cell labels follow the UAM paper: a nucleus is tumor when more than 50 % of its pixels lie
    in the tumor region (:func:`napari_uam.tumor.cells_in_mask`).

    Args:
        data_dir: ``../shared/data/regions``.
        out_dir: destination folder (created; existing per-image files are kept: resumable).
        limit: prepare only the first ``limit`` images per dataset (quick checks).
        mpp_evidence: output of :func:`estimate_mpp`, recorded in ``meta.json`` (kept from an
            earlier run when None).

    Returns:
        The meta dict written to ``out_dir/meta.json``.
    """
    from PIL import Image

    from napari_uam.io.atomic import atomic_path
    from napari_uam.pipeline import measure_cells, segment_nuclei
    from napari_uam.radiomics.schema import DEFAULT_SCHEMA
    from napari_uam.segment import resolve_backend
    from napari_uam.tumor import cells_in_mask

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    srcs = source_images(data_dir)
    cam_split = camelyon_split([i for d, i, _, _ in srcs if d == "camelyon"])
    old = out / "meta.json"
    if mpp_evidence is None and old.is_file():
        mpp_evidence = json.loads(old.read_text()).get("camelyon_mpp_evidence")
    meta = {
        "schema_id": DEFAULT_SCHEMA.schema_id,
        "camelyon_mpp_estimate": CAMELYON_MPP,
        "camelyon_mpp_evidence": mpp_evidence,
        "bcss_split_rows": [BCSS_TRAIN_FRAC, BCSS_VAL_FROM],
        "images": {},
    }
    seen: dict[str, int] = {}
    for ds, iid, img_p, mask_p in srcs:
        seen[ds] = seen.get(ds, 0) + 1
        if limit is not None and seen[ds] > limit:
            continue
        key, mpp = f"{ds}_{iid}", dataset_mpp(ds)
        cells_p = out / f"{key}_cells.parquet"
        t0 = time.perf_counter()
        if not cells_p.is_file():
            rgb = np.asarray(Image.open(img_p).convert("RGB"))
            mask = np.asarray(Image.open(mask_p)) > 0
            backend = resolve_backend(SEGMENT_BACKEND.get(ds, "auto"), mpp)
            nuclei = segment_nuclei(rgb, mpp, backend=backend)
            table = measure_cells(rgb, nuclei, mpp, device="cpu")
            target = cells_in_mask(nuclei, mask).reindex(table["label"].to_numpy()).fillna(0)
            table.insert(4, "region_target", target.to_numpy().astype(np.int64))
            feats = [c for c in table.columns[5:]]
            table[feats] = table[feats].astype(np.float32)
            shutil.copyfile(img_p, out / f"{key}.jpg")
            shutil.copyfile(mask_p, out / f"{key}_tumor.png")
            if nuclei.max() > np.iinfo(np.uint16).max:
                raise ValueError(f"{key}: {nuclei.max()} nuclei do not fit a uint16 PNG")
            Image.fromarray(nuclei.astype(np.uint16)).save(out / f"{key}_nuclei.png", optimize=True)
            with atomic_path(cells_p, overwrite=True) as tmp:
                table.to_parquet(tmp, index=False)
            log(
                f"{key}: {len(table)} cells ({int(table['region_target'].sum())} tumor) "
                f"backend={backend} {time.perf_counter() - t0:.1f}s"
            )
        table = pd.read_parquet(cells_p)
        split = cam_split.get(iid, "train") if ds == "camelyon" else "train+val-block"
        meta["images"][key] = {
            "dataset": ds,
            "id": iid,
            "mpp": mpp,
            "split": split,
            "n_cells": int(len(table)),
            "n_tumor_cells": int(table["region_target"].sum()),
        }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    return meta


#: Columns of the UAM cell vectors in a packed cell table.
def uam_columns(n: int) -> list[str]:
    """Names of the ``n`` UAM cell-vector columns (embedding then tumor probability)."""
    return [f"uam_e{i}" for i in range(n - 1)] + ["uam_p_tumor"]


def pack(work_dir, out_dir, uam_weights=None, log=print) -> dict:
    """Compact copy of a prepared folder for the GPU carry: the radiomics columns are replaced
    by the UAM cell vectors (:func:`napari_uam.models.multimodal.uam_cell_inputs` of the
    UAM checkpoint ``uam_weights``, default the shipped one; float16), so 33 images fit in
    ~15 MB. ``meta.json`` records the UAM checkpoint's SHA-256 so that a trainer can check it
    uses the same cell encoder.
    """
    from napari_uam.models.multimodal import uam_cell_inputs
    from napari_uam.classify.checkpoint import load_classifier

    work, out = Path(work_dir), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    clf = load_classifier(uam_weights, device="cpu", backend="torch")
    meta = json.loads((work / "meta.json").read_text())
    for key in meta["images"]:
        table = pd.read_parquet(work / f"{key}_cells.parquet")
        vec = uam_cell_inputs(clf, table[clf.feature_names])
        small = table[["label", "y", "x", "area_um2", "region_target"]].copy()
        small[["y", "x", "area_um2"]] = small[["y", "x", "area_um2"]].astype(np.float32)
        small = pd.concat([small, pd.DataFrame(vec.astype(np.float16), columns=uam_columns(vec.shape[1]))], axis=1)
        small.to_parquet(out / f"{key}_cells.parquet", index=False, compression="zstd")
        for suffix in (".jpg", "_tumor.png", "_nuclei.png"):
            shutil.copyfile(work / f"{key}{suffix}", out / f"{key}{suffix}")
    meta["uam"] = {"model_id": clf.model_id, "sha256": clf.sha256, "n_vector": int(vec.shape[1])}
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    log(f"packed {len(meta['images'])} images into {out}")
    return meta


def _crop(img: RegionImage, r0: int, r1: int, split: str) -> RegionImage:
    cells = img.cells[(img.cells["y"] >= r0) & (img.cells["y"] < r1)].copy()
    cells["y"] -= r0
    keep = np.isin(img.nuclei[r0:r1], cells["label"].to_numpy())
    return RegionImage(
        f"{img.key}_{split}",
        img.dataset,
        img.image[r0:r1],
        img.mask[r0:r1],
        np.where(keep, img.nuclei[r0:r1], 0),
        cells,
        img.mpp,
        split,
    )


def load_prepared(folder) -> list[RegionImage]:
    """The prepared region images, BCSS cut into its train part and validation block.

    Raises:
        FileNotFoundError: ``folder`` lacks ``meta.json`` (run :func:`prepare` first).
    """
    from PIL import Image

    folder = Path(folder)
    if not (folder / "meta.json").is_file():
        raise FileNotFoundError(
            f"{folder}/meta.json missing: prepare the region data first "
            "(python -m research.regions.prepared --data ../shared/data/regions --out DIR)."
        )
    meta = json.loads((folder / "meta.json").read_text())
    out = []
    for key, m in meta["images"].items():
        img = RegionImage(
            key,
            m["dataset"],
            np.asarray(Image.open(folder / f"{key}.jpg").convert("RGB")),
            np.asarray(Image.open(folder / f"{key}_tumor.png")) > 0,
            np.asarray(Image.open(folder / f"{key}_nuclei.png")).astype(np.int32),
            pd.read_parquet(folder / f"{key}_cells.parquet"),
            float(m["mpp"]),
            m["split"],
        )
        if m["split"] in ("train", "val"):
            out.append(img)
        else:  # one large ROI: spatially disjoint row blocks
            h = img.image.shape[0]
            out.append(_crop(img, 0, int(h * BCSS_TRAIN_FRAC), "train"))
            out.append(_crop(img, int(h * BCSS_VAL_FROM), h, "val"))
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="../shared/data/regions")
    p.add_argument("--out", default=".gpu_carry/regions")
    p.add_argument("--limit", type=int, default=None)
    p.add_argument(
        "--pack",
        metavar="DIR",
        default=None,
        help="also write the compact GPU carry (UAM cell vectors instead of features) to DIR",
    )
    p.add_argument(
        "--estimate-mpp",
        metavar="CONSEP_DIR",
        default=None,
        help="also print the CAMELYON pixel-size estimate against CoNSeP",
    )
    a = p.parse_args(argv)
    evidence = None
    if a.estimate_mpp:
        evidence = estimate_mpp(Path(a.data) / "camelyon", a.estimate_mpp)
        print(json.dumps(evidence, indent=1))
    meta = prepare(a.data, a.out, limit=a.limit, mpp_evidence=evidence)
    print(json.dumps({k: v for k, v in meta.items() if k != "images"}, indent=1), len(meta["images"]), "images")
    if a.pack:
        pack(a.out, a.pack)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
