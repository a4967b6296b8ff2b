"""Annotation project folders: one annotated image saved so it can be reloaded and trained on.

A project folder holds::

    project.json    format id + version, name, pixel size, image shape, class counts, created
    image.tif       (H, W, 3) uint8 RGB image
    nuclei.tif      (H, W) int32 nuclei labels (0 = background)
    cells.parquet   the cell table: label, y, x, ..., class, annotation (+ features if measured)
    region.tif      optional (H, W) uint8 tumor-region mask (255 = tumor)

Saving is atomic for the folder as a whole: everything is written into a hidden temporary
folder beside the target, which is then renamed into place, so an interrupted save never
leaves a half-written project (and never damages the previous one). An existing project is
only replaced with ``overwrite=True``.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
import tifffile

from ..annotation import counts
from ..errors import UAMError
from ..pixel_size import check_mpp

FORMAT = "napari-uam/annotation-project"
FORMAT_VERSION = 1
MANIFEST = "project.json"
_FILES = {"image": "image.tif", "labels": "nuclei.tif", "table": "cells.parquet", "region": "region.tif"}


class ProjectError(UAMError):
    """A project folder is missing, incomplete, of another format or inconsistent."""


@dataclass
class Project:
    """One annotated image.

    Attributes:
        name: project (image) name.
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int32 nuclei.
        table: cell table, one row per nucleus (``class`` / ``annotation`` columns).
        mpp: pixel size in um/px.
        region: optional (H, W) bool tumor region.
        meta: the manifest (``project.json``) contents.
        path: folder it was loaded from (None when built in memory).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    table: pd.DataFrame
    mpp: float
    region: Optional[np.ndarray] = None
    meta: dict = field(default_factory=dict)
    path: Optional[Path] = None


def _check(image, labels, table, region) -> None:
    image, labels = np.asarray(image), np.asarray(labels)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ProjectError(f"A project image must be (H, W, 3) uint8 RGB, not {image.shape} {image.dtype}.")
    if labels.shape != image.shape[:2]:
        raise ProjectError(f"The nuclei ({labels.shape}) and the image ({image.shape[:2]}) differ in size.")
    if region is not None and np.shape(region) != image.shape[:2]:
        raise ProjectError(f"The region mask ({np.shape(region)}) and the image ({image.shape[:2]}) differ in size.")
    ids = np.unique(labels)
    ids = set(ids[ids > 0].tolist())
    have = set(table["label"].astype(np.int64).tolist()) if "label" in table.columns else set()
    if ids != have:
        raise ProjectError(
            f"The cell table does not match the nuclei ({len(ids - have)} nuclei without a row, "
            f"{len(have - ids)} rows without a nucleus); sync the table with the labels first."
        )


