"""Every tumor-region source of ``../shared/data``, with what "tumor" means in its labels.

The region sources do not agree on what a tumor mask is. Some outline the whole tumor bed
(CAMELYON metastases, the BCSS tumor region); others outline the tumor *epithelium* only
(WSSS4LUAD: tumor epithelium vs tumor-associated stroma; EBHI and GlaS: glands), so the
stroma between malignant glands is 0 there although a pathologist drawing a tumor region
would include it. Training a tumor-bed model on an epithelium-only mask as written would teach
it that tumor stroma is benign, so each source's pixel target has three values:

* 1 tumor, 0 non-tumor, :data:`IGNORE` (255) unknown: left out of the loss and the metrics.

Per source (``SOURCES``, ``RegionSource.tumor_means`` / ``handling`` say the same in words):

==============  =======================  ==================================================
source          "tumor" in the masks     target here
==============  =======================  ==================================================
camelyon        metastasis region (bed)  mask; training ignores a 6 um band at its blocky
                                         edges (coarse annotation), metrics do not
bcss            tumor region (bed)       mask as is
wsss4luad       tumor epithelium only    epithelium 1; tumor-associated stroma ignored;
                                         normal tissue and white background 0
ebhi            adenocarcinoma glands    adenocarcinoma frames: glands 1, the rest ignored
                (epithelium, partial)    except white background (0); normal, polyp,
                                         low-grade IN, serrated adenoma frames: all 0;
                                         high-grade IN frames left out (neoplastic, not
                                         invasive: neither clearly tumor nor benign)
glas            glands of malignant      malignant images: glands 1, the rest ignored
                images (epithelium)      except white background (0); benign images: all 0
==============  =======================  ==================================================

Tile-labelled sets give one label per tile (image-level weak supervision): a tumor tile must
contain tumor (its top-k pooled probability is pushed to 1), a benign tile contains none
(every pixel 0). lc25000_lung: adenocarcinoma and squamous cell carcinoma tumor, benign
not; oral_oscc: oscc tumor, normal not; osteosarcoma: viable tumor tumor, non-tumor not,
necrotic tumor left out (dead tumor bed after chemotherapy: neither).

Pixel sizes are the meta.json values, estimates where the source gives none (see each
``mpp_note``); the oral tiles are 100x or 400x camera frames downscaled 9x: estimated 6.0
and 1.8 um/px.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Optional

import numpy as np

#: Target value of pixels that count neither as tumor nor as non-tumor.
IGNORE = 255


def _default_root() -> Path:
    env = os.environ.get("NAPARI_UAM_DATA")
    if env:
        return Path(env)
    repo = Path(__file__).resolve().parents[2]
    # A checkout's ../shared/data; a git worktree under <checkout-parent>/wt/ looks one further up.
    cands = [repo.parent / "shared" / "data", repo.parent.parent / "shared" / "data"]
    return next((c for c in cands if c.is_dir()), cands[0])


#: Root of the shared data, beside the checkout (or ``$NAPARI_UAM_DATA``).
DEFAULT_ROOT = _default_root()
#: Pixels brighter than this in every channel (after a 3x3 median) are glass: non-tumor.
WHITE = 215


@dataclass(frozen=True)
class RegionSource:
    """One region source: where it is, its scale, licence and what its labels mean.

    Attributes:
        name: short name (the LOSO fold name).
        kind: ``"mask"`` (pixel masks) or ``"tiles"`` (one label per tile).
        folder: path under the shared data root.
        organ, hospital, licence: from meta.json.
        mpp: pixel size (um/px) used; ``mpp_estimated`` when the source gives none.
        tumor_means: what the source's tumor label covers.
        handling: how it becomes a target here.
        cells: whether nuclei are segmented and measured for the multimodal model (needs
            about 1 um/px or finer; the 224 px tile sets and EBHI are too coarse).
    """

    name: str
    kind: str
    folder: str
    organ: str
    hospital: str
    licence: str
    mpp: float
    mpp_estimated: bool
    tumor_means: str
    handling: str
    cells: bool = False
    tile_classes: dict = field(default_factory=dict)  # class folder -> 1 tumor / 0 benign / None left out


SOURCES: dict[str, RegionSource] = {
    s.name: s
    for s in (
        RegionSource(
            "camelyon",
            "mask",
            "regions/camelyon",
            "lymph node (breast cancer metastasis)",
            "Radboud UMC / UMC Utrecht (CAMELYON16)",
            "CC0",
            0.75,
            True,
            "whole metastasis region (tumor bed), coarse blocky outlines",
            "mask; a 6 um band along its edges is ignored in training (blocky annotation)",
            cells=True,
        ),
        RegionSource(
            "bcss",
            "mask",
            "regions/bcss",
            "breast",
            "TCGA (BCSS)",
            "CC0",
            0.25,
            False,
            "tumor region of one ROI",
            "mask as is",
            cells=True,
        ),
        RegionSource(
            "wsss4luad",
            "mask",
            "regions/wsss4luad",
            "lung (adenocarcinoma)",
            "Guangdong Provincial People's Hospital + TCGA",
            "WSSS4LUAD challenge terms",
            1.0,
            True,
            "tumor epithelium only (classes: epithelium, tumor-associated stroma, normal, background)",
            "epithelium 1, tumor-associated stroma ignored, normal and background 0",
            cells=True,
        ),
        RegionSource(
            "ebhi",
            "mask",
            "regions/ebhi",
            "colon / rectum (biopsies)",
            "China Medical University",
            "not stated (EBHI-Seg, check upstream)",
            2.0,
            True,
            "adenocarcinoma glands (epithelium only; some glands unannotated)",
            "ACA frames: glands 1, rest ignored but white 0; NOR/POL/LGIN/SA frames 0; HGIN left out",
        ),
        RegionSource(
            "glas",
            "mask",
            "regions/glas",
            "colon / rectum",
            "UHCW (Warwick-QU)",
            "GlaS challenge terms (research)",
            0.62,
            False,
            "glands of images graded malignant (epithelium only)",
            "malignant images: glands 1, rest ignored but white 0; benign images 0",
            cells=True,
        ),
        RegionSource(
            "lc25000_lung",
            "tiles",
            "tiles/lc25000_lung",
            "lung",
            "VA Tampa (LC25000)",
            "no licence stated (citation request)",
            1.5,
            True,
            "tile class: adenocarcinoma / squamous cell carcinoma / benign",
            "weak: tumor tiles must contain tumor, benign tiles none",
            tile_classes={"lung_adenocarcinoma": 1, "lung_squamous_cell_carcinoma": 1, "lung_benign": 0},
        ),
        RegionSource(
            "oral_oscc",
            "tiles",
            "tiles/oral_oscc",
            "oral cavity",
            "Assam, India (Rahman et al.)",
            "CC0 (Kaggle copy) / CC BY 4.0 (Mendeley)",
            1.8,
            True,
            "tile class: oral squamous cell carcinoma / normal mucosa",
            "weak: oscc tiles must contain tumor, normal tiles none; 100x tiles 6.0, 400x 1.8 um/px",
            tile_classes={"oscc": 1, "normal": 0},
        ),
        RegionSource(
            "osteosarcoma",
            "tiles",
            "tiles/osteosarcoma",
            "bone (osteosarcoma)",
            "UT Southwestern (TCIA)",
            "CC BY 3.0 (TCIA)",
            1.0,
            True,
            "tile class (predominant tissue): viable tumor / necrotic tumor / non-tumor",
            "weak: viable tumor must contain tumor, non-tumor none, necrotic tumor left out",
            tile_classes={"viable_tumor": 1, "non_tumor": 0, "necrotic_tumor": None},
        ),
    )
}
MASK_SOURCES = [n for n, s in SOURCES.items() if s.kind == "mask"]
TILE_SOURCES = [n for n, s in SOURCES.items() if s.kind == "tiles"]
#: Nucleus sets: unlabelled H&E for MAMIM pretraining only (folder, pixel size).
PRETRAIN_ONLY = {
    "consep": 0.25,
    "brca_m2c/train": 0.5,
    "brca_m2c/val": 0.5,
    "monuseg": 0.25,
    "cpm15": 0.375,
    "gbm40": 0.25,
    "tcga_lgg": 0.25,
    "monusac": 0.25,
    "puma": 0.23,
    "dsb2018_he": 0.26,
}


@dataclass
class RegionItem:
    """One labelled image of a source.

    Attributes:
        source: source name; key: unique ``<source>_<id>``; path: the RGB file.
        mpp: its pixel size (um/px).
        group: patient / case id where known (else the image id).
        label: tile sets: 1 tumor tile, 0 benign tile; mask sources: None.
        mask_path: mask sources: the ``_tumor.png``.
        extra: mask sources: what :func:`pixel_target` needs beyond the mask.
    """

    source: str
    key: str
    path: Path
    mpp: float
    group: str
    label: Optional[int] = None
    mask_path: Optional[Path] = None
    extra: dict = field(default_factory=dict)


def _natural(s: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", s)]


def _meta(root: Path, src: RegionSource) -> dict:
    return json.loads((root / src.folder / "meta.json").read_text())


def items(name: str, root: Path | str = DEFAULT_ROOT) -> list[RegionItem]:
    """Every usable labelled image of source ``name`` in natural order (left-out classes dropped).

    Raises:
        FileNotFoundError: the source folder is missing.
    """
    root, src = Path(root), SOURCES[name]
    folder = root / src.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is missing: put the shared data beside the checkout (../shared/data).")
    out: list[RegionItem] = []
    if src.kind == "tiles":
        for cls, label in src.tile_classes.items():
            if label is None:
                continue
            for p in sorted((folder / cls).glob("*.jpg"), key=lambda p: _natural(p.name)):
                mpp = src.mpp
                if name == "oral_oscc":
                    mpp = 6.0 if "_100x_" in p.name else 1.8
                group = p.stem.split("-C")[0].split("-A")[0].split("-B")[0] if name == "osteosarcoma" else p.stem
                out.append(RegionItem(name, f"{name}_{cls}_{p.stem}", p, mpp, group, label=label))
        return out
    meta = _meta(root, src)
    for p in sorted(folder.glob("*.jpg"), key=lambda p: _natural(p.stem)):
        mask = p.with_name(f"{p.stem}_tumor.png")
        if not mask.is_file():
            continue
        extra, group = {}, p.stem
        if name == "ebhi":
            prefix = p.stem.split("_")[0]
            if prefix == "HGIN":
                continue
            extra["malignant"] = prefix == "ACA"
            group = p.stem.split("_", 1)[1].split("-")[0]
        elif name == "glas":
            info = meta["per_image"][p.stem]
            extra["malignant"] = info["grade"] == "malignant"
            group = f"patient{info['patient_id']}"
        elif name == "wsss4luad":
            extra["classes_path"] = str(p.with_name(f"{p.stem}_classes.png"))
        out.append(RegionItem(name, f"{name}_{p.stem}", p, src.mpp, group, mask_path=mask, extra=extra))
    return out


def white(rgb: np.ndarray) -> np.ndarray:
    """Glass / background: bright in every channel (3x3 median against JPEG noise)."""
    from scipy import ndimage as ndi

    m = (np.asarray(rgb) > WHITE).all(-1)
    return ndi.median_filter(m.astype(np.uint8), 3).astype(bool)


def pixel_target(item: RegionItem, rgb: np.ndarray, for_training: bool = True) -> np.ndarray:
    """(H, W) uint8 target at the image's own resolution: 1 tumor, 0 not, :data:`IGNORE`.

    ``for_training=False`` gives the evaluation target: the same except CAMELYON's edge band
    (an annotation artefact, not an unknown label) counts as annotated.
    """
    from PIL import Image
    from scipy import ndimage as ndi

    mask = np.asarray(Image.open(item.mask_path)) > 127
    t = mask.astype(np.uint8)
    if item.source == "camelyon" and for_training:
        r = max(int(round(3.0 / item.mpp)), 1)  # 3 um either side = a 6 um band
        band = ndi.binary_dilation(mask, iterations=r) & ~ndi.binary_erosion(mask, iterations=r)
        t[band] = IGNORE
    elif item.source == "wsss4luad":
        classes = np.asarray(Image.open(item.extra["classes_path"]))
        t[(classes == 2) & ~mask] = IGNORE  # tumor-associated stroma: tumor bed, not epithelium
    elif item.source in ("ebhi", "glas") and item.extra.get("malignant"):
        # Glands are tumor; the stroma between them is tumor bed the mask leaves out (and
        # some tumor glands are unannotated): unknown, except glass, which is no tissue.
        t = np.where(mask, 1, IGNORE).astype(np.uint8)
        t[white(rgb) & ~mask] = 0
    return t


def cell_truth(item: RegionItem, labels: np.ndarray):
    """Per-nucleus truth (the UAM paper's >50 % rule) against the source's tumor mask as drawn
    (epithelium-only sources: stromal cells between tumor glands are non-tumor cells)."""
    from PIL import Image

    from napari_uam.tumor import cells_in_mask

    mask = np.asarray(Image.open(item.mask_path)) > 127
    return cells_in_mask(labels, mask)


def iter_pretrain_images(root: Path | str = DEFAULT_ROOT) -> Iterator[tuple[str, Path, float]]:
    """(set name, path, mpp) of the nucleus-set images (unlabelled pretraining pool)."""
    root = Path(root)
    for folder, mpp in PRETRAIN_ONLY.items():
        d = root / folder
        if not d.is_dir():
            continue
        for p in sorted(d.glob("*.jpg"), key=lambda p: _natural(p.name)):
            m = mpp
            if folder == "cpm15":  # images 01-07 at 20x, 08-15 at 40x (meta.json)
                num = int(re.sub(r"\D", "", p.stem) or 0)
                m = 0.5 if num <= 7 else 0.25
            yield folder.replace("/", "_"), p, m
