"""Build the cell tables of every cell source: shipped segmenter, schema v2, stain-augmented copies.

    python -m research.cells.build --out .gpu_data/cells [--sources consep ...] [--jobs 2] [--aug 2]

One parquet per source (``<out>/<source>.parquet``) and a JSON sidecar recording the schema id,
the segmenter weights' SHA-256 and the counts: a table made by another segmenter or schema is
rebuilt, never reused. Rows: one per labelled nucleus and copy (``aug`` 0 = the image itself,
1..n = stain-augmented copies measured on the same nuclei), columns::

    dataset, split, image, patient, label, y, x, area_um2, target, cell_class, aug, mpp,
    stain_h_r, stain_h_g, stain_h_b, stain_e_r, stain_e_g, stain_e_b, stain_max_h, stain_max_e,
    <schema v2 feature columns (float32)>
"""

from __future__ import annotations

import argparse
import json
import os
import time
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from napari_uam.domain import STAIN_COLUMNS  # one home: the trust model of fine-tuning reads them too
from napari_uam.radiomics.schema import SCHEMA_V2
from napari_uam.radiomics.stain_norm import estimate_stains

from .augment import hed_jitter
from .sources import DEFAULT_ROOT, SOURCES, CellImage, cell_labels, images, read_image


def segmenter_id() -> str:
    from napari_uam.segment.learned import weights_path
    from napari_uam.classify.checkpoint import file_sha256

    return file_sha256(weights_path())[:16]


def _stain_row(rgb: np.ndarray) -> list[float]:
    e = estimate_stains(rgb)
    return [*e.stains[0], *e.stains[1], *e.max_conc]


def image_table(ci: CellImage, n_aug: int, device: str = "cpu") -> pd.DataFrame | None:
    """Labelled nuclei of one image and its augmented copies (None: no tissue / nuclei)."""
    import torch

    from napari_uam import pipeline
    from napari_uam.errors import NoNucleiError

    torch.set_num_threads(1)
    rgb = read_image(ci)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            labels = pipeline.segment_nuclei(rgb, ci.mpp, device=device)
    except NoNucleiError:
        return None
    lab_df = cell_labels(ci, labels)
    if lab_df.empty:
        return None
    rng = np.random.default_rng(zlib.crc32(f"{ci.source}/{ci.image_id}".encode()))  # stable across runs
    parts = []
    for aug in range(n_aug + 1):
        img = rgb if aug == 0 else hed_jitter(rgb, rng)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            tab = pipeline.measure_cells(img, labels, ci.mpp, schema=SCHEMA_V2, device=device)
        tab = tab.merge(lab_df, on="label", how="inner")
        feats = tab[list(SCHEMA_V2.feature_names)].astype(np.float32)
        meta = pd.DataFrame({
            "dataset": ci.source, "split": ci.split, "image": ci.image_id, "patient": ci.patient,
            "label": tab["label"].to_numpy(np.int64), "y": tab["y"].to_numpy(float) + (ci.crop[0] if ci.crop else 0),
            "x": tab["x"].to_numpy(float) + (ci.crop[1] if ci.crop else 0), "area_um2": tab["area_um2"].to_numpy(float),
            "target": tab["target"].to_numpy(np.int64), "cell_class": tab["cell_class"].astype(str).to_numpy(),
            "aug": aug, "mpp": ci.mpp,
        })  # fmt: skip
        stain = pd.DataFrame([_stain_row(img)] * len(tab), columns=STAIN_COLUMNS)
        parts.append(pd.concat([meta, stain, feats.reset_index(drop=True)], axis=1))
    return pd.concat(parts, ignore_index=True)


def _job(args):
    ci, n_aug = args
    t = time.perf_counter()
    try:
        return ci.image_id, image_table(ci, n_aug), time.perf_counter() - t
    except Exception as err:  # one bad image must not cost the whole source; it is listed as skipped
        print(f"{ci.source}/{ci.image_id}: {type(err).__name__}: {err}", flush=True)
        return ci.image_id, None, time.perf_counter() - t


def build_source(source: str, out: Path, root: Path, n_aug: int, jobs: int, force: bool, log=print) -> Path:
    path = out / f"{source}.parquet"
    side = path.with_suffix(".json")
    seg = segmenter_id()
    if not force and path.is_file() and side.is_file():
        info = json.loads(side.read_text())
        if info.get("schema_id") == SCHEMA_V2.schema_id and info.get("segmenter") == seg and info.get("aug") == n_aug:
            log(f"{source}: cached {path}")
            return path
    work = [(ci, n_aug) for ci in images(source, root)]
    t0 = time.perf_counter()
    tables, skipped = [], []
    with ProcessPoolExecutor(jobs) as pool:
        for i, (name, tab, dt) in enumerate(pool.map(_job, work)):
            if tab is None:
                skipped.append(name)
            else:
                tables.append(tab)
            log(
                f"{source}: {i + 1}/{len(work)} {name} {0 if tab is None else int((tab['aug'] == 0).sum())} cells {dt:.1f}s"
            )
    table = pd.concat(tables, ignore_index=True)
    tmp = path.with_suffix(".parquet.tmp")
    table.to_parquet(tmp, index=False)
    os.replace(tmp, path)
    orig = table[table["aug"] == 0]
    info = {
        "source": source, "schema_id": SCHEMA_V2.schema_id, "segmenter": seg, "aug": n_aug,
        "n_cells": int(len(orig)), "n_images": int(orig["image"].nunique()), "n_tumor": int(orig["target"].sum()),
        "classes": {str(k): int(v) for k, v in orig["cell_class"].value_counts().items()},
        "skipped_images": skipped, "seconds": round(time.perf_counter() - t0, 1),
    }  # fmt: skip
    side.write_text(json.dumps(info, indent=1))
    log(f"{source}: {info['n_cells']} cells ({info['n_tumor']} tumor) from {info['n_images']} images -> {path}")
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    p.add_argument("--out", type=Path, default=Path(".gpu_data/cells"))
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--aug", type=int, default=2, help="stain-augmented copies per image")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--force", action="store_true")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    for s in a.sources:
        build_source(s, a.out, a.data, a.aug, a.jobs, a.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
