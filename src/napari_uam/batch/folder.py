"""The output folder of a batch run: which files are inputs, outputs, done markers, staging
left by a killed run, the cohort table; nothing here computes."""

from __future__ import annotations

import glob
import json
import shutil
from pathlib import Path
from typing import Iterable, Optional, Sequence

import numpy as np
import pandas as pd
import tifffile

from ..io.atomic import atomic_path
from ..io.atomic import remove_output
from ..io.export import DEFAULT_FORMATS, FORMATS, TUMOR_OUTPUTS, output_paths, output_stem
from ..io.reader import IMAGE_SUFFIXES
from .records import BatchArgumentError

#: The batch commands, in pipeline order.
COMMANDS = ("segment", "measure", "classify")


#: Output kinds each command writes (``classify`` may be narrowed with ``formats``).
COMMAND_FORMATS = {
    "segment": ("tif",),
    "measure": ("tif", "csv", "parquet"),
    "classify": DEFAULT_FORMATS,
}


MANIFEST_NAME = "napari_uam_run.json"


COHORT_NAME = "cohort_cells.parquet"


DONE_SUFFIX = ".done.json"


#: Identifies the layout of the manifest and of the done markers, for scripts reading them.
MANIFEST_SCHEMA = "napari-uam-run/1"


def image_stem(path) -> str:
    """File-name stem of an image's outputs (see :func:`napari_uam.io.export.output_stem`)."""

    return output_stem(Path(path).name)


def _is_image_name(name: str) -> bool:
    low = name.lower()
    return low.endswith(IMAGE_SUFFIXES)


def _own_output(path: Path, out_dir: Optional[Path]) -> bool:
    """True for a label TIFF this tool wrote into ``out_dir`` (never an input image)."""
    if out_dir is None or path.parent.resolve() != out_dir.resolve():
        return False
    # Named like an output *and* a label image: an H&E input named ``a_nuclei.tif`` is an input.
    return path.name.endswith(("_nuclei.tif", "_tumor_mask.tif")) and _is_label_tiff(path)


def collect_images(inputs: Iterable, out_dir=None) -> list[Path]:
    """Expand files, globs and folders into the list of images to process.

    Args:
        inputs: file paths, glob patterns (``*``, ``?``, ``[``; ``**`` recurses) or folders.
            A folder stands for its TIFF/OME-TIFF, slide (SVS, NDPI, MRXS, ...), PNG and JPEG
            files (not recursive, hidden files left out), sorted by name.
        out_dir: the output folder; label TIFFs written there by an earlier run are left out,
            so that a run whose output folder is its input folder does not take its own
            outputs for images.

    Returns:
        The image paths in input order, each once.

    Raises:
        BatchArgumentError: an input that is neither a file, a folder nor a matching glob,
            or a folder without images.
    """
    out = Path(out_dir) if out_dir is not None else None
    found: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files = sorted(
                f
                for f in p.iterdir()
                if f.is_file() and not f.name.startswith(".") and _is_image_name(f.name) and not _own_output(f, out)
            )
            if not files:
                raise BatchArgumentError(f"{p}: the folder holds no TIFF, PNG or JPEG image.")
            found.extend(files)
        elif p.is_file():
            found.append(p)
        elif glob.has_magic(str(item)):
            files = sorted(
                Path(f)
                for f in glob.glob(str(item), recursive=True)
                if Path(f).is_file() and _is_image_name(f) and not _own_output(Path(f), out)
            )
            if not files:
                raise BatchArgumentError(f"{item}: no TIFF, PNG or JPEG image matches this pattern.")
            found.extend(files)
        else:
            raise BatchArgumentError(f"{item}: no such file or folder.")
    unique: list[Path] = []
    seen: set[Path] = set()
    for f in found:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


def done_path(out_dir, stem: str) -> Path:
    """The marker that says an image's outputs are complete."""
    return Path(out_dir) / f"{stem}{DONE_SUFFIX}"


