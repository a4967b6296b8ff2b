"""Per-cell radiomics: one feature vector per nucleus, as pyradiomics defines it.

``extract(image, labels)`` returns a DataFrame indexed by label with one float64 column per
feature of the schema (:mod:`.schema`). Two backends compute the same numbers:

- ``"fast"`` (default, ``"auto"``): the batched engine of :mod:`.fast_backend`, NumPy on the
  CPU or PyTorch on CUDA, matching pyradiomics within 1e-6 relative (tested);
- ``"pyradiomics"``: the reference, one pyradiomics call per cell (:mod:`.pyradiomics_backend`).

NaN policy (degenerate cells). Both backends return pyradiomics' own values; ``extract`` never
raises for a degenerate cell. Concretely, for a 1-pixel nucleus every GLCM and GLRLM feature is
NaN (no neighbour pair in any direction) except ``glcm_MCC`` = 1, ``shape2D_Elongation`` is NaN
(0/0), GLSZM/GLDM/NGTDM are finite (NGTDM ``Coarseness`` = 1e6, pyradiomics' cap). A cell
with one grey level gets ``glcm_MCC`` = 1, ``glcm_Correlation`` = 1, ``glcm_Imc1``/``Imc2`` = 0,
first-order ``Skewness``/``Kurtosis`` = 0. Texture angles holding no neighbour pair are left
out of the angle mean, as pyradiomics deletes empty angles. One documented difference: for
GLRLM, pyradiomics' C code also drops *most but not all* directions in which the cell has no
two adjacent pixels (a 1-pixel-wide cell, seen across its width); the fast engine always drops
them. Real nuclei at 0.5 um/px are thicker than one pixel in every direction, and the pipeline
filters nuclei under its minimum area, so this only concerns synthetic or sliver cells.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from skimage.segmentation import expand_labels

from ..device import resolve_device, retry_smaller_on_oom
from ..errors import UAMError
from ..errors import raise_if_cancelled as check_cancel
from ..instances import centroids
from ..validation import as_labels, as_rgb_uint8
from .context import context_features
from .pyradiomics_backend import extract_pyradiomics
from .schema import DEFAULT_SCHEMA, FeatureSchema, get_schema
from .stain_norm import estimate_stains, normalise_stain

__all__ = ["extract", "extract_many", "FeatureSchema", "DEFAULT_SCHEMA", "get_schema"]

BACKENDS = ("auto", "fast", "pyradiomics")


def _frame(ids: np.ndarray, values: np.ndarray, schema: FeatureSchema):
    index = pd.Index(np.asarray(ids, dtype=np.int64), name="label")
    df = pd.DataFrame(np.asarray(values, dtype=np.float64), index=index, columns=list(schema.feature_names))
    df.attrs["schema_id"] = schema.schema_id
    return df


def _engine_device(device: str) -> str:
    """Map a user device to the engine's: NumPy for the CPU, torch for CUDA."""
    dev = resolve_device(device)
    return "numpy" if dev == "cpu" else dev


#: Smallest chunk (cell pixels) tried after a GPU out-of-memory error before the CPU fallback.
MIN_OOM_CHUNK_PIXELS = 1 << 16


def _run_engine(images, labels, schema: FeatureSchema, engine: str, progress=None, cancel=None) -> list:
    """Run the fast engine on ``engine``; on out-of-memory, smaller chunks, then NumPy on the CPU.

    A torch engine (``"cuda[:n]"``, or ``"cpu"`` for torch on the CPU) that raises
    ``torch.cuda.OutOfMemoryError`` is retried with 4-fold smaller chunks of cell pixels down
    to :data:`MIN_OOM_CHUNK_PIXELS`, then the NumPy engine runs the whole batch on the CPU.
    Each step issues a ``RuntimeWarning`` saying so. The NumPy engine is run as is.
    """
    from .fast_backend import _CHUNK_PIXELS, extract_batch

    if engine == "numpy":
        return extract_batch(images, labels, schema, engine, progress, cancel=cancel)

    def on_cpu(chunk, _err):
        warnings.warn(
            f"{engine} ran out of memory measuring nuclei even in chunks of {chunk} cell "
            "pixels; measuring on the CPU instead (slower).",
            RuntimeWarning,
            stacklevel=3,
        )
        return extract_batch(images, labels, schema, "numpy", progress, cancel=cancel)

    return retry_smaller_on_oom(
        lambda chunk: extract_batch(images, labels, schema, engine, progress, chunk_pixels=chunk, cancel=cancel),
        _CHUNK_PIXELS["cuda" if str(engine).startswith("cuda") else "cpu"],
        MIN_OOM_CHUNK_PIXELS,
        lambda chunk: f"{engine} ran out of memory measuring nuclei; retrying in chunks of {chunk} cell pixels.",
        on_cpu,
    )


