"""Batch runs over many images: resumable, one manifest per run, one cohort table.

The command line (:mod:`napari_uam.cli`) is a thin layer over :func:`run_batch`; nothing
here imports Qt, so tests and scripts call it headless.

Per image ``<stem>`` the outputs of :func:`napari_uam.io.export_cells` are written (all or
none, through a hidden staging folder), then ``<stem>.done.json`` (provenance, parameters,
timings) is written last and atomically. An image counts as done only when its marker
exists, was written by the same command and lists every requested output, and those
outputs exist: a run killed at any point therefore leaves only complete per-image sets
behind, and the next run redoes exactly the images without a marker.

Per run, ``napari_uam_run.json`` (the manifest: command line, versions, model, parameters,
per-image status and totals) is rewritten atomically after every image, so that even a
killed run says how far it got, and ``cohort_cells.parquet`` (every image's cell table with
an ``image`` column) is written at the end from the per-image parquet files.

Images larger than :data:`.tiles.TILE_ABOVE_PIXELS` (or than ``tile_size``) are
processed in tiles with halos (:mod:`napari_uam.tiling`). Images and tiles are tasks of an
executor (:mod:`napari_uam.batch.executors`): in this process, or on Dask workers; outputs,
markers and the manifest are always written here, as results arrive.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Callable, Iterable, Optional, Sequence

import tifffile

from .. import pipeline
from .. import provenance as P
from ..device import resolve_device
from ..errors import CancelledError, UAMError
from ..io.atomic import move_into_place, remove_output
from ..io.export import FORMATS, TUMOR_OUTPUTS, export_cells, output_paths
from ..io.interop import check_available
from ..io.writers import check_geojson_measurements
from ..io.lock import FolderLock
from ..io.reader import read_image
from ..pixel_size import check_mpp, choose_mpp, missing_mpp_message
from ..radiomics.schema import DEFAULT_SCHEMA, schema_serves
from ..scale import ResampleWarning, check_resample
from ..segment import resolve_backend
from ..segment.learned import load_checkpoint
from . import tiles
from .executors import SerialExecutor, auto_tile_workers, make_executor
from .folder import (
    COMMAND_FORMATS,
    COMMANDS,
    MANIFEST_NAME,
    MANIFEST_SCHEMA,
    _clear_killed_writes,
    _finished_elsewhere,
    _is_own_manifest,
    _protected_targets,
    _refuse_foreign_run_files,
    _remove_stale_staging,
    _tumor_count,
    _write_json,
    collect_images,
    done_path,
    image_stem,
    read_done,
    write_cohort_table,
)
from .records import (
    BatchArgumentError,
    BatchResult,
    ComputeConfig,
    ImagePlan,
    ImageResult,
    ImageStatus,
    OutputOptions,
    Progress,
    RunContext,
)


def run_batch(
    command: str,
    inputs: Iterable = (),
    out_dir=".",
    *,
    mpp: Optional[float] = None,
    extra_images: Sequence[tuple] = (),
    formats: Optional[Sequence[str]] = None,
    model=None,
    device: str = "auto",
    segmenter: str = "auto",
    radiomics_backend: str = "auto",
    overwrite: bool = False,
    labels_from_out: bool = False,
    tile_size: Optional[int] = None,
    dask: Optional[str] = None,
    workers: Optional[int] = None,
    progress: Progress = None,
    argv: Optional[Sequence[str]] = None,
    options: OutputOptions = OutputOptions(),
    tile_progress: Optional[Callable[[int, int], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> BatchResult:
    """Run ``segment``, ``measure`` or ``classify`` over many images, resumably.

    A failing image (unreadable, not H&E, no nuclei, outputs in the way) is recorded as
    failed with a one-line reason and the next image is processed. A KeyboardInterrupt
    stops the run after recording it in the manifest; the image being processed then has
    no outputs (they are only renamed into place once complete) and no marker.

    Args:
        command: ``"segment"`` (labels TIFF), ``"measure"`` (labels + cell table without
            classes) or ``"classify"`` (labels, classified table, GeoJSON).
        inputs: files, glob patterns or folders (see :func:`collect_images`).
        out_dir: output folder (created if missing).
        mpp: microns per pixel for every image; None reads it from each file.
        extra_images: further ``(path, default_mpp)`` pairs (e.g. the shipped sample),
            whose ``default_mpp`` applies when neither ``mpp`` nor the file gives one.
        formats: output kinds for ``classify`` (subset of :data:`napari_uam.io.export.FORMATS`,
            default tif, csv, parquet, geojson); the other commands write their fixed set.
        model: checkpoint path, loaded classifier or None for the shipped weights.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        segmenter: segmentation backend (``"auto"``: the best installed).
        radiomics_backend: ``"auto"``, ``"fast"`` or ``"pyradiomics"``.
        overwrite: recompute done images and replace their outputs.
        labels_from_out: for ``measure``/``classify``, reuse ``<stem>_nuclei.tif`` from the
            output folder when it exists instead of segmenting again.
        tile_size: process images taller or wider than this in tiles of this side (see
            :mod:`napari_uam.tiling`); None tiles only images above
            :data:`.tiles.TILE_ABOVE_PIXELS`, with the default tile.
        dask: None (this process), ``"local"`` (a local Dask cluster) or a scheduler address;
            images (and the tiles of large images) are then tasks on the Dask workers, and
            the outputs are written here as results arrive.
        workers: local Dask workers (more than 1 implies ``dask="local"``).
        progress: called as ``progress(line, status)`` once per image (``status`` one of
            done, skipped, failed).
        argv: the command line, recorded in the manifest.
        options: GeoJSON measurements and background tiles (:class:`.records.OutputOptions`).
        tile_progress: ``tile_progress(done, n)`` after each tile of a tiled image (the dock's
            progress bar).
        cancel: polled after each tile of a tiled image; True stops the run like Ctrl-C
            (the image is ``interrupted``, nothing of it is written) with CancelledError.

    Returns:
        :class:`BatchResult`.

    Raises:
        BatchArgumentError: unusable arguments (nothing is written then).
        UAMError: the model cannot be loaded or ``mpp`` is implausible.
    """

    if command not in COMMANDS:
        raise BatchArgumentError(f"Unknown command {command!r}; choose from {', '.join(COMMANDS)}.")
    if formats is None or command != "classify":
        formats = COMMAND_FORMATS[command]
    formats = tuple(dict.fromkeys(formats))
    unknown = set(formats) - set(FORMATS)
    if unknown or not formats:
        raise BatchArgumentError(
            f"Unknown output format(s) {sorted(unknown) or '(none)'}; choose from {', '.join(FORMATS)}."
        )
    try:
        check_available(formats)
        if options.geojson_measurements != "auto":
            check_geojson_measurements(options.geojson_measurements)
    except ValueError as err:  # MissingDependencyError is a UAMError, a ValueError
        raise BatchArgumentError(str(err)) from None
    if mpp is not None:
        mpp = check_mpp(mpp)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise BatchArgumentError(f"--out {out} is a file, not a folder.")
    jobs = [(p, None) for p in collect_images(inputs, out)] + [(Path(p), m) for p, m in extra_images]
    if not jobs:
        raise BatchArgumentError("No input: give image files, globs or folders.")
    stems: dict[str, Path] = {}
    for p, _ in jobs:
        s = image_stem(p)
        if s in stems:
            raise BatchArgumentError(
                f"{stems[s]} and {p} would write the same outputs ({s}_*); process them into different --out folders."
            )
        stems[s] = p

    if not overwrite:
        _refuse_foreign_run_files(out)
    if tile_size is not None and int(tile_size) < 256:
        raise BatchArgumentError(f"--tile-size {tile_size} is too small; use 256 pixels or more (default 2048).")
    if mpp is not None:
        # An --mpp that makes any image's resampled copy absurd or too large is an argument
        # error: refused before anything is loaded or written (only file headers are read).
        for p, _ in jobs:
            try:
                shape = _probe_shape(p)
            except Exception:  # an unreadable file fails alone later, with its own reason
                continue
            try:
                _check_scale(p, shape, mpp, command, segmenter, tile_size, warn=False)
            except UAMError as err:
                raise BatchArgumentError(f"--mpp {mpp:g}: {p.name}: {err}") from None
    clf = pipeline.get_classifier(model, device) if command == "classify" else None
    if clf is not None:
        _check_model_schema(clf)

    if dask is None and workers is None and any(_tiled_size(p, tile_size) for p, _ in jobs):
        # Not asked for: tiled images on a GPU get a local worker per core (the measured
        # 3.3x of docs/performance.md), everything else stays in this process.
        workers = auto_tile_workers(resolve_device(device)) if device != "cpu" else 1
        workers = workers if workers > 1 else None
    executor = make_executor(dask, workers)
    try:
        out.mkdir(parents=True, exist_ok=True)
        # One run per output folder: a second run into it is refused (FolderLockedError)
        # instead of interleaving its outputs, markers and manifest with the first one's.
        lock = FolderLock(out, what=" ".join(argv) if argv else f"napari-uam {command}").acquire()
    except BaseException:
        executor.close()
        raise
    try:
        return _run_locked(
            command,
            out,
            jobs,
            mpp=mpp,
            formats=formats,
            clf=clf,
            model=model,
            device=device,
            segmenter=segmenter,
            radiomics_backend=radiomics_backend,
            overwrite=overwrite,
            labels_from_out=labels_from_out,
            tile_size=tile_size,
            dask=dask,
            workers=workers,
            progress=progress,
            argv=argv,
            executor=executor,
            options=options,
            tile_progress=tile_progress,
            cancel=cancel,
        )
    finally:
        lock.release()


def _run_locked(
    command,
    out: Path,
    jobs,
    *,
    mpp,
    formats,
    clf,
    model,
    device,
    segmenter,
    radiomics_backend,
    overwrite,
    labels_from_out,
    tile_size,
    dask,
    workers,
    progress,
    argv,
    executor,
    options,
    tile_progress=None,
    cancel=None,
) -> BatchResult:
    """The body of :func:`run_batch`, run while the output folder's lock is held."""

    parameters = {
        "mpp": mpp,
        "formats": list(formats),
        "device": device,
        "segmenter": segmenter,
        "radiomics_backend": radiomics_backend if command != "segment" else None,
        "model": None if model is None or hasattr(model, "predict_proba") else str(model),
        "overwrite": overwrite,
        "labels_from_out": labels_from_out,
        "tile_size": tile_size,
        "dask": dask,
        "workers": workers,
        "geojson_measurements": options.geojson_measurements,
        "skip_background": options.skip_background,
    }
    manifest = {
        "schema": MANIFEST_SCHEMA,
        "command": command,
        "argv": list(argv) if argv is not None else None,
        "cwd": os.getcwd(),
        "out_dir": str(out.resolve()),
        "started_utc": P.utc_now(),
        "finished_utc": None,
        "state": "running",
        "versions": P.versions(),
        "model": None
        if clf is None
        else {
            "id": clf.model_id,
            "sha256": clf.sha256,
            "arch": clf.arch,
            "schema_id": clf.schema_id,
        },
        "schema_id": DEFAULT_SCHEMA.schema_id if command != "segment" else None,
        "parameters": parameters,
        "executor": executor.description,
        "images": [],
        "totals": {},
        "cohort_table": None,
    }
    statuses = [ImageStatus(image=str(p), stem=image_stem(p)) for p, _ in jobs]
    manifest_path = out / MANIFEST_NAME
    t_run = time.perf_counter()

    def save(state: str) -> None:
        manifest["state"] = state
        manifest["images"] = [asdict(s) for s in statuses]
        manifest["totals"] = {
            "images": len(statuses),
            **{k: sum(1 for s in statuses if s.status == k) for k in ("done", "skipped", "failed", "pending")},
            "cells": sum(s.n_cells or 0 for s in statuses if s.status in ("done", "skipped")),
            "tumor_cells": sum(s.n_tumor or 0 for s in statuses if s.status in ("done", "skipped")),
            "seconds": round(time.perf_counter() - t_run, 3),
        }
        if state != "running":
            manifest["finished_utc"] = P.utc_now()
        _write_json(manifest_path, manifest)

    ctx = RunContext(
        command=command,
        out=out,
        formats=formats,
        mpp=mpp,
        clf=clf,
        model=model,
        device=device,
        segmenter=segmenter,
        radiomics_backend=radiomics_backend,
        overwrite=overwrite,
        labels_from_out=labels_from_out,
        parameters=parameters,
        tile_size=tile_size,
        executor=executor,
        save=save,
        inputs={p.resolve() for p, _ in jobs},
        options=options,
        tile_progress=tile_progress,
        cancel=cancel,
    )
    # Read before this run's manifest replaces it: what a killed run was writing.
    _clear_killed_writes(out, _is_own_manifest(manifest_path), command, ctx.inputs)
    save("running")
    n = len(jobs)
    finished = [0]

    last = [time.perf_counter()]

    def report(k: int) -> None:
        last[0] = time.perf_counter()
        finished[0] += 1
        if progress is not None:
            st = statuses[k]
            progress(f"[{finished[0]}/{n}] {jobs[k][0].name}: {_describe(st)}", st.status)
        save("running")

    def fail(k: int, err: BaseException) -> None:
        statuses[k].status = "failed"
        statuses[k].reason = _one_line(err)

    # Client side, cheap: skip finished images, look at sizes; nothing is decoded yet.
    plans: dict[int, ImagePlan] = {}
    for k, (path, default_mpp) in enumerate(jobs):
        try:
            plan = _plan_image(path, default_mpp, statuses[k], ctx)
        except Exception as err:  # unreadable file, missing pixel size
            fail(k, err)
            report(k)
            continue
        if plan is None:  # skipped
            report(k)
        else:
            plans[k] = plan
    small = [k for k, p in plans.items() if not p.tiled]
    large = [k for k, p in plans.items() if p.tiled]
    started: dict[int, float] = {}
    try:
        tasks = []
        for k in small:
            started[k] = time.perf_counter()
            tasks.append((k, plans[k]))
        args = [(jobs[k][0], jobs[k][1], plans[k], _compute_config(ctx, executor)) for k, _ in tasks]
        for j, outcome in executor.map(_compute_safe, args):
            k = tasks[j][0]
            try:
                if isinstance(outcome, BaseException):
                    raise outcome
                _finish_image(jobs[k][0], statuses[k], ctx, plans[k], outcome)
            except KeyboardInterrupt:
                raise
            except Exception as err:  # one bad image never stops the cohort; the reason is kept
                fail(k, err)
            # Serially, an image's task starts when the previous one is reported.
            begun = max(started[k], last[0])
            statuses[k].seconds = round(time.perf_counter() - begun, 3)
            if not isinstance(outcome, BaseException) and not isinstance(executor, SerialExecutor):
                statuses[k].seconds = round(outcome.seconds + time.perf_counter() - last[0], 3)
            report(k)
        for k in large:
            started[k] = time.perf_counter()
            try:
                _process_tiled(jobs[k][0], statuses[k], ctx, plans[k])
            except (KeyboardInterrupt, CancelledError):
                raise
            except Exception as err:
                fail(k, err)
            statuses[k].seconds = round(time.perf_counter() - started[k], 3)
            report(k)
    except (KeyboardInterrupt, CancelledError):
        running = [k for k in started if statuses[k].status == "pending"]
        # In this process only the first unfinished image was being computed; on Dask
        # every submitted one may have been.
        for k in running[:1] if isinstance(executor, SerialExecutor) else running:
            statuses[k].status = "interrupted"
            statuses[k].seconds = round(time.perf_counter() - started[k], 3)
        save("interrupted")
        raise
    finally:
        executor.close()

    cohort = None
    if "parquet" in formats and command != "segment":
        parts = [(s.stem, output_paths(out, s.stem)["parquet"]) for s in statuses if s.status in ("done", "skipped")]
        parts += _finished_elsewhere(out, command, {s.stem for s in statuses})
        try:
            cohort = write_cohort_table(out, parts)
        except BaseException as err:
            # A full disk here must not leave the manifest saying "running" forever.
            manifest["cohort_error"] = _one_line(err)
            try:
                save("failed")
            except OSError:  # the disk may be too full for the manifest too; the error is raised
                pass
            raise
        manifest["cohort_table"] = cohort.name if cohort is not None else None
    save("finished")
    return BatchResult(images=statuses, manifest_path=manifest_path, cohort_path=cohort)


