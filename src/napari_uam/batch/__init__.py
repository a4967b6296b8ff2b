"""Cohort runs over many images: resumable, one manifest per run, one cohort table.

- :mod:`.runner`: :func:`run_batch` (what ``napari-uam classify / measure / segment`` calls),
  the plan of each image and the one-piece compute through :func:`napari_uam.pipeline.run`;
  large images go through :mod:`napari_uam.tiling`.
- :mod:`.folder`: the output folder's rules (done markers, staging, protected inputs, the
  cohort table).
- :mod:`.records`: the typed records passed between those steps.
- :mod:`.executors`: where image and tile tasks run (this process, or Dask workers).
"""

from .folder import (
    COHORT_NAME,
    COMMAND_FORMATS,
    COMMANDS,
    DONE_SUFFIX,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    collect_images,
    done_path,
    image_stem,
    read_done,
    write_cohort_table,
)
from .records import BatchArgumentError, BatchResult, ImageResult, ImageStatus, OutputOptions
from .runner import compute_image, run_batch

__all__ = [
    "COHORT_NAME",
    "COMMAND_FORMATS",
    "COMMANDS",
    "DONE_SUFFIX",
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA",
    "BatchArgumentError",
    "BatchResult",
    "ImageResult",
    "ImageStatus",
    "OutputOptions",
    "collect_images",
    "compute_image",
    "done_path",
    "image_stem",
    "read_done",
    "run_batch",
    "write_cohort_table",
]
