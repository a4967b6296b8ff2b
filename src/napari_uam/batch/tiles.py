"""Large images in tiles with halos: every nucleus kept exactly once and whole, bounded memory.

An image far larger than one patch (a 20,000 x 20,000 mosaic, a whole-slide level) is cut
into a grid of square *cores* of ``tile`` pixels. Each core is processed with a *halo* of
``halo`` pixels of context on every side (the *extended* tile):

1. the extended tile is read lazily from the file (:class:`RegionReader`: a memory map of an
   uncompressed TIFF, or only the compressed TIFF tiles / strips it overlaps),
2. segmented, and of its nuclei only those whose centroid lies in the core are kept; the
   halo is wider than the segmenters' context plus a nucleus, so a kept nucleus is whole and
   segmented exactly as in one piece, and since the cores partition the image each nucleus
   is kept by exactly one tile,
3. the kept nuclei are measured (and classified) on the extended tile: features are per cell
   and depend only on pixels near the cell, so this is the whole-image value. Tile origins are
   multiples of :func:`alignment`, so the resampling to the working pixel size falls on the
   same grid as for the whole image.

Image-level statistics that the one-piece segmenters estimate from the whole image (the
watershed's white level and hematoxylin threshold) are estimated once per image in a first
pass over the tiles and passed to every tile, so no tile depends on what else it holds.
The same pass finds the tissue on the overview (:func:`napari_uam.tissue.detect_tissue`):
tiles whose extended region holds none (glass, pen strokes) are not segmented, and the tissue
area is recorded.

Outputs are assembled without ever holding the image or its labels: the kept labels of each
tile are stored compressed in the staging folder, and the labels TIFF is written as a tiled
BigTIFF one output tile at a time (each composed from the kept nuclei of its own and its 8
neighbouring tiles, which cover it since ``halo <= tile``). Cell tables are written by parts
(parquet row groups, CSV appends, GeoJSON features streamed). Memory therefore depends on the
tile size, not on the image size.

Each tile is an independent task (:func:`tile_statistics`, :func:`tile_histogram`,
:func:`process_tile`) run by an executor of :mod:`.executors` (in this process, or on Dask
workers). A tile's compute is the pipeline's one stage runner
(:func:`napari_uam.pipeline.run_stages` with a :class:`~napari_uam.pipeline.TileContext`), so
a tiled image is segmented, measured and classified by the same code as a whole one.
"""

from __future__ import annotations

import json
import math
import shutil
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from ..errors import NoNucleiError, raise_if_cancelled
from ..io.export import output_paths
from ..io.region_reader import RegionReader, probe
from ..io.tiled_writer import _write_geojson, _write_labels, _write_tables, _write_zarr_labels
from ..io.writers import label_polygons
from ..pipeline import TileContext, cell_geometry, feature_columns, get_classifier, record_domain, run_stages
from ..radiomics.schema import DEFAULT_SCHEMA
from ..radiomics.stain_norm import estimate_stains
from ..scale import scale_factor
from ..segment import segment
from ..segment.learned import NET_MPP
from ..segment.stain import hematoxylin, white_level
from ..segment.watershed import WatershedParams, segment_watershed
from ..tissue import detect_tissue
from ..validation import as_rgb_uint8, check_brightfield, check_he_stain, check_he_tissue
from .executors import SerialExecutor

#: Images with more pixels than this are processed in tiles by the command line by default.
TILE_ABOVE_PIXELS = 4096 * 4096
#: Default core side in image pixels.
DEFAULT_TILE = 2048
#: Context on each side of a core, in microns: the learned backend's network sees 32 um (128
#: px at 0.25 um/px), the watershed's local mean 5 um; plus the largest nucleus radius (the
#: watershed keeps nuclei up to 400 um^2, about 11 um radius) and a margin.
HALO_UM = 48.0


