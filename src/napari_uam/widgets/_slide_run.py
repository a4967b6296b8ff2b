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


def class_colours(parquet: Path):
    """The patch results' class colours for a slide's labels, from its cell table (only the
    label and class columns are read); None without a table."""
    import pyarrow.parquet as pq  # heavy

    if not parquet.is_file():
        return None
    meta = pq.read_schema(parquet).metadata or {}
    attrs = json.loads(meta.get(b"napari_uam", b"{}")).get("attrs", {})
    table = pd.read_parquet(parquet, columns=["label", "class"])
    return D.class_colormap(table, attrs.get("tumor_class"))


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
        tile_progress=lambda done, n: report((STAGE, done / max(n, 1))),
        cancel=cancelled,
        argv=["napari dock: whole slide", str(job.path)],
    )
    status = result.images[0]
    if status.status == "failed":
        raise UAMError(f"{job.path.name}: {status.reason}")
    paths = output_paths(job.out_dir, status.stem)
    return SlideOutcome(job=job, status=status, labels_path=paths["tif"], levels=lazy_label_levels(paths["tif"]),
                        colormap=class_colours(paths["parquet"]))  # fmt: skip


__all__ = ["STAGE", "SlideJob", "SlideOutcome", "run_slide"]
