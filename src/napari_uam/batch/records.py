"""Typed records of a batch run: per-image status, the run's shared context, the plan of one
image, the picklable task configuration and one image's result."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from ..errors import UAMError

Progress = Optional[Callable[[str, str], None]]


class BatchArgumentError(UAMError):
    """The batch's arguments are unusable (no input, unknown format, clashing names)."""


@dataclass
class ImageStatus:
    """What a batch did with one image.

    Attributes:
        image: the input path.
        stem: its output stem.
        status: ``pending``, ``writing`` (outputs being renamed into place: a manifest left
            saying so belongs to a killed run), ``done``, ``skipped`` (done by an earlier run),
            ``failed`` or ``interrupted``.
        reason: one line saying why, for ``failed``.
        n_cells: nuclei found (also for skipped images, from their marker).
        n_tumor: nuclei classified as tumor (``classify`` only).
        seconds: time spent on the image in this run.
        outputs: output file names by kind.
        tumor_area_fraction: share of the image's pixels in the tumor-region mask
            (``classify`` with a tumor model; None otherwise).
    """

    image: str
    stem: str
    status: str = "pending"
    reason: str = ""
    n_cells: Optional[int] = None
    n_tumor: Optional[int] = None
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)
    tumor_area_fraction: Optional[float] = None


@dataclass
class BatchResult:
    """The outcome of :func:`run_batch`.

    Attributes:
        images: one status per input image, in input order.
        manifest_path: the run manifest written.
        cohort_path: the cohort table, or None when the command writes no parquet table.
    """

    images: list
    manifest_path: Path
    cohort_path: Optional[Path] = None

    def count(self, status: str) -> int:
        """Number of images with ``status``."""
        return sum(1 for s in self.images if s.status == status)

    @property
    def exit_code(self) -> int:
        """1 if any image failed, else 0."""
        return 1 if self.count("failed") else 0


@dataclass(frozen=True)
class OutputOptions:
    """How a run writes and tiles what it finds, beyond the formats.

    ``geojson_measurements``: what a nucleus' GeoJSON ``measurements`` hold (one of
    :data:`napari_uam.io.writers.GEOJSON_MEASUREMENTS`, or ``auto``: every measurement for an
    image processed in one piece, the summary for one processed in tiles, whose full GeoJSON
    would take about 20 KB per nucleus, gigabytes per slide). ``skip_background``: tiled
    images skip the tiles where tissue detection finds no tissue.
    """

    geojson_measurements: str = "auto"
    skip_background: bool = True

    def measurements(self, tiled: bool) -> str:
        if self.geojson_measurements != "auto":
            return self.geojson_measurements
        return "summary" if tiled else "all"


@dataclass
class RunContext:
    """What every step of one :func:`run_batch` call shares (was a 13-key dict)."""

    command: str
    out: Path
    formats: tuple
    mpp: Optional[float]
    clf: object
    model: object
    device: str
    segmenter: str
    radiomics_backend: str
    overwrite: bool
    labels_from_out: bool
    parameters: dict
    tile_size: Optional[int]
    executor: object
    save: Callable[[str], None]
    inputs: set
    options: OutputOptions = OutputOptions()
    #: Tiled images: ``tile_progress(done, n)`` after each tile, ``cancel()`` polled after each.
    tile_progress: Optional[Callable[[int, int], None]] = None
    cancel: Optional[Callable[[], bool]] = None


@dataclass
class ImagePlan:
    """How one image is processed, decided on the client before its pixels are decoded."""

    tiled: bool
    shape: tuple
    labels: Optional[np.ndarray] = None
    write_formats: tuple = ()
    labels_source: str = "segmented"
    mpp: Optional[float] = None  # tiled images only: the pixel size the tiles run at


@dataclass
class ComputeConfig:
    """What an image task needs (picklable: it travels to Dask workers)."""

    command: str
    mpp: Optional[float]
    segmenter: str
    radiomics_backend: str
    device: str
    model: object  # a loaded classifier in this process, else a checkpoint path or None


@dataclass
class ImageResult:
    """What :func:`compute_image` returns for one image processed in one piece."""

    labels: np.ndarray
    table: pd.DataFrame
    provenance: dict
    mpp: float
    timings: dict
    tumor_mask: Optional[np.ndarray]
    seconds: float