# ------------------------------------------------------------------------------------ grid
@dataclass(frozen=True)
class Tile:
    """One tile: its core (kept nuclei's centroids) and extended region (what is read).

    Attributes:
        iy, ix: grid position.
        core: (y0, y1, x0, x1) in image pixels.
        ext: (y0, y1, x0, x1): the core plus the halo, clipped to the image.
    """

    iy: int
    ix: int
    core: tuple
    ext: tuple


def alignment(mpp: float, targets: Sequence[float]) -> int:
    """Smallest tile-origin step (pixels) on which resampling to every target pixel size lines up.

    A crop whose origin is a multiple of ``q`` (with ``q * mpp / target`` an integer) is
    resampled onto the same pixel grid as the whole image, so features and network inputs
    near a kept nucleus are the same. Pixel sizes without a small common step get 1
    (then tiled and one-piece results agree only approximately).
    """
    q = 1
    for t in targets:
        f = scale_factor(mpp, t)
        for k in range(1, 65):
            if abs(k * f - round(k * f)) < 1e-6:
                q = q * k // math.gcd(q, k)
                break
    return q


def tile_grid(height: int, width: int, tile: int, halo: int) -> list[Tile]:
    """Cut an image into cores of ``tile`` pixels, each extended by ``halo`` (row-major order)."""
    tiles = []
    for iy in range(math.ceil(height / tile)):
        for ix in range(math.ceil(width / tile)):
            y0, x0 = iy * tile, ix * tile
            y1, x1 = min(height, y0 + tile), min(width, x0 + tile)
            ext = (max(0, y0 - halo), min(height, y1 + halo), max(0, x0 - halo), min(width, x1 + halo))
            tiles.append(Tile(iy, ix, (y0, y1, x0, x1), ext))
    return tiles


def plan(mpp: float, backend: str, tile: int = DEFAULT_TILE, halo_um: float = HALO_UM) -> tuple[int, int]:
    """Core side and halo in pixels for an image of ``mpp`` segmented by ``backend``.

    Both are multiples of 16 (TIFF tiles) and of :func:`alignment`; the halo is at least
    ``halo_um`` and never larger than the core (each output tile then only needs its 8
    neighbours).
    """
    targets = [DEFAULT_SCHEMA.mpp]
    if backend == "learned":
        targets.append(NET_MPP)
    q = alignment(mpp, targets)
    step = 16 * q // math.gcd(16, q)
    halo = int(math.ceil(halo_um / mpp / step) * step)
    tile = max(int(math.ceil(int(tile) / step) * step), halo)
    return tile, halo


# ------------------------------------------------------------------------------ tile tasks
@dataclass(frozen=True)
class TileJob:
    """What every tile task of one image needs (picklable).

    Attributes:
        reader: the image's :class:`RegionReader`.
        mpp: pixel size of the image.
        command: ``segment``, ``measure`` or ``classify``.
        backend: concrete segmentation backend name.
        white: (3,) watershed white level of the whole image, or None.
        threshold: watershed hematoxylin threshold of the whole image, or None.
        radiomics_backend, device: as in :func:`napari_uam.pipeline.run`.
        model: checkpoint path, loaded classifier or None (shipped weights).
        polygons: also return GeoJSON rings of the kept nuclei.
        shape: (height, width) of the image.
    """

    reader: RegionReader
    mpp: float
    shape: tuple
    command: str
    backend: str
    white: Optional[tuple] = None
    threshold: Optional[float] = None
    radiomics_backend: str = "auto"
    device: str = "auto"
    model: object = None
    stain: object = None  # the whole image's StainEstimate: every tile is normalised alike
    polygons: bool = False