def _one_line(err: BaseException) -> str:
    msg = " ".join(str(err).split())
    # Typed napari-uam errors carry a complete message; anything else is named by its type.
    return msg if isinstance(err, (UAMError, FileExistsError)) and msg else f"{type(err).__name__}: {msg}"


def _describe(st: ImageStatus) -> str:
    if st.status == "failed":
        return f"failed: {st.reason}"
    counts = f"{st.n_cells} nuclei" + (f", {st.n_tumor} tumor" if st.n_tumor is not None else "")
    if st.status == "skipped":
        return f"skipped (done: {counts})"
    return f"{counts}, {st.seconds:.1f} s"


def _plan_image(path: Path, default_mpp, st: ImageStatus, ctx: RunContext) -> Optional[ImagePlan]:
    """Decide how one image is processed; None when it is skipped (``st`` filled in).

    Only the file's header is read here (size, pixel size); the pixels are decoded by the
    task that processes the image.
    """

    command, out, formats = ctx.command, ctx.out, ctx.formats
    stem = st.stem
    paths = output_paths(out, stem)
    if not ctx.overwrite:
        info = read_done(out, stem, command, formats)
        if info is not None:
            st.status = "skipped"
            st.n_cells, st.n_tumor = info.get("n_cells"), info.get("n_tumor")
            st.outputs = info.get("outputs", {})
            st.tumor_area_fraction = (info.get("provenance") or {}).get("tumor_area_fraction")
            return None
    _remove_stale_staging(out, stem)
    protected = _protected_targets(out, stem, (*formats, "tumor_mask"), ctx.inputs)
    if protected:
        raise UAMError(
            f"{', '.join(p.name for p in protected)} in {out} is not a napari-uam output (an input "
            "image?) and is never replaced, --overwrite or not; rename it or choose another --out."
        )
    height, width, file_mpp = tiles.probe(path)
    tile = ctx.tile_size
    tiled = (height > tile or width > tile) if tile else height * width > tiles.TILE_ABOVE_PIXELS
    scale_mpp = choose_mpp(ctx.mpp, file_mpp, default_mpp)
    if scale_mpp is not None:  # a file's own pixel size is checked here, before decoding it
        _check_scale(path, (height, width), check_mpp(scale_mpp), command, ctx.segmenter, tile)
    plan = ImagePlan(tiled=tiled, shape=(height, width), write_formats=formats)
    if ctx.labels_from_out and command != "segment" and paths["tif"].is_file():
        if tiled:
            raise UAMError(
                f"{path.name} is processed in tiles ({height}x{width} pixels); --labels-from-out "
                "only works for images processed in one piece."
            )
        plan.labels = _read_labels_tiff(paths["tif"])
        plan.write_formats = tuple(f for f in formats if f != "tif")
        plan.labels_source = paths["tif"].name
    if tiled:
        mpp = choose_mpp(ctx.mpp, file_mpp, default_mpp)
        if mpp is None:
            raise UAMError(missing_mpp_message(path.name))
        plan.mpp = mpp
    return plan