def _base_values(img, lab, schema: FeatureSchema, backend: str, device: str, progress=None, cancel=None):
    """(ids, values) of one plain radiomics schema (no views) on one image."""
    check_cancel(cancel)
    if not np.any(lab > 0):
        return np.empty(0, np.int64), np.empty((0, schema.n_features))
    if backend == "pyradiomics":

        def tick(fraction):  # pyradiomics reports per cell: poll the cancel there
            check_cancel(cancel)
            if progress is not None:
                progress(fraction)

        out = extract_pyradiomics(img, lab, schema, progress=tick)
        check_cancel(cancel)
        return out
    [(ids, values)] = _run_engine([img], [lab], schema, _engine_device(device), progress, cancel)
    return ids, values


def _share(progress, lo: float, hi: float):
    """``progress`` for one step of a measurement: its fractions mapped onto [lo, hi]."""
    if progress is None:
        return None
    return lambda f: progress(lo + (hi - lo) * min(max(float(f), 0.0), 1.0))


#: Side (pixels) of the tiles :func:`ring_labels` grows the labels in.
RING_TILE_PX = 512


def ring_labels(labels: np.ndarray, ring_px: int, cancel=None) -> np.ndarray:
    """The ring of ``ring_px`` pixels around each nucleus, labelled with the nucleus' id.

    Background pixels within ``ring_px`` of a nucleus go to the nearest one (so rings of
    touching nuclei do not overlap); the nucleus' own pixels are not part of its ring.

    Grown tile by tile (:data:`RING_TILE_PX`, each with a margin of ``2 * ring_px + 2``
    pixels, more than any pixel within reach of the tile needs), polling ``cancel`` between
    tiles: the same labels as growing the whole image at once (tested), in less time.
    """
    lab = np.asarray(labels)
    d = max(1, int(ring_px))
    margin, tile = 2 * d + 2, RING_TILE_PX
    h, w = lab.shape
    grown = np.zeros_like(lab)
    for y0 in range(0, h, tile):
        for x0 in range(0, w, tile):
            check_cancel(cancel)
            y1, x1 = min(h, y0 + tile), min(w, x0 + tile)
            a0, b0 = max(0, y0 - margin), max(0, x0 - margin)
            part = expand_labels(lab[a0 : min(h, y1 + margin), b0 : min(w, x1 + margin)], distance=d)
            grown[y0:y1, x0:x1] = part[y0 - a0 : y1 - a0, x0 - b0 : x1 - b0]
    grown[lab > 0] = 0
    return grown.astype(np.int32, copy=False)


def _measure(img, lab, schema: FeatureSchema, backend: str, device: str, progress=None, stain=None, cancel=None):
    """Every column of ``schema`` for one image: base radiomics, then the views it names.

    ``stain``: a :class:`~.stain_norm.StainEstimate` to normalise with (a whole slide's, for
    one of its tiles); None estimates it from ``img``. ``progress`` covers every view (each
    engine run gets its share of [0, 1]); ``cancel`` is polled inside each engine run (between
    chunks of cells) and between the steps."""
    base = schema.base
    views = 1 + (schema.normalised_view is not None) + (schema.ring_view is not None)
    share = [(k / views, (k + 1) / views) for k in range(views)]
    ids, values = _base_values(img, lab, base, backend, device, _share(progress, *share[0]), cancel)
    df = _frame(ids, values, base)
    if base is schema:
        return df
    parts = [df]
    source = img
    step = 1
    if schema.normalised_view is not None:
        check_cancel(cancel)
        estimate = stain if stain is not None else estimate_stains(img)
        check_cancel(cancel)
        source = normalise_stain(img, estimate, cancel)
        view = schema.normalised_view
        _, vals = _base_values(source, lab, view, backend, device, _share(progress, *share[step]), cancel)
        step += 1
        nf = _frame(ids, vals, view)
        nf = nf[[c for c in nf.columns if not c.startswith("shape2D_")]]
        parts.append(nf.add_prefix("norm_"))
        df.attrs["stain"] = estimate.as_dict()
    if schema.ring_view is not None:
        view = schema.ring_view
        check_cancel(cancel)
        ring = ring_labels(lab, round(schema.ring_um / schema.mpp), cancel)
        rids, vals = _base_values(source, ring, view, backend, device, _share(progress, *share[step]), cancel)
        rf = _frame(rids, vals, view)
        rf = rf[[c for c in rf.columns if not c.startswith("shape2D_")]].reindex(df.index)
        parts.append(rf.add_prefix("ring_"))
    check_cancel(cancel)
    out = pd.concat(parts, axis=1)
    if schema.context:
        # Rows of ``out`` are the labels present, in increasing order: centroids() gives that order.
        cents = centroids(lab) * schema.mpp
        check_cancel(cancel)
        out = pd.concat([out, context_features(cents, out, schema)], axis=1)
        check_cancel(cancel)
    out = out[list(schema.feature_names)]
    out.attrs.update(df.attrs)
    out.attrs["schema_id"] = schema.schema_id
    return out