def read_done(out_dir, stem: str, command: str, formats: Sequence[str]) -> Optional[dict]:
    """The done marker of an image if its requested outputs are complete, else None.

    Args:
        out_dir: output folder.
        stem: the image's output stem.
        command: ``segment``, ``measure`` or ``classify``: a marker written by another
            command does not count (a ``measure`` table has no classes).
        formats: the output kinds this run asks for.
    """
    marker = done_path(out_dir, stem)
    try:
        info = json.loads(marker.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or info.get("command") != command:
        return None
    outputs = info.get("outputs") or {}
    if not set(formats) <= set(outputs):
        return None
    paths = output_paths(out_dir, stem)
    # The tumor outputs the marker lists must still be there too.
    kinds = list(formats) + [k for k in TUMOR_OUTPUTS if k in outputs]
    if not all(paths[k].exists() for k in kinds):  # a file, or a folder (OME-Zarr)
        return None
    return info


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=str) + "\n")


def _remove_stale_staging(out_dir: Path, stem: str) -> None:
    """Remove what a run killed by a signal left in ``out_dir`` for this image.

    A SIGKILL skips the ``finally`` blocks that normally remove the export's staging folder
    and the marker's temporary file; both carry the stem in hidden names only this package
    writes.
    """
    for leftover in out_dir.glob(f".{glob.escape(stem)}.export.*"):
        if leftover.is_dir():
            shutil.rmtree(leftover, ignore_errors=True)
    for leftover in out_dir.glob(f".{glob.escape(stem + DONE_SUFFIX)}.*.tmp"):
        leftover.unlink(missing_ok=True)


def _is_own_manifest(path: Path) -> Optional[dict]:
    """The manifest at ``path`` if napari-uam wrote it, else None."""
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) and info.get("schema") == MANIFEST_SCHEMA else None


def _is_own_cohort(path: Path) -> bool:
    """Whether the parquet file at ``path`` is a cohort table napari-uam wrote."""
    import pyarrow.parquet as pq

    try:
        return b"napari_uam_cohort" in (pq.read_schema(path).metadata or {})
    except Exception:  # not a parquet file at all
        return False


def _refuse_foreign_run_files(out: Path) -> None:
    """Refuse to replace a manifest or cohort table in ``out`` that napari-uam did not write."""
    for name, own in ((MANIFEST_NAME, _is_own_manifest), (COHORT_NAME, _is_own_cohort)):
        path = out / name
        if path.exists() and not own(path):
            raise BatchArgumentError(
                f"{path} exists and was not written by napari-uam; it is not replaced. Move it, "
                "choose another --out folder, or pass --overwrite to replace it."
            )


def _is_label_tiff(path: Path) -> bool:
    """Whether ``path`` is a label / mask TIFF as napari-uam writes them: one 2-D unsigned plane.

    An H&E image has colour channels, so an input that happens to be named like an output
    (``a_nuclei.tif``) is told apart by its content, not its name.
    """

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            return len(series.shape) == 2 and np.dtype(series.dtype).kind == "u"
    except Exception:  # unreadable: not ours to judge, and never replaced
        return False


def _protected_targets(out: Path, stem: str, kinds, inputs: set) -> list[Path]:
    """Output paths of ``stem`` that exist and must never be replaced: inputs of this run,
    and TIFFs that are not napari-uam label images (an H&E file named ``a_nuclei.tif``)."""
    paths = output_paths(out, stem)
    bad = []
    for kind in kinds:
        p = paths[kind]
        if not p.exists():
            continue
        if p.resolve() in inputs or (p.suffix.lower() in (".tif", ".tiff") and not _is_label_tiff(p)):
            bad.append(p)
    return bad