def _check_model_schema(clf) -> None:
    """Refuse, before any image is segmented, a model trained on other features than the
    pipeline measures (it would otherwise fail every image after measuring it)."""

    names = DEFAULT_SCHEMA.feature_names
    names = names() if callable(names) else names
    # A model reads its own columns (a subset of the schema's, see CellClassifier.check_features).
    missing = [f for f in clf.feature_names if f not in set(names)]
    if not schema_serves(DEFAULT_SCHEMA.schema_id, clf.schema_id) or missing:
        raise BatchArgumentError(
            f"Model {clf.model_id!r} ({clf.path or 'in memory'}) was trained on feature schema "
            f"{clf.schema_id!r} ({len(clf.feature_names)} features"
            + (f", {len(missing)} unknown here, e.g. {missing[0]!r}" if missing else "")
            + f"); this napari-uam measures {DEFAULT_SCHEMA.schema_id!r} ({len(names)} features). "
            "Use a model trained with this version, or retrain it."
        )


def _tiled_size(path: Path, tile_size: Optional[int]) -> bool:
    """Whether ``path`` is processed in tiles (its header only; False when unreadable)."""
    try:
        h, w = _probe_shape(path)
    except Exception:  # noqa: BLE001 - an unreadable file fails alone later, with its reason
        return False
    return (h > tile_size or w > tile_size) if tile_size else h * w > tiles.TILE_ABOVE_PIXELS