def save_project(
    folder,
    image: np.ndarray,
    labels: np.ndarray,
    table: pd.DataFrame,
    mpp: float,
    *,
    name: Optional[str] = None,
    region: Optional[np.ndarray] = None,
    overwrite: bool = False,
    extra: Optional[dict] = None,
) -> Path:
    """Write a project folder atomically.

    Args:
        folder: destination folder (created; its parent must be writable).
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) int nuclei labels.
        table: one row per nucleus of ``labels`` (``label`` column).
        mpp: pixel size of ``image``.
        name: project name (default: the folder name).
        region: optional tumor-region mask.
        overwrite: replace an existing folder; otherwise :class:`FileExistsError`.
        extra: more manifest entries (e.g. the model that predicted the classes).

    Returns:
        The project folder.
    """
    folder = Path(folder)
    _check(image, labels, table, region)
    if folder.exists() and not overwrite:
        raise FileExistsError(f"{folder} exists; choose another folder or allow overwriting.")
    if folder.exists() and not (folder / MANIFEST).is_file():
        raise ProjectError(
            f"{folder} exists and is not a napari-uam project; it is never replaced. Choose another folder."
        )
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        tifffile.imwrite(tmp / _FILES["image"], np.asarray(image, np.uint8), photometric="rgb")
        tifffile.imwrite(tmp / _FILES["labels"], np.asarray(labels, np.int32))
        tab = table.copy()
        tab.attrs = {}
        tab.to_parquet(tmp / _FILES["table"], index=False)
        if region is not None:
            tifffile.imwrite(tmp / _FILES["region"], (np.asarray(region) > 0).astype(np.uint8) * 255)
        meta = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "name": name or folder.name,
            "mpp": float(mpp),
            "shape": list(np.shape(labels)),
            "n_cells": int(len(table)),
            "classes": counts(table),
            "schema_id": table.attrs.get("schema_id"),
            "has_region": region is not None,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            **(extra or {}),
        }
        (tmp / MANIFEST).write_text(json.dumps(meta, indent=1, default=str))
        for f in tmp.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        os.chmod(tmp, 0o755)  # mkdtemp makes 0700; a project is shared like any saved file
        if folder.exists():
            old = folder.with_name(f".{folder.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(folder, old)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder


def is_project(folder) -> bool:
    """True when ``folder`` holds a project manifest."""
    return (Path(folder) / MANIFEST).is_file()


def find_projects(path) -> list[Path]:
    """The project folders at ``path``: itself if it is one, else its sub-folders that are (sorted).

    Raises:
        ProjectError: ``path`` holds no project.
    """
    path = Path(path)
    if is_project(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and is_project(p)) if path.is_dir() else []
    if not found:
        raise ProjectError(
            f"No napari-uam annotation project in {path}: choose a folder saved with 'Save project' "
            "(it holds project.json) or a folder of such folders."
        )
    return found


def load_project(folder) -> Project:
    """Read a project folder written by :func:`save_project`.

    Raises:
        ProjectError: not a project, of an unknown format version, a file missing or
            the files disagreeing with each other.
    """
    folder = Path(folder)
    if not is_project(folder):
        raise ProjectError(f"{folder} is not a napari-uam annotation project (no {MANIFEST}).")
    try:
        meta = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError) as err:
        raise ProjectError(f"Cannot read {folder / MANIFEST}: {err}") from err
    if not isinstance(meta, dict):
        raise ProjectError(
            f"{folder / MANIFEST} holds a {type(meta).__name__}, not a project description; the "
            "project is damaged. Save it again from the Annotate dock."
        )
    if meta.get("format") != FORMAT:
        raise ProjectError(f"{folder} is of format {meta.get('format')!r}, not {FORMAT!r}.")
    if meta.get("format_version") != FORMAT_VERSION:
        raise ProjectError(
            f"{folder} is a version {meta.get('format_version')!r} project; this napari-uam reads "
            f"version {FORMAT_VERSION}. Upgrade napari-uam."
        )
    for key in ("image", "labels", "table"):
        if not (folder / _FILES[key]).is_file():
            raise ProjectError(f"{folder} lacks {_FILES[key]}; the project is incomplete. Save it again.")
    try:
        mpp = check_mpp(meta.get("mpp"))
    except UAMError as err:
        raise ProjectError(f"{folder / MANIFEST}: {err}") from None

    def read(key, fn):
        try:
            return fn(folder / _FILES[key])
        except Exception as err:  # truncated or overwritten file: one line naming it
            raise ProjectError(
                f"Cannot read {folder / _FILES[key]} ({type(err).__name__}: {' '.join(str(err).split())[:160]}); "
                "the project is damaged. Save it again from the Annotate dock."
            ) from None

    image = read("image", tifffile.imread)
    labels = read("labels", tifffile.imread).astype(np.int32)
    table = read("table", pd.read_parquet)
    if meta.get("schema_id"):
        table.attrs["schema_id"] = meta["schema_id"]
    region = None
    if (folder / _FILES["region"]).is_file():
        region = read("region", tifffile.imread) > 0
    _check(image, labels, table, region)
    return Project(
        name=str(meta.get("name") or folder.name), image=image, labels=labels, table=table,
        mpp=mpp, region=region, meta=meta, path=folder,
    )  # fmt: skip