@dataclass
class TileResult:
    """What one tile contributes.

    Attributes:
        tile: the tile.
        n: nuclei kept (centroid in the core).
        labels: zlib-compressed kept labels over ``tile.ext`` (local ids 1..n, dtype below).
        dtype: numpy dtype name of ``labels``.
        table: cell table of the kept nuclei (local ids; centroids in image pixels) or None.
        rings: local id -> GeoJSON ring in image pixels (when asked).
        n_cut: kept nuclei touching the extended tile's border inside the image (0 when the
            halo is wide enough; counted as a check).
        seconds: time spent.
    """

    tile: Tile
    n: int
    labels: bytes
    dtype: str
    table: Optional[pd.DataFrame] = None
    rings: dict = field(default_factory=dict)
    n_cut: int = 0
    seconds: float = 0.0

    def kept_labels(self) -> np.ndarray:
        """(h, w) kept labels over ``tile.ext`` (local ids)."""
        y0, y1, x0, x1 = self.tile.ext
        return np.frombuffer(zlib.decompress(self.labels), self.dtype).reshape(y1 - y0, x1 - x0)


def _rgb(job: TileJob, box) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return as_rgb_uint8(job.reader.read(*box))


def overview_step(height: int, width: int, tile: int, target_pixels: int = 2_000_000) -> int:
    """Stride of the overview (a divisor of ``tile``) keeping it near ``target_pixels``."""
    step = 1
    while height * width / (step * step) > target_pixels and tile % (step * 2) == 0:
        step *= 2
    return step


def tile_statistics(job: TileJob, tile: Tile, step: int) -> np.ndarray:
    """The core of ``tile`` subsampled by ``step`` (one piece of the image's overview)."""
    return _rgb(job, tile.core)[::step, ::step]


def tile_histogram(job: TileJob, tile: Tile, edges: np.ndarray, white, params) -> np.ndarray:
    """Histogram of the smoothed hematoxylin of stained core pixels, as the watershed sees it.

    The smoothing needs a few pixels of context, so the core is read with a margin.
    """
    sigma = params.smooth_sigma_um / job.mpp
    m = int(math.ceil(4 * sigma)) + 1
    y0, y1, x0, x1 = tile.core
    H, W = _image_hw(job, tile)
    box = (max(0, y0 - m), min(H, y1 + m), max(0, x0 - m), min(W, x1 + m))
    h = hematoxylin(_rgb(job, box), np.asarray(white, np.float32))
    hs = ndi.gaussian_filter(h, sigma) if sigma > 0.3 else h
    core = hs[y0 - box[0] : y1 - box[0], x0 - box[2] : x1 - box[2]]
    stained = core[core > params.min_od * 0.5]
    return np.histogram(np.clip(stained, edges[0], edges[-1]), bins=edges)[0]


def _image_hw(job: TileJob, tile: Tile) -> tuple[int, int]:
    return int(job.shape[0]), int(job.shape[1])


def segment_tile(job: TileJob, rgb: np.ndarray) -> np.ndarray:
    """Segment one extended tile with the image-level statistics of ``job``."""
    if job.backend == "watershed" and job.white is not None:
        return watershed_fixed(rgb, job.mpp, job.white, job.threshold)
    return (
        segment(rgb, job.mpp, backend=job.backend, device=job.device)
        if job.backend == "learned"
        else segment(rgb, job.mpp, backend=job.backend)
    )


def watershed_fixed(rgb: np.ndarray, mpp: float, white, threshold: float, params=None) -> np.ndarray:
    """The watershed backend with the white level and threshold given instead of estimated.

    :func:`napari_uam.segment.watershed.segment_watershed` with the two image-level estimates
    given by the caller (the whole image's, for a tile).

    Args:
        rgb: (H, W, 3) uint8 RGB.
        mpp: pixel size.
        white: (3,) white level per channel.
        threshold: hematoxylin threshold (optical density), after ``threshold_scale``.
        params: :class:`~napari_uam.segment.watershed.WatershedParams` (defaults when None).

    Returns:
        (H, W) int32 labels 1..N.
    """
    return segment_watershed(rgb, mpp, params, white=white, threshold=threshold)