def _probe_shape(path: Path) -> tuple[int, int]:

    h, w, _ = tiles.probe(path)
    return h, w


def _working_mpps(command: str, segmenter: str, mpp: float) -> list[tuple[float, str]]:
    """The pixel sizes an image at ``mpp`` is resampled to, with the stage that does it."""
    out = []
    try:
        if resolve_backend(segmenter, mpp) == "learned":
            out.append((float(load_checkpoint()["net_mpp"]), "the nuclei segmenter"))
    except UAMError:  # an unusable backend is reported by the image's own run
        pass
    if command != "segment":
        out.append((P.working_mpp(), "the measurement"))
    return out


def _check_scale(path: Path, shape, mpp: float, command: str, segmenter: str, tile_size, warn: bool = True) -> None:
    """Refuse (or warn about) the resampling an image at ``mpp`` needs, from its header alone.

    A tiled image is resampled tile by tile, so there the limit applies to one tile.
    """

    h, w = int(shape[0]), int(shape[1])
    tile = tile_size or tiles.DEFAULT_TILE
    tiled = (h > tile or w > tile) if tile_size else h * w > tiles.TILE_ABOVE_PIXELS
    if tiled:
        h, w = min(h, tile), min(w, tile)
    for target, what in _working_mpps(command, segmenter, mpp):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", ResampleWarning)
            check_resample((h, w), mpp, target, what)
        for c in caught if warn else ():
            warnings.warn(f"{path.name}: {c.message}", ResampleWarning, stacklevel=3)


