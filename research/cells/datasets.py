"""Per-cell training tables built from the real H&E data in ``../shared/data``.

One parquet table per dataset (``<out>/<dataset>.parquet`` with a ``<dataset>.json`` sidecar
holding the schema id and counts), one row per labelled cell, columns::

    dataset, split, image, patient, label, y, x, target, cell_class, <schema.feature_names...>

``target`` is 1 for tumor, 0 for non-tumor; ``cell_class`` the dataset's own class name;
``y, x`` the nucleus centroid in the original image's pixels; ``label`` its id in the label map
features were measured on. Sources:

* CoNSeP: ground-truth instance masks and classes; tumor proxy ``epithelial`` (meta.json's
  ``tumor_classes``). One patient per image (the source does not say more), so splits are by image.
* BRCA-M2C: one annotated point per cell and no masks. Nuclei are segmented with
  :func:`napari_uam.segment.segment` and matched one-to-one to points within 3 um
  (:func:`napari_uam.segment.metrics.match_points`); unmatched nuclei have no label and are
  dropped. Patient = TCGA id (first 12 characters of the image name); its train/val split is
  patient-disjoint.
* Region masks (:func:`napari_uam.tumor.cells_in_mask`): a nucleus is tumor when more than 50 % of its pixels lie
  in the tumor region (the UAM paper's rule).

Features are measured at the schema's pixel size: images are resampled with
:func:`napari_uam.scale.rescale_image` and label maps with :func:`napari_uam.scale.resize_labels`
(nuclei that vanish at the coarser scale are dropped).

Build the tables (cached: a table whose sidecar has the same schema id is not rebuilt)::

    python -m research.cells.datasets --data ../shared/data --out runs/cell_tables
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[2]
#: Where the shared real data lives beside a checkout.
DEFAULT_DATA = REPO.parent / "shared" / "data"
#: Default cache of cell tables (git-ignored).
DEFAULT_TABLES = REPO / "runs" / "cell_tables"
#: Non-feature columns of a cell table.
META_COLUMNS = ["dataset", "split", "image", "patient", "label", "y", "x", "target", "cell_class"]
#: Largest distance (um) between an annotated point and a nucleus centroid to match them.
MATCH_RADIUS_UM = 3.0
DATASETS = ("consep", "brca_m2c")


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _read_labels(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im).astype(np.int32)


def features_at_schema_scale(image: np.ndarray, labels: np.ndarray, mpp: float, schema=None) -> pd.DataFrame:
    """Radiomics of every nucleus, measured after resampling to ``schema.mpp``.

    Args:
        image: (H, W, 3) uint8 RGB at ``mpp`` um/px.
        labels: (H, W) int instance map at ``mpp``.
        mpp: pixel size of the inputs.
        schema: feature schema (None -> default).

    Returns:
        DataFrame indexed by label (labels that vanish when resampled are absent).
    """
    from napari_uam.radiomics import extract, get_schema
    from napari_uam.scale import rescale_image, resize_labels, scale_factor

    schema = get_schema(schema)
    f = scale_factor(mpp, schema.mpp)
    img = rescale_image(image, f)
    lab = resize_labels(labels, img.shape[:2])
    return extract(img, lab, schema=schema, device="cpu")


def _meta(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def consep_image_table(consep_dir: Path, image_id: str, schema=None) -> pd.DataFrame:
    """Cell table of one CoNSeP image (ground-truth masks and classes)."""
    consep_dir = Path(consep_dir)
    meta = _meta(consep_dir)
    image = _read_rgb(consep_dir / f"{image_id}.jpg")
    labels = _read_labels(consep_dir / f"{image_id}_inst.png")
    cells = pd.read_csv(consep_dir / f"{image_id}_cells.csv").set_index("label")
    feats = features_at_schema_scale(image, labels, meta["mpp"], schema)
    cells = cells.loc[cells.index.intersection(feats.index)]
    feats = feats.loc[cells.index]
    meta_df = pd.DataFrame({
        "dataset": "consep", "split": "train", "image": image_id, "patient": image_id,
        "label": cells.index.to_numpy(np.int64), "y": cells["y"].to_numpy(float),
        "x": cells["x"].to_numpy(float),
        "target": cells["class"].isin(meta["tumor_classes"]).to_numpy(np.int64),
        "cell_class": cells["class"].astype(str).to_numpy(),
    })  # fmt: skip
    return pd.concat([meta_df, feats.reset_index(drop=True)], axis=1)


def brca_image_table(image_path: Path, schema=None) -> pd.DataFrame:
    """Cell table of one BRCA-M2C image: segmented nuclei matched to the annotated points."""
    from napari_uam.segment import segment
    from napari_uam.segment.metrics import centroids, match_points

    image_path = Path(image_path)
    folder = image_path.parent
    meta = _meta(folder)
    mpp = float(meta["mpp"])
    image = _read_rgb(image_path)
    points = pd.read_csv(folder / f"{image_path.stem}_points.csv")
    labels = segment(image, mpp)
    ids = np.unique(labels)
    ids = ids[ids > 0]
    cents = centroids(labels)  # rows in increasing id order
    pi, ti = match_points(cents, points[["y", "x"]].to_numpy(float), MATCH_RADIUS_UM / mpp)
    matched = pd.DataFrame({
        "label": ids[pi], "y": cents[pi, 0], "x": cents[pi, 1],
        "cell_class": points["class"].to_numpy()[ti].astype(str),
    }).set_index("label")  # fmt: skip
    feats = features_at_schema_scale(image, labels, mpp, schema)
    matched = matched.loc[matched.index.intersection(feats.index)]
    feats = feats.loc[matched.index]
    name = image_path.stem
    meta_df = pd.DataFrame({
        "dataset": "brca_m2c", "split": folder.name, "image": name, "patient": name[:12],
        "label": matched.index.to_numpy(np.int64), "y": matched["y"].to_numpy(float),
        "x": matched["x"].to_numpy(float),
        "target": matched["cell_class"].isin(meta["tumor_classes"]).to_numpy(np.int64),
        "cell_class": matched["cell_class"].to_numpy(),
    })  # fmt: skip
    return pd.concat([meta_df, feats.reset_index(drop=True)], axis=1)


def _jobs_for(dataset: str, data_dir: Path, limit: int | None):
    if dataset == "consep":
        folder = data_dir / "consep"
        ids = sorted((p.name[: -len("_inst.png")] for p in folder.glob("*_inst.png")), key=_natural)
        return [(consep_image_table, (folder, i)) for i in ids[:limit]]
    if dataset == "brca_m2c":
        paths = []
        for split in ("train", "val"):
            found = sorted((data_dir / "brca_m2c" / split).glob("*.jpg"))
            paths += found[:limit]
        return [(brca_image_table, (p,)) for p in paths]
    raise ValueError(f"Unknown dataset {dataset!r}; known: {', '.join(DATASETS)}.")


def _natural(s: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s)]


def _run(job):
    fn, args, schema_id = job
    return fn(*args, schema=schema_id)


def build_table(
    dataset: str, data_dir=None, schema=None, jobs: int = 1, limit: int | None = None, progress=None
) -> pd.DataFrame:
    """Build the cell table of one dataset (not cached; see :func:`build_tables`).

    Args:
        dataset: ``"consep"`` or ``"brca_m2c"``.
        data_dir: the shared data folder (default ``<repo>/../shared/data``).
        schema: feature schema (None -> default).
        jobs: worker processes.
        limit: only the first ``limit`` images (of each split), for tests.
        progress: callable(done, total, image) after each image.
    """
    from napari_uam.radiomics import get_schema

    schema = get_schema(schema)
    data_dir = Path(data_dir or DEFAULT_DATA)
    work = [(fn, args, schema.schema_id) for fn, args in _jobs_for(dataset, data_dir, limit)]
    tables = []
    if jobs <= 1:
        results = map(_run, work)
    else:
        pool = ProcessPoolExecutor(jobs)
        results = pool.map(_run, work)
    for i, df in enumerate(results):
        tables.append(df)
        if progress is not None:
            progress(i + 1, len(work), str(df["image"].iloc[0]) if len(df) else "")
    if jobs > 1:
        pool.shutdown()
    table = pd.concat(tables, ignore_index=True)
    table.attrs["schema_id"] = schema.schema_id
    return table


def table_path(out_dir, dataset: str) -> Path:
    return Path(out_dir) / f"{dataset}.parquet"


def build_tables(
    data_dir=None, out_dir=None, schema=None, datasets=DATASETS, jobs: int = 1, force: bool = False, log=print
) -> dict:
    """Build (or reuse) the parquet table of each dataset; returns dataset -> path."""
    from napari_uam.radiomics import get_schema

    schema = get_schema(schema)
    out_dir = Path(out_dir or DEFAULT_TABLES)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for ds in datasets:
        path = table_path(out_dir, ds)
        side = path.with_suffix(".json")
        if not force and path.is_file() and side.is_file():
            if json.loads(side.read_text()).get("schema_id") == schema.schema_id:
                log(f"{ds}: cached {path}")
                paths[ds] = path
                continue
        t0 = time.perf_counter()
        table = build_table(
            ds, data_dir, schema, jobs,
            progress=lambda i, n, img: log(f"{ds}: {i}/{n} {img}") if log else None,
        )  # fmt: skip
        tmp = path.with_suffix(".parquet.tmp")
        table.to_parquet(tmp, index=False)
        os.replace(tmp, path)
        summary = {
            "dataset": ds, "schema_id": schema.schema_id, "n_cells": int(len(table)),
            "n_images": int(table["image"].nunique()), "n_tumor": int(table["target"].sum()),
            "classes": {str(k): int(v) for k, v in table["cell_class"].value_counts().items()},
            "seconds": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        side.write_text(json.dumps(summary, indent=1))
        log(f"{ds}: {summary['n_cells']} cells from {summary['n_images']} images -> {path}")
        paths[ds] = path
    return paths


def load_table(tables_dir, dataset: str, schema=None) -> pd.DataFrame:
    """Read a cached table and check it was measured with ``schema``.

    Raises:
        FileNotFoundError: table absent (build it with the CLI).
        SchemaMismatchError: table of another schema.
    """
    from napari_uam.errors import SchemaMismatchError
    from napari_uam.radiomics import get_schema

    schema = get_schema(schema)
    path = table_path(tables_dir, dataset)
    if not path.is_file():
        raise FileNotFoundError(
            f"No cell table {path}; build it with `python -m research.cells.datasets --out {tables_dir}`."
        )
    side = path.with_suffix(".json")
    sid = json.loads(side.read_text()).get("schema_id") if side.is_file() else None
    table = pd.read_parquet(path)
    missing = [f for f in schema.feature_names if f not in table.columns]
    if (sid is not None and sid != schema.schema_id) or missing:
        raise SchemaMismatchError(
            f"Cell table {path} was built with schema {sid!r}, not {schema.schema_id!r}; rebuild it."
        )
    table.attrs["schema_id"] = schema.schema_id
    return table


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns of a cell table (everything but :data:`META_COLUMNS`)."""
    return [c for c in table.columns if c not in META_COLUMNS]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Build per-cell radiomics tables from the shared H&E data.")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (default ../shared/data)")
    p.add_argument("--out", default=str(DEFAULT_TABLES), help="output folder (default runs/cell_tables)")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    p.add_argument("--jobs", type=int, default=max(1, (os.cpu_count() or 2) - 0))
    p.add_argument("--force", action="store_true", help="rebuild even when cached")
    a = p.parse_args(argv)
    build_tables(a.data, a.out, None, a.datasets, a.jobs, a.force)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
