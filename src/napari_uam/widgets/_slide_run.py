"""A whole slide from the dock: the command line's tiled run (:func:`napari_uam.batch.run_batch`)
in the dock's background worker, with tile progress and Cancel, its files in the export folder,
and the nuclei shown afterwards as a lazy multiscale labels layer read from the labels TIFF's
own pyramid, coloured by class as the patch results are. No Qt here: the dock starts
:func:`run_slide` and shows its outcome.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import pandas as pd

from ..batch import ImageStatus, run_batch
from ..batch.tiles import DEFAULT_TILE
from ..errors import UAMError
from ..io.export import output_paths
from ..io.pyramid import lazy_label_levels
from . import _display as D
from . import _layers as L
from ._worker import Outcome

#: The progress stage of a slide run (the dock's progress bar and status line know it).
STAGE = "slide"


@dataclass
class SlideJob:
    """A whole-slide run, captured in the GUI thread."""

    source: str  # the image layer's name
    path: Path  # the slide file the layer was opened from
    out_dir: Path
    mpp: float
    device: str
    backend: str
    model: Optional[str]
    tile: int = DEFAULT_TILE
    #: 1: the tiles run in napari's process. The command line's default on a GPU (a local Dask
    #: cluster, one worker per core) is not used from napari yet: untested inside a GUI process.
    workers: Optional[int] = 1
    action: str = "classify"
    notes: tuple = ()

    @property
    def stages(self) -> list[str]:
        return [STAGE]


@dataclass
class SlideOutcome(Outcome):
    """What a slide run gives the dock: the image's record and its labels as lazy levels."""

    status: Optional[ImageStatus] = None
    labels_path: Optional[Path] = None
    levels: Optional[list] = None
    colormap: object = None  # label -> class colour, from the cell table
    features: Optional[pd.DataFrame] = None  # the hover columns of every nucleus


def cell_display(parquet: Path) -> tuple:
    """``(features, colormap)`` for a slide's labels from its cell table, as the patch results
    show them: the hover columns only (label, class, tumor probability, area) and the class
    colours; ``(None, None)`` without a table."""
    import pyarrow.parquet as pq  # heavy

    if not parquet.is_file():
        return None, None
    schema = pq.read_schema(parquet)
    attrs = json.loads((schema.metadata or {}).get(b"napari_uam", b"{}")).get("attrs", {})
    wanted = ["label", *[c for c, _ in D.HOVER_COLUMNS if c in schema.names]]
    table = pd.read_parquet(parquet, columns=wanted)
    colormap = D.class_colormap(table, attrs.get("tumor_class") if "class" in table.columns else None)
    return L.to_features(table), colormap


def run_slide(job: SlideJob, cancelled, report) -> SlideOutcome:
    """Worker body: classify the slide tile by tile into ``job.out_dir``; ``report((STAGE,
    fraction))`` after each tile; ``cancelled()`` stops it after the current tile (nothing of
    the slide is written then). A slide already done in that folder is not recomputed."""
    result = run_batch(
        "classify",
        [job.path],
        job.out_dir,
        mpp=job.mpp,
        model=job.model,
        device=job.device,
        segmenter=job.backend,
        tile_size=job.tile,
        workers=job.workers,
        tile_progress=lambda done, n: report((STAGE, done / max(n, 1))),
        cancel=cancelled,
        argv=["napari dock: whole slide", str(job.path)],
    )
    status = result.images[0]
    if status.status == "failed":
        raise UAMError(f"{job.path.name}: {status.reason}")
    paths = output_paths(job.out_dir, status.stem)
    features, colormap = cell_display(paths["parquet"])
    return SlideOutcome(job=job, status=status, labels_path=paths["tif"], levels=lazy_label_levels(paths["tif"]),
                        colormap=colormap, features=features)  # fmt: skip


__all__ = ["STAGE", "SlideJob", "SlideOutcome", "run_slide"]