def _read_labels_tiff(path):
    """A TIFF's pixels (labels written by an earlier run)."""

    return tifffile.imread(path)


def _compute_config(ctx: RunContext, executor) -> ComputeConfig:
    """What an image task needs (picklable; a loaded classifier only runs in this process)."""

    local = isinstance(executor, SerialExecutor)
    return ComputeConfig(
        command=ctx.command,
        mpp=ctx.mpp,
        segmenter=ctx.segmenter,
        radiomics_backend=ctx.radiomics_backend,
        device=ctx.device,
        model=ctx.clf if local else ctx.model,
    )


@contextlib.contextmanager
def _named_warnings(name: str):
    """Re-issue the warnings raised while one image runs with its file name first: in a
    cohort, "this image lies outside the training data" must say which image."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # also when the image fails: its warnings may say why
        for c in caught:
            warnings.warn_explicit(f"{name}: {c.message}", c.category, c.filename, c.lineno)


def _compute_safe(path: Path, default_mpp, plan: ImagePlan, cfg: ComputeConfig):
    """:func:`compute_image` returning an exception instead of raising (one image's failure)."""
    try:
        with _named_warnings(Path(path).name):
            return compute_image(path, default_mpp, plan, cfg)
    except Exception as err:  # returned, so the other images' tasks carry on
        return err


def compute_image(path: Path, default_mpp, plan: ImagePlan, cfg: ComputeConfig) -> ImageResult:
    """Read and process one image in one piece (the task run in this process or on a worker).

    Returns:
        :class:`ImageResult`.
    """
    timings = {}
    t = t_start = time.perf_counter()
    image, file_mpp = read_image(path)
    mpp = choose_mpp(cfg.mpp, file_mpp, default_mpp)
    if mpp is None:
        raise UAMError(missing_mpp_message(path.name))
    timings["read_s"] = time.perf_counter() - t
    command = cfg.command
    t = time.perf_counter()
    model = cfg.model
    if command == "classify" and not hasattr(model, "predict_proba"):
        model = pipeline.get_classifier(model, cfg.device)
    # The one stage runner: segment stops after the nuclei, measure after the features.
    res = pipeline.run(
        image,
        mpp,
        labels=plan.labels,
        segment_backend=cfg.segmenter,
        radiomics_backend=cfg.radiomics_backend,
        model=model,
        device=cfg.device,
        classify=command == "classify",
        measure=command != "segment",
    )
    labels, table, provenance = res.labels, res.table, res.provenance
    tumor_mask = getattr(res, "tumor_mask", None)
    timings.update(provenance.get("timings", {}))
    provenance["labels_source"] = plan.labels_source
    return ImageResult(
        labels=labels,
        table=table,
        provenance=provenance,
        mpp=mpp,
        timings=timings,
        tumor_mask=tumor_mask if command == "classify" else None,
        seconds=time.perf_counter() - t_start,
    )


def _finish_image(path: Path, st: ImageStatus, ctx: RunContext, plan: ImagePlan, res: ImageResult) -> None:
    """Write one image's outputs (all or none), then its done marker."""
    out, stem, formats = ctx.out, st.stem, ctx.formats
    paths = output_paths(out, stem)
    marker = done_path(out, stem)
    # A marker from an earlier run must not vouch for outputs this run is replacing.
    if ctx.overwrite:
        marker.unlink(missing_ok=True)
    t = time.perf_counter()
    _record_writing(st, ctx, [*formats, *(["tumor_mask"] if res.tumor_mask is not None else [])])
    export_cells(
        res.labels,
        res.table,
        out,
        stem,
        formats=plan.write_formats,
        overwrite=ctx.overwrite,
        provenance=res.provenance,
        mpp=res.mpp,
        tumor_mask=res.tumor_mask,
        geojson_measurements=ctx.options.measurements(tiled=False),
    )
    timings = dict(res.timings)
    timings["export_s"] = time.perf_counter() - t
    table = res.table
    st.n_cells = int(len(table))
    st.n_tumor = _tumor_count(table)
    st.outputs = {k: paths[k].name for k in formats}
    if res.tumor_mask is not None:
        for kind in TUMOR_OUTPUTS:
            st.outputs[kind] = paths[kind].name
    st.tumor_area_fraction = res.provenance.get("tumor_area_fraction")
    st.status = "done"
    _write_marker(path, st, ctx, res.mpp, res.provenance, timings)


def _record_writing(st: ImageStatus, ctx: RunContext, kinds) -> None:
    """Say in the manifest which outputs of ``st`` are about to be renamed into place.

    If the run is killed before the done marker, the next run knows from this that the
    files are its own (see :func:`_clear_killed_writes`).
    """
    paths = output_paths(ctx.out, st.stem)
    st.status = "writing"
    st.outputs = {k: paths[k].name for k in kinds}
    ctx.save("running")


def _write_marker(path: Path, st: ImageStatus, ctx: RunContext, mpp, provenance: dict, timings: dict) -> None:
    # Written last: its presence is what makes the image count as done.
    _write_json(
        done_path(ctx.out, st.stem),
        {
            "schema": MANIFEST_SCHEMA,
            "command": ctx.command,
            "image": str(path),
            "stem": st.stem,
            "outputs": st.outputs,
            "n_cells": st.n_cells,
            "n_tumor": st.n_tumor,
            "mpp": mpp,
            "model": provenance.get("model_id")
            and {
                "id": provenance.get("model_id"),
                "sha256": provenance.get("model_sha256"),
            },
            "schema_id": provenance.get("schema_id"),
            "parameters": ctx.parameters,
            "provenance": provenance,
            "timings": {k: round(v, 4) for k, v in timings.items()},
            "finished_utc": P.utc_now(),
        },
    )


def _process_tiled(path: Path, st: ImageStatus, ctx: RunContext, plan: ImagePlan) -> None:
    """Process one large image in tiles (see :mod:`napari_uam.tiling`), all outputs or none."""

    out, stem, formats, command = ctx.out, st.stem, ctx.formats, ctx.command
    paths = output_paths(out, stem)
    if not ctx.overwrite:
        existing = [str(paths[k]) for k in formats if paths[k].exists()]
        if existing:
            raise FileExistsError(
                f"Not overwriting existing output(s): {', '.join(existing)}. "
                "Choose another folder or allow overwriting."
            )
    mpp = check_mpp(plan.mpp)
    backend = resolve_backend(ctx.segmenter, mpp)
    clf = ctx.clf
    measured = command != "segment"
    prov = {"versions": P.versions(), "time_utc": P.utc_now(), "labels_source": "segmented"}
    prov.update(P.settings(mpp, measured=measured, radiomics_backend=ctx.radiomics_backend, device=ctx.device))
    if clf is not None:
        prov.update(P.model_fields(clf))

    executor = ctx.executor
    model = clf if isinstance(executor, SerialExecutor) else ctx.model
    if ctx.overwrite:
        done_path(out, stem).unlink(missing_ok=True)
    # Same staging name as export_cells: a killed run's leftovers are removed on the next run.
    stage = Path(tempfile.mkdtemp(prefix=f".{stem}.export.", dir=out))
    try:
        with _named_warnings(path.name):
            res = tiles.run_tiled(
                path,
                mpp,
                stage,
                stem,
                command=command,
                formats=formats,
                backend=backend,
                executor=executor,
                tile=ctx.tile_size or tiles.DEFAULT_TILE,
                radiomics_backend=ctx.radiomics_backend,
                device=ctx.device,
                model=model,
                provenance=prov,
                skip_background=ctx.options.skip_background,
                geojson_measurements=ctx.options.measurements(tiled=True),
                progress=ctx.tile_progress,
                cancel=ctx.cancel,
            )
        written = []
        _record_writing(st, ctx, formats)
        try:
            for kind in formats:
                move_into_place(res.outputs[kind], paths[kind])
                written.append(paths[kind])
        except BaseException:
            if not ctx.overwrite:
                for p in written:
                    remove_output(p)
            raise
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    prov.update(res.provenance)
    # The tumor-region model runs on whole images only; a tiled image gets its cells' classes.
    prov["tumor_mask"] = "not computed for images processed in tiles"
    st.n_cells, st.n_tumor = res.n_cells, res.n_tumor
    st.outputs = {k: paths[k].name for k in formats}
    st.status = "done"
    _write_marker(path, st, ctx, mpp, prov, prov.get("timings", {}))


__all__ = [
    "BatchArgumentError",
    "BatchResult",
    "COMMANDS",
    "ImageStatus",
    "collect_images",
    "done_path",
    "image_stem",
    "read_done",
    "run_batch",
    "write_cohort_table",
]