def _clear_killed_writes(out: Path, previous: Optional[dict], command: str, inputs: set) -> None:
    """Remove the outputs a killed run was renaming into place when it died.

    Before renaming an image's outputs, the manifest records the image as ``writing`` with
    their names; the done marker follows the renames. A run killed in between (SIGKILL)
    leaves outputs without a marker, which a plain rerun would refuse to overwrite. They are
    this tool's own files (the manifest says so), so the rerun removes them and redoes the
    image. Files the killed run did not list, and images with a marker, are left alone.
    """
    if previous is None:
        return
    for img in previous.get("images") or []:
        if not isinstance(img, dict) or img.get("status") != "writing":
            continue
        stem = str(img.get("stem") or "")
        if (
            not stem
            or done_path(out, stem).exists()
            and read_done(out, stem, command, [k for k in (img.get("outputs") or {}) if k in FORMATS]) is not None
        ):
            continue
        own = output_paths(out, stem)
        kinds = [k for k, name in (img.get("outputs") or {}).items() if k in own and own[k].name == name]
        # Even here an input, or a TIFF that is not a label image, is never removed.
        keep = set(_protected_targets(out, stem, kinds, inputs))
        for kind in kinds:
            if own[kind] not in keep:
                remove_output(own[kind])
        done_path(out, stem).unlink(missing_ok=True)


def _finished_elsewhere(out: Path, command: str, stems: set) -> list[tuple[str, Path]]:
    """``(stem, parquet)`` of every image in ``out`` finished by an earlier ``command`` run and
    not part of this run, so that the cohort table always covers the whole folder."""
    parts = []
    for marker in sorted(out.glob(f"*{DONE_SUFFIX}")):
        stem = marker.name[: -len(DONE_SUFFIX)]
        if stem in stems or marker.name.startswith("."):
            continue
        if read_done(out, stem, command, ["parquet"]) is not None:
            parts.append((stem, output_paths(out, stem)["parquet"]))
    return parts


def _tumor_count(table: Optional[pd.DataFrame]) -> Optional[int]:
    if table is None or "class" not in table.columns:
        return None
    return int((table["class"] == table.attrs.get("tumor_class", "tumor")).sum())


def write_cohort_table(out_dir, parts: Sequence[tuple[str, Path]]) -> Optional[Path]:
    """Concatenate per-image cell tables into ``out_dir/cohort_cells.parquet``, atomically.

    The first column, ``image``, is the image's output stem. The file is left untouched when
    it was already built from the same per-image files (same names, sizes and modification
    times), so that a rerun with nothing new rewrites nothing.

    Args:
        out_dir: output folder.
        parts: ``(stem, parquet path)`` per image, in order.

    Returns:
        The cohort table's path, or None when ``parts`` is empty.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    if not parts:
        return None
    path = Path(out_dir) / COHORT_NAME
    sources = [[stem, p.name, p.stat().st_size, p.stat().st_mtime_ns] for stem, p in parts]
    if path.is_file():
        try:
            meta = pq.read_schema(path).metadata or {}
            old = json.loads(meta.get(b"napari_uam_cohort", b"{}")).get("sources")
        except Exception:  # an unreadable cohort file is simply rebuilt
            old = None
        if old == sources:
            return path
    # Streamed in batches of rows, so that a cohort of whole slides (each image's table as large
    # as its nuclei) never has to fit in memory. The per-image pandas metadata is dropped: it
    # describes a table without the ``image`` column.
    with atomic_path(path, overwrite=True) as tmp:
        writer = None
        try:
            for stem, p in parts:
                for batch in pq.ParquetFile(p).iter_batches(batch_size=65536):
                    tab = pa.Table.from_batches([batch])
                    tab = tab.add_column(0, "image", pa.array([stem] * tab.num_rows, pa.string()))
                    if writer is None:
                        meta = {k: v for k, v in (tab.schema.metadata or {}).items() if k != b"pandas"}
                        meta[b"napari_uam_cohort"] = json.dumps({"sources": sources}).encode()
                        writer = pq.ParquetWriter(tmp, tab.schema.with_metadata(meta))
                    writer.write_table(tab.select(writer.schema.names).cast(writer.schema))
        finally:
            if writer is not None:
                writer.close()
    return path