def process_tile(job: TileJob, tile: Tile) -> TileResult:
    """Segment an extended tile, keep the nuclei centred in its core, measure and classify them.

    Through the one stage runner: between its stages this keeps the kept nuclei (after
    segmenting) and renumbers the measured table to them (before classifying).
    """
    t0 = time.perf_counter()
    Y0, Y1, X0, X1 = tile.ext
    rgb = _rgb(job, tile.ext)
    # Every nucleus of the extended tile is measured, so that a kept nucleus' ring and
    # neighbourhood see its neighbours in the halo as they are in the whole image; then only
    # the kept ones stay, renumbered as in ``local``.
    stages = run_stages(
        rgb,
        job.mpp,
        measure=job.command != "segment",
        classify=job.command == "classify",
        model=job.model,
        segment_backend=job.backend,
        radiomics_backend=job.radiomics_backend,
        device=job.device,
        tumor_mask=False,
        tile=TileContext(segment=lambda img: np.asarray(segment_tile(job, img), np.int32), stain=job.stain),
    )
    kept, n_cut, lut, st = np.zeros(0, np.int64), 0, np.zeros(1, np.int64), None
    for stage, st in stages:
        if stage == "segment":
            kept, n_cut = _kept_nuclei(job, tile, st.labels)
            lut = np.zeros(int(st.labels.max()) + 1, np.int64)
            lut[kept] = np.arange(1, kept.size + 1)
            if not kept.size:
                break  # nothing of this tile's core to measure or classify
        elif stage == "measure":
            table = st.table[st.table["label"].isin(kept)].copy()
            table["label"] = lut[table["label"].to_numpy(np.int64)]
            table = table.sort_values("label").reset_index(drop=True)
            table["y"] += Y0
            table["x"] += X0
            st.table = table
    local = lut[st.labels]
    dtype = np.uint16 if kept.size < 65536 else np.uint32
    local = local.astype(dtype)
    table = None
    if kept.size and job.command != "segment":
        table = st.table
    elif kept.size:
        table = cell_geometry(local.astype(np.int32), job.mpp)
        table["y"] += Y0
        table["x"] += X0
    rings = {}
    if kept.size and job.polygons:
        rings = {k: [[x + X0, y + Y0] for x, y in r] for k, r in label_polygons(local.astype(np.int32)).items()}
    return TileResult(
        tile=tile,
        n=int(kept.size),
        labels=zlib.compress(np.ascontiguousarray(local).tobytes(), 1),
        dtype=np.dtype(dtype).name,
        table=table,
        rings=rings,
        n_cut=n_cut,
        seconds=time.perf_counter() - t0,
    )