def extract(
    image, labels, schema=None, backend: str = "auto", device: str = "auto", progress=None, stain=None, cancel=None
):
    """Per-cell features of every nucleus in ``labels``.

    Args:
        image: (H, W, 3) RGB image at ``schema.mpp`` um/px (uint8, or anything
            :func:`napari_uam.validation.as_rgb_uint8` accepts).
        labels: (H, W) integer instance map, 0 = background.
        schema: a :class:`FeatureSchema`, a schema id, or None for :data:`DEFAULT_SCHEMA`.
        backend: ``"auto"``/``"fast"`` (batched engine) or ``"pyradiomics"`` (reference).
        device: ``"auto"`` (CUDA when torch sees one, else NumPy on the CPU), ``"cpu"``,
            ``"cuda"``; ignored by the pyradiomics backend.
        progress: optional callable(fraction in [0, 1]), called a few times a second.
        stain: the :class:`~napari_uam.radiomics.stain_norm.StainEstimate` to normalise
            with (a whole image's, when ``image`` is one of its tiles); None: estimated here.
        cancel: optional ``cancel() -> bool``, polled between chunks of cells (about every
            :data:`~.fast_backend.CHUNK_SECONDS` on the CPU) and between views and steps.

    Returns:
        pandas.DataFrame (n_cells, n_features) float64, index ``label`` (int, sorted), one row
        per label > 0 present, columns ``schema.feature_names``; ``df.attrs["schema_id"]``;
        ``df.attrs["stain"]`` the image's stain estimate when the schema normalises stains.
        Both backends compute the radiomics of every view (nucleus, normalised image, ring);
        the context columns are computed from them in NumPy.

    Raises:
        InvalidImageError, InvalidLabelsError: unusable inputs.
        UAMError: unknown backend. DeviceError: unavailable device.
        CancelledError: ``cancel()`` returned True.

    A GPU out-of-memory error is retried in smaller chunks, then on the CPU, with a
    ``RuntimeWarning`` (see :func:`_run_engine`).
    """
    schema = get_schema(schema)
    img = as_rgb_uint8(image)
    lab = as_labels(labels, img.shape)
    if backend not in BACKENDS:
        raise UAMError(f"Unknown radiomics backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if progress is not None:
        progress(0.0)
    df = _measure(img, lab, schema, backend, device, progress, stain, cancel)
    if progress is not None:
        progress(1.0)
    return df


def extract_many(images, labels, schema=None, device: str = "auto", progress=None, cancel=None) -> list:
    """Fast-engine features of many patches in one batch (one DataFrame per patch).

    Args:
        images: list of (H_b, W_b, 3) RGB patches at ``schema.mpp``.
        labels: list of (H_b, W_b) instance maps.

    Returns:
        list of DataFrames as :func:`extract` returns.
    """
    schema = get_schema(schema)
    imgs = [as_rgb_uint8(im) for im in images]
    labs = [as_labels(lb, im.shape) for lb, im in zip(labels, imgs)]
    if schema.base is not schema:  # views are per image (its own stain estimate, rings)
        return [_measure(im, lb, schema, "fast", device, cancel=cancel) for im, lb in zip(imgs, labs)]
    res = _run_engine(imgs, labs, schema, _engine_device(device), progress, cancel)
    return [_frame(ids, values, schema) for ids, values in res]
