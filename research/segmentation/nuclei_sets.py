"""Every labelled nucleus set of ``../shared/data`` behind one dataset layer.

A *source* is one folder of the shared data (one hospital / challenge / organ mix); each of
its images is a :class:`NucleusImage` with its own pixel size (CPM-15 mixes 20x and 40x), and
either a complete instance mask (``kind="instances"``) or one point per annotated cell
(``kind="points"``, BRCA-M2C). Leave-one-source-out (LOSO) folds are over these sources.

MoNuSAC is not a segmentation source: its masks merge touching nuclei of one class and leave
most stroma unlabelled (``../shared/data/README.md``), so its background is not background.

The same layout is read from ``../shared/data`` and from a packed copy made for the GPU
machine by :mod:`research.segmentation.pack` (same folder names, re-encoded JPEGs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

#: Where the shared data lie relative to the repository root.
DEFAULT_ROOT = Path(__file__).resolve().parents[2].parent / "shared" / "data"


@dataclass(frozen=True)
class NucleusSource:
    """One labelled nucleus set.

    Attributes:
        name: LOSO key (the folder name, ``brca_m2c`` for both BRCA-M2C splits).
        folders: folders under the data root holding its images.
        kind: "instances" (complete masks) or "points" (one point per cell).
        organ: organ(s), for tables.
        licence: as stated by the source (see docs/licences.md).
    """

    name: str
    folders: tuple[str, ...]
    kind: str
    organ: str
    licence: str


SOURCES: dict[str, NucleusSource] = {
    s.name: s
    for s in (
        NucleusSource("consep", ("consep",), "instances", "colon", "research use, cite HoVer-Net"),
        NucleusSource("monuseg", ("monuseg",), "instances", "7 organs (TCGA, 18 hospitals)", "CC BY-NC-SA 4.0"),
        NucleusSource("cpm15", ("cpm15",), "instances", "brain, head & neck (TCGA)", "research use (MICCAI 2015)"),
        NucleusSource("gbm40", ("gbm40",), "instances", "brain (Emory)", "not stated (research use)"),
        NucleusSource("tcga_lgg", ("tcga_lgg",), "instances", "brain (TCGA LGG)", "not stated (research use)"),
        NucleusSource("dsb2018_he", ("dsb2018_he",), "instances", "mixed (DSB 2018)", "CC0 (BBBC038)"),
        NucleusSource("puma", ("puma",), "instances", "melanoma", "CC0-1.0"),
        NucleusSource("brca_m2c", ("brca_m2c/train", "brca_m2c/val"), "points", "breast (TCGA)", "BSD-3-Clause"),
    )
}


@dataclass(frozen=True)
class NucleusImage:
    """One image of a nucleus source.

    Attributes:
        source: the :class:`NucleusSource` name.
        image_id: file stem.
        path: the ``.jpg`` image.
        mpp: its pixel size in um/px (from ``meta.json``; an estimate where it says so).
        kind: "instances" or "points".
        split: "train" / "val" for BRCA-M2C (val never trains the shipped model), else "all".
    """

    source: str
    image_id: str
    path: Path
    mpp: float
    kind: str
    split: str = "all"

    def rgb(self) -> np.ndarray:
        """(H, W, 3) uint8 RGB."""
        return np.array(Image.open(self.path).convert("RGB"))

    def instances(self) -> np.ndarray:
        """(H, W) int32 instance map (``kind == "instances"``)."""
        return np.asarray(Image.open(self.path.with_name(self.image_id + "_inst.png"))).astype(np.int32)

    def points(self) -> np.ndarray:
        """(N, 2) float (y, x) annotated cells (``kind == "points"``)."""
        p = self.path.with_name(self.image_id + "_points.csv")
        return np.loadtxt(p, delimiter=",", skiprows=1, usecols=(0, 1), ndmin=2).reshape(-1, 2)


def _mpp_of(meta: dict, image_id: str) -> float:
    """Pixel size of one image from its folder's ``meta.json``."""
    mpp = meta.get("mpp", 0.25)
    if isinstance(mpp, dict):  # CPM-15: {"image01-07": 0.5, "image08-15": 0.25}
        num = int("".join(ch for ch in image_id if ch.isdigit()) or 0)
        for key, value in mpp.items():
            lo, _, hi = key.replace("image", "").partition("-")
            if int(lo) <= num <= int(hi or lo):
                return float(value)
        raise ValueError(f"no pixel size for {image_id} in {mpp}")
    if isinstance(mpp, str):  # "~0.25 (...)"
        return float(mpp.strip("~ ").split()[0])
    return float(mpp)


def images(source: str, root: Path | str = DEFAULT_ROOT) -> list[NucleusImage]:
    """Every image of ``source`` under ``root`` (empty when its folder is absent)."""
    src = SOURCES[source]
    root = Path(root)
    out = []
    for folder in src.folders:
        d = root / folder
        if not d.is_dir():
            continue
        meta_path = d / "meta.json"
        if not meta_path.exists():
            meta_path = d.parent / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
        # BRCA-M2C is 20x (0.5 um/px) and its folder has no meta.json of its own.
        default = 0.5 if src.name == "brca_m2c" else None
        split = Path(folder).name if src.name == "brca_m2c" else "all"
        for jpg in sorted(d.glob("*.jpg")):
            stem = jpg.stem
            need = stem + ("_inst.png" if src.kind == "instances" else "_points.csv")
            if not (d / need).exists():
                continue
            mpp = default if default is not None and "mpp" not in meta else _mpp_of(meta, stem)
            out.append(NucleusImage(src.name, stem, jpg, mpp, src.kind, split))
    return out


def available_sources(root: Path | str = DEFAULT_ROOT) -> list[str]:
    """Names of the sources with at least one image under ``root``."""
    return [name for name in SOURCES if images(name, root)]
