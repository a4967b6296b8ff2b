"""Every cell-labelled source of ``../shared/data`` behind one dataset layer.

A *cell source* is one folder (one hospital / challenge / organ) whose images give tumor /
non-tumor labels to nuclei, in one of three ways:

- ``instances``: ground-truth nuclei with a class (CoNSeP, MoNuSAC, PUMA). The shipped
  segmenter's nuclei take the class of the ground-truth nucleus covering more than half of
  them; unmatched nuclei get no label (MoNuSAC's labels are not exhaustive).
- ``points``: one annotated point per cell (BRCA-M2C), matched one-to-one to segmented
  nuclei within 3 um.
- ``region``: a tumor-region mask (CAMELYON, BCSS, WSSS4LUAD, GlaS); a nucleus is tumor when
  more than half of it lies in the region (the UAM paper's rule), non-tumor when less than
  half does. WSSS4LUAD nuclei lying mostly on background (class 0) are dropped.

Nuclei always come from the shipped segmenter at the image's pixel size, as inference makes
them, so a classifier learns the nuclei it will see. EBHI (about 2 um/px) and the tile sets
are too coarse for nuclei: they serve the region model only.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"
#: Largest point-to-centroid distance (um) for a point label.
MATCH_RADIUS_UM = 3.0
#: Pixel size assumed for CAMELYON tiles, whose meta.json gives none (README: about 0.75).
CAMELYON_MPP = 0.75
#: Side of the crops a large ROI is cut into (pixels at its own resolution).
CROP = 1024


@dataclass(frozen=True)
class CellSource:
    """One cell-labelled source: LOSO key, folder(s), label kind, organ, licence."""

    name: str
    folders: tuple[str, ...]
    kind: str
    organ: str
    licence: str


SOURCES: dict[str, CellSource] = {
    s.name: s
    for s in (
        CellSource("consep", ("consep",), "instances", "colon (UHCW)", "research use, cite HoVer-Net"),
        CellSource("monusac", ("monusac",), "instances", "kidney, lung, prostate, breast (TCGA)", "CC BY-NC-SA 4.0"),
        CellSource("puma", ("puma",), "instances", "melanoma", "CC0-1.0"),
        CellSource("brca_m2c", ("brca_m2c/train", "brca_m2c/val"), "points", "breast (TCGA)", "BSD-3-Clause"),
        CellSource("camelyon", ("regions/camelyon",), "region", "lymph node (breast metastasis)", "CC0"),
        CellSource("bcss", ("regions/bcss",), "region", "breast (TCGA)", "CC0"),
        CellSource(
            "wsss4luad",
            ("regions/wsss4luad",),
            "region",
            "lung (GDPH + TCGA)",
            "WSSS4LUAD challenge terms (not stated in the copy)",
        ),
        CellSource("glas", ("regions/glas",), "region", "colon (Warwick)", "research use (GlaS)"),
    )
}


@dataclass(frozen=True)
class CellImage:
    """One image (or crop of a large ROI) of a cell source.

    Attributes:
        source: :class:`CellSource` name; image_id: unique key within it; path: the jpg.
        mpp: pixel size (um/px); patient: grouping key (TCGA patient or image);
        split: "train" / "val" for BRCA-M2C, else "all"; crop: (y0, x0, y1, x1) or None.
    """

    source: str
    image_id: str
    path: Path
    mpp: float
    patient: str
    split: str = "all"
    crop: tuple[int, int, int, int] | None = None


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def _mpp(meta: dict, default: float) -> float:
    try:
        return float(meta.get("mpp"))
    except (TypeError, ValueError):
        return default


def _stems(folder: Path, suffix: str) -> list[str]:
    return sorted(p.name[: -len(suffix)] for p in folder.glob(f"*{suffix}"))


def images(source: str, root: Path = DEFAULT_ROOT) -> list[CellImage]:
    """Every image of ``source`` under ``root`` (empty when the folder is absent)."""
    src = SOURCES[source]
    out = []
    for rel in src.folders:
        folder = Path(root) / rel
        if not (folder / "meta.json").is_file():
            continue
        meta = _meta(folder)
        if src.kind == "points":
            mpp = _mpp(meta, 0.5)
            for stem in _stems(folder, "_points.csv"):
                out.append(CellImage(source, stem, folder / f"{stem}.jpg", mpp, stem[:12], folder.name))
        elif src.kind == "instances":
            mpp = _mpp(meta, 0.25)
            for stem in _stems(folder, "_inst.png"):
                patient = stem[:12] if stem.startswith("TCGA-") else stem
                out.append(CellImage(source, stem, folder / f"{stem}.jpg", mpp, patient))
        else:
            mpp = _mpp(meta, CAMELYON_MPP)
            for stem in _stems(folder, "_tumor.png"):
                path = folder / f"{stem}.jpg"
                with Image.open(path) as im:
                    w, h = im.size
                if max(h, w) <= 2 * CROP:
                    out.append(CellImage(source, stem, path, mpp, stem))
                    continue
                for y in range(0, h - CROP // 2, CROP):  # a large ROI: crops, one patient
                    for x in range(0, w - CROP // 2, CROP):
                        box = (y, x, min(h, y + CROP), min(w, x + CROP))
                        out.append(CellImage(source, f"{stem}_{y}_{x}", path, mpp, stem, crop=box))
    return out


def _read(path: Path, crop, mode: str | None = "RGB") -> np.ndarray:
    with Image.open(path) as im:
        arr = np.asarray(im.convert(mode) if mode else im)
    if crop is not None:
        y0, x0, y1, x1 = crop
        arr = arr[y0:y1, x0:x1]
    return arr


def read_image(ci: CellImage) -> np.ndarray:
    return _read(ci.path, ci.crop)


def _overlap_classes(labels: np.ndarray, gt: np.ndarray, gt_class: pd.Series) -> pd.DataFrame:
    """Class of the ground-truth nucleus covering > 50 % of each segmented nucleus."""
    seg = labels.ravel().astype(np.int64)
    ref = gt.ravel().astype(np.int64)
    keep = seg > 0
    n_seg = int(seg.max()) + 1
    area = np.bincount(seg, minlength=n_seg)
    pair = seg[keep & (ref > 0)] * (int(ref.max()) + 1) + ref[keep & (ref > 0)]
    codes, counts = np.unique(pair, return_counts=True)
    if codes.size == 0:  # no segmented nucleus touches a labelled one
        return pd.DataFrame({"label": np.empty(0, np.int64), "cell_class": np.empty(0, str)})
    s_id, g_id = codes // (int(ref.max()) + 1), codes % (int(ref.max()) + 1)
    order = np.lexsort((-counts, s_id))  # per segmented nucleus, largest overlap first
    s_id, g_id, counts = s_id[order], g_id[order], counts[order]
    first = np.r_[True, s_id[1:] != s_id[:-1]]
    s_id, g_id, counts = s_id[first], g_id[first], counts[first]
    good = counts > 0.5 * area[s_id]
    s_id, g_id = s_id[good], g_id[good]
    cls = gt_class.reindex(g_id).to_numpy()
    ok = pd.notna(cls)
    return pd.DataFrame({"label": s_id[ok], "cell_class": cls[ok].astype(str)})


def cell_labels(ci: CellImage, labels: np.ndarray) -> pd.DataFrame:
    """Labelled segmented nuclei of one image: columns label, cell_class, target (1 = tumor)."""
    from napari_uam.segment.metrics import centroids, match_points

    src = SOURCES[ci.source]
    folder = ci.path.parent
    meta = _meta(folder)
    if src.kind == "instances":
        gt = _read(folder / f"{ci.image_id}_inst.png", ci.crop, None).astype(np.int64)
        cells = pd.read_csv(folder / f"{ci.image_id}_cells.csv").set_index("label")["class"].astype(str)
        df = _overlap_classes(labels, gt, cells)
        df["target"] = df["cell_class"].isin([str(c) for c in meta["tumor_classes"]]).astype(np.int64)
        return df
    if src.kind == "points":
        pts = pd.read_csv(folder / f"{ci.image_id}_points.csv")
        ids = np.unique(labels)
        ids = ids[ids > 0]
        cents = centroids(labels)
        pi, ti = match_points(cents, pts[["y", "x"]].to_numpy(float), MATCH_RADIUS_UM / ci.mpp)
        cls = pts["class"].to_numpy()[ti].astype(str)
        return pd.DataFrame({
            "label": ids[pi], "cell_class": cls,
            "target": np.isin(cls, [str(c) for c in meta["tumor_classes"]]).astype(np.int64),
        })  # fmt: skip
    tumor = _read(folder / f"{ci.image_id.split('_')[0] if ci.crop else ci.image_id}_tumor.png", ci.crop, "L") > 127
    lab = labels.ravel().astype(np.int64)
    n = int(lab.max()) + 1
    total = np.bincount(lab, minlength=n).astype(np.float64)
    inside = np.bincount(lab, weights=tumor.ravel().astype(np.float64), minlength=n)
    ids = np.flatnonzero(total[1:]) + 1
    frac = inside[ids] / total[ids]
    keep = np.ones(len(ids), bool)
    if ci.source == "wsss4luad":  # nuclei mostly on background (class 0) have no label
        classes = _read(folder / f"{ci.image_id}_classes.png", ci.crop, None).ravel()
        bg = np.bincount(lab, weights=(classes == 0).astype(np.float64), minlength=n)[ids] / total[ids]
        keep = bg <= 0.5
    target = (frac > 0.5).astype(np.int64)
    return pd.DataFrame({
        "label": ids[keep], "cell_class": np.where(target[keep] == 1, "tumor region", "outside tumor region"),
        "target": target[keep],
    })  # fmt: skip