def _kept_nuclei(job: TileJob, tile: Tile, labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Ids of the nuclei whose centroid lies in the core, and how many of them the halo may cut."""
    if not labels.max():
        return np.zeros(0, np.int64), 0
    H, W = _image_hw(job, tile)
    Y0, Y1, X0, X1 = tile.ext
    # Centroids as the whole image's table computes them (one rule: pipeline.cell_geometry).
    geom = cell_geometry(labels, job.mpp)
    cy, cx = geom["y"].to_numpy() + Y0, geom["x"].to_numpy() + X0
    y0, y1, x0, x1 = tile.core
    inside = (cy >= y0) & (cy < y1) & (cx >= x0) & (cx < x1)
    kept = geom["label"].to_numpy()[inside]
    # A kept nucleus reaching an edge of the extended tile that is not the image's edge may
    # be cut by it: the halo would be too narrow. Counted so the caller can report it.
    edge = np.zeros(labels.shape, bool)
    if Y0 > 0:
        edge[0] = True
    if Y1 < H:
        edge[-1] = True
    if X0 > 0:
        edge[:, 0] = True
    if X1 < W:
        edge[:, -1] = True
    on_edge = np.unique(labels[edge])
    return kept, int(np.isin(kept, on_edge).sum())


@dataclass
class DomainSums:
    """Running sums of the classifier's normalised features over the tiles of one image.

    The trust check needs only the image's mean normalised feature row
    (:meth:`napari_uam.domain.DomainModel.score_mean`), so a tiled image is judged like a
    whole one without holding every cell at once.
    """

    clf: object
    total: Optional[np.ndarray] = None
    count: Optional[np.ndarray] = None
    n_cells: int = 0

    def add(self, table: pd.DataFrame) -> None:

        if getattr(self.clf, "domain", None) is None or table is None or not len(table):
            return
        x = self.clf.normalizer.transform(self.clf.check_features(table[feature_columns(table)]))
        ok = np.isfinite(x)
        if self.total is None:
            self.total, self.count = np.zeros(x.shape[1]), np.zeros(x.shape[1])
        self.total += np.where(ok, x, 0.0).sum(axis=0)
        self.count += ok.sum(axis=0)
        self.n_cells += len(x)

    def record(self, stain: Optional[dict], prov: dict) -> None:
        """``prov["domain"]`` and the warnings, by the rule of :func:`napari_uam.pipeline.record_domain`."""

        check = None
        if getattr(self.clf, "domain", None) is not None:
            if self.total is None:
                mean = np.full(len(self.clf.feature_names), np.nan)
            else:
                mean = np.where(self.count > 0, self.total / np.maximum(self.count, 1), np.nan)
            check = self.clf.domain.score_mean(stain, mean, self.n_cells)
        record_domain(self.clf, check, prov)


# ------------------------------------------------------------------------- whole image run
@dataclass
class TiledResult:
    """Outcome of :func:`run_tiled`.

    Attributes:
        n_cells: nuclei in the image.
        n_tumor: nuclei classified as tumor (``classify``), else None.
        outputs: written files by kind (in the staging folder until renamed).
        provenance: grid, image-level statistics, checks and timings.
    """

    n_cells: int
    n_tumor: Optional[int]
    outputs: dict
    provenance: dict


def image_levels(job: TileJob, tiles: list, executor, height: int, width: int, tile: int) -> dict:
    """First pass: overview checks and, for the watershed, the whole image's white level and threshold.

    Returns:
        ``{"overview_step": int, "stain": StainEstimate, "tissue": TissueMask, "white": (3,)
        tuple, "threshold": float}`` (white/threshold only for the watershed).
    """
    step = overview_step(height, width, tile)
    pieces = dict(executor.map(tile_statistics, [(job, t, step) for t in tiles]))
    rows = []
    gx = max(t.ix for t in tiles) + 1
    for iy in range(max(t.iy for t in tiles) + 1):
        rows.append(np.concatenate([pieces[iy * gx + ix] for ix in range(gx)], axis=1))
    overview = np.concatenate(rows, axis=0)
    check_brightfield(overview)
    check_he_tissue(overview)
    check_he_stain(overview)
    # One stain estimate for the whole image, so that a tile of pure stroma and a tile of
    # tumor are normalised alike (a per-tile estimate would depend on what the tile holds).
    out = {"overview_step": step, "stain": estimate_stains(overview)}
    # Where the tissue is, so that tiles of glass (and of pen strokes) are not segmented.
    out["tissue"] = detect_tissue(overview, step, job.mpp)
    if job.backend == "watershed":
        params = WatershedParams()
        white = white_level(overview)
        edges = np.linspace(0.0, 4.0, 4097)
        counts = sum(
            c
            for _, c in executor.map(tile_histogram, [(job, t, edges, tuple(map(float, white)), params) for t in tiles])
        )
        centers = (edges[:-1] + edges[1:]) / 2
        if counts.sum() < 100 or np.count_nonzero(counts) < 2:
            thr = np.inf
        else:
            thr = max(float(threshold_otsu(hist=(counts, centers))) * params.threshold_scale, params.min_od)
        out.update(white=tuple(float(v) for v in white), threshold=float(thr))
    return out


def run_tiled(
    path,
    mpp: float,
    stage: Path,
    stem: str,
    *,
    command: str,
    formats: Sequence[str],
    backend: str,
    executor=None,
    tile: int = DEFAULT_TILE,
    halo_um: float = HALO_UM,
    radiomics_backend: str = "auto",
    device: str = "auto",
    model=None,
    provenance: Optional[dict] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    skip_background: bool = True,
    geojson_measurements: str = "summary",
    cancel: Optional[Callable[[], bool]] = None,
) -> TiledResult:
    """Process one large image in tiles and write its outputs into ``stage``.

    Args:
        path: image file.
        mpp: its pixel size.
        stage: an empty folder to write into (the caller renames the files into place).
        stem: output file stem.
        command: ``segment``, ``measure`` or ``classify``.
        formats: output kinds (:data:`napari_uam.io.export.FORMATS`).
        backend: concrete segmentation backend (see :func:`napari_uam.segment.resolve_backend`).
        executor: a :mod:`napari_uam.batch.executors` executor (serial when None).
        tile: core side in pixels (rounded up by :func:`plan`).
        halo_um: halo in microns.
        radiomics_backend, device, model: as in :func:`napari_uam.pipeline.run`.
        provenance: extra provenance stored in the parquet metadata.
        progress: ``progress(done_tiles, n_tiles)`` over the tiles that hold tissue.
        skip_background: skip the tiles whose extended region holds no tissue
            (:func:`napari_uam.tissue.detect_tissue` on the overview); they hold no nucleus,
            and segmenting glass costs as much as segmenting tissue.
        geojson_measurements: what each nucleus' GeoJSON ``measurements`` hold
            (:data:`napari_uam.io.writers.GEOJSON_MEASUREMENTS`).
        cancel: polled after every tile; when it returns True, :class:`CancelledError` is
            raised (the caller's stage folder is then removed: nothing is written).

    Returns:
        :class:`TiledResult` with the staged output paths.

    Raises:
        NoNucleiError: no nucleus in the whole image.
    """
    executor = executor or SerialExecutor()
    t_start = time.perf_counter()
    height, width, _ = probe(path)
    tile, halo = plan(mpp, backend, tile, halo_um)
    tiles = tile_grid(height, width, tile, halo)
    job = TileJob(
        reader=RegionReader(str(path)),
        mpp=float(mpp),
        shape=(height, width),
        command=command,
        backend=backend,
        radiomics_backend=radiomics_backend,
        device=device,
        model=model,
        polygons="geojson" in formats,
    )
    levels = image_levels(job, tiles, executor, height, width, tile)
    job = replace(job, stain=levels["stain"])
    if "white" in levels:
        job = replace(job, white=levels["white"], threshold=levels["threshold"])
    t_levels = time.perf_counter() - t_start

    parts = stage / "tiles"
    parts.mkdir(parents=True, exist_ok=True)
    counts = [0] * len(tiles)
    n_cut = 0
    done = 0
    trust = None
    if command == "classify":
        trust = DomainSums(get_classifier(model, device))
    tissue = levels["tissue"]
    todo = [i for i, t in enumerate(tiles) if not skip_background or tissue.any_in(t.ext)]
    for k, res in executor.map(process_tile, [(job, tiles[i]) for i in todo]):
        i = todo[k]
        counts[i] = res.n
        n_cut += res.n_cut
        if trust is not None:
            trust.add(res.table)
        (parts / f"{i}.lab").write_bytes(res.labels)
        attrs = {}
        if res.table is not None:
            res.table.to_parquet(parts / f"{i}.parquet", index=False)
            attrs = {k: v for k, v in res.table.attrs.items() if isinstance(v, (str, int, float))}
        if res.rings:
            (parts / f"{i}.rings.json").write_text(json.dumps({str(k): v for k, v in res.rings.items()}))
        (parts / f"{i}.json").write_text(
            json.dumps({"dtype": res.dtype, "n": res.n, "seconds": res.seconds, "attrs": attrs})
        )
        done += 1
        if progress is not None:
            progress(done, len(todo))
        raise_if_cancelled(cancel, "Slide run cancelled; nothing was written.")
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n_cells = int(offsets[-1])
    if n_cells == 0:
        raise NoNucleiError(
            f"No nuclei found in this {height}x{width} image at {mpp:g} um/px. "
            "Check that it is an H&E image with tissue and that the pixel size is right"
            + ("." if todo else " (no tissue was found on its overview).")
        )
    t_tiles = time.perf_counter() - t_start - t_levels

    prov = dict(provenance or {})
    prov.update(
        tiled=True,
        image_shape=[height, width, 3],
        tile_px=tile,
        halo_px=halo,
        n_tiles=len(tiles),
        grid=[max(t.iy for t in tiles) + 1, max(t.ix for t in tiles) + 1],
        segment_backend=backend,
        n_cells=n_cells,
        cut_nuclei=n_cut,
        watershed_white=levels.get("white"),
        watershed_threshold=levels.get("threshold"),
        stain=levels["stain"].as_dict(),
        tissue_detection={**tissue.summary(), "tiles_skipped": len(tiles) - len(todo)},
    )
    if trust is not None:  # judged like a whole image: distance, threshold, status, warnings
        trust.record(prov["stain"], prov)
    targets = output_paths(stage, stem)
    # The outputs are independent files: written side by side in threads (zlib, Arrow and the
    # file writes release the GIL), so the slowest one sets the time, not their sum. The tables'
    # provenance is the run's as it stands now; the seam conflicts, known once the labels are
    # assembled, go into the done marker's provenance.
    labels_tif = targets["tif"] if "tif" in formats else stage / f".{stem}_labels_for_zarr.tif"

    def labels_outputs() -> dict:
        out = {}
        if "tif" in formats or "zarr" in formats:
            # The OME-Zarr labels are the labels TIFF read back lazily (one tile at a time), so
            # the TIFF is written for them too and left in the stage when it was not asked for.
            out["conflicts"] = _write_labels(labels_tif, tiles, parts, offsets, height, width, tile, n_cells, mpp)
        if "zarr" in formats:
            _write_zarr_labels(labels_tif, targets["zarr"], mpp)
        return out

    def table_outputs() -> tuple:
        done: dict = {}
        n = None
        if command != "segment" or {"csv", "parquet", "h5ad"} & set(formats):
            n = _write_tables(targets, formats, tiles, parts, offsets, dict(prov), done)
        return (n if command != "segment" else None), done

    def geojson_output() -> None:
        if "geojson" in formats:
            _write_geojson(targets["geojson"], tiles, parts, offsets, geojson_measurements)

    spent: dict = {}

    def timed(name, fn):
        def run():
            t = time.perf_counter()
            try:
                return fn()
            finally:
                spent[name] = time.perf_counter() - t

        return run

    with ThreadPoolExecutor(max_workers=3, thread_name_prefix="napari-uam-write") as pool:
        jobs = [pool.submit(timed("labels_s", labels_outputs)), pool.submit(timed("tables_s", table_outputs)),
                pool.submit(timed("geojson_s", geojson_output))]  # fmt: skip
        labelled, (n_tumor, written), _ = (j.result() for j in jobs)
    written.update({k: targets[k] for k in ("tif", "zarr", "geojson") if k in formats})
    prov["seam_conflict_pixels"] = labelled.get("conflicts", 0)
    shutil.rmtree(parts, ignore_errors=True)
    prov["timings"] = {
        "levels_s": t_levels,
        "tiles_s": t_tiles,
        "assemble_s": time.perf_counter() - t_start - t_levels - t_tiles,
        # The writers ran side by side: each its own time (their sum exceeds assemble_s).
        **{f"write_{k}": v for k, v in sorted(spent.items())},
    }
    if n_cut:
        warnings.warn(
            f"{n_cut} nuclei touch the edge of their tile's halo: they may be cut. Use a larger halo.",
            RuntimeWarning,
            stacklevel=2,
        )
    return TiledResult(n_cells=n_cells, n_tumor=n_tumor, outputs=written, provenance=prov)


__all__ = [
    "DEFAULT_TILE",
    "HALO_UM",
    "RegionReader",
    "TILE_ABOVE_PIXELS",
    "Tile",
    "TileJob",
    "TileResult",
    "TiledResult",
    "alignment",
    "plan",
    "probe",
    "process_tile",
    "run_tiled",
    "tile_grid",
    "watershed_fixed",
]
