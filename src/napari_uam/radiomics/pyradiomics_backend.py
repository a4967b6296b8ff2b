"""The reference backend: pyradiomics, called once per nucleus the fast way.

Each label is cropped to its bounding box plus a 2-pixel margin, wrapped as a (1, h, w)
SimpleITK volume with spacing (mpp, mpp, 1) and ``force2D`` (a true 2-D image would give only
one GLCM angle and 2 GLDM neighbours; the single-slice volume gives the usual 4 angles and 8
neighbours), and pyradiomics' feature classes are run on it directly: this is what
``RadiomicsFeatureExtractor.execute`` does after its bounding-box checks, minus the general
info (``additionalInfo=False``) and minus the refusal of 1-pixel or 1-row ROIs, so that every
cell gets pyradiomics' own value (or its own NaN) for every feature.

pyradiomics (``pyradiomics-bhklab``, import name ``radiomics``) is imported lazily: it is only
needed for this reference and the parity tests.
"""

from __future__ import annotations

import logging
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from scipy import ndimage as ndi

from .schema import FeatureSchema, to_channel

#: Pixels of background kept around each cell's bounding box (pyradiomics' default padDistance
#: is 5; 2 is enough for the 1-pixel neighbourhoods and keeps crops small).
MARGIN = 2

_CLASS_NAMES = {
    "shape2D": "RadiomicsShape2D",
    "firstorder": "RadiomicsFirstOrder",
    "glcm": "RadiomicsGLCM",
    "glrlm": "RadiomicsGLRLM",
    "glszm": "RadiomicsGLSZM",
    "gldm": "RadiomicsGLDM",
    "ngtdm": "RadiomicsNGTDM",
}


def _import_pyradiomics():
    try:
        import radiomics
        import SimpleITK as sitk
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "The pyradiomics reference backend needs pyradiomics: pip install 'napari-uam[reference]' "
            "(package pyradiomics-bhklab)."
        ) from err
    radiomics.setVerbosity(logging.CRITICAL)  # its per-feature warnings would flood the log
    logging.getLogger("radiomics").setLevel(logging.CRITICAL)
    return radiomics, sitk


def _feature_classes():
    from radiomics import firstorder, glcm, gldm, glrlm, glszm, ngtdm, shape2D

    mods = {"shape2D": shape2D, "firstorder": firstorder, "glcm": glcm, "glrlm": glrlm,
            "glszm": glszm, "gldm": gldm, "ngtdm": ngtdm}  # fmt: skip
    return {fam: getattr(mod, _CLASS_NAMES[fam]) for fam, mod in mods.items()}


def crop_boxes(labels: np.ndarray, ids: np.ndarray, margin: int = MARGIN) -> np.ndarray:
    """Bounding boxes (n, 4) = (y0, y1, x0, x1), half-open, grown by ``margin``, clipped."""
    slices = ndi.find_objects(labels)
    h, w = labels.shape
    out = np.empty((len(ids), 4), dtype=np.int64)
    for k, lab in enumerate(ids):
        sy, sx = slices[lab - 1]
        out[k] = (max(sy.start - margin, 0), min(sy.stop + margin, h),
                  max(sx.start - margin, 0), min(sx.stop + margin, w))  # fmt: skip
    return out


def _cell_features(channels: dict, mask: np.ndarray, schema: FeatureSchema, classes, sitk) -> list:
    """All schema features of one cell, given its cropped channels and boolean mask."""
    settings = schema.pyradiomics_settings
    spacing = (schema.mpp, schema.mpp, 1.0)  # SimpleITK order (x, y, z)
    m = sitk.GetImageFromArray(mask[None].astype(np.uint8))
    m.SetSpacing(spacing)
    fams = schema.family_features
    values = []

    def run(cls, img, names):
        obj = cls(img, m, **settings)
        for name in names:
            obj.enableFeatureByName(name)
        res = obj.execute()
        return [float(res.get(name, np.nan)) for name in names]

    first = next(iter(channels.values()))
    img0 = sitk.GetImageFromArray(first[None].astype(np.float64))
    img0.SetSpacing(spacing)
    values += run(classes["shape2D"], img0, fams["shape2D"])
    for ch in schema.channels:
        img = sitk.GetImageFromArray(channels[ch][None].astype(np.float64))
        img.SetSpacing(spacing)
        for fam in schema.families:
            values += run(classes[fam], img, fams[fam])
    return values


def _extract_chunk(args) -> np.ndarray:
    """Worker: features (n, F) of the cells in ``boxes`` (runs in a subprocess when parallel)."""
    chans, labels, ids, boxes, schema = args
    _, sitk = _import_pyradiomics()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)
    classes = _feature_classes()
    out = np.empty((len(ids), schema.n_features), dtype=np.float64)
    for k, (lab, (y0, y1, x0, x1)) in enumerate(zip(ids, boxes)):
        crop = {ch: c[y0:y1, x0:x1] for ch, c in chans.items()}
        out[k] = _cell_features(crop, labels[y0:y1, x0:x1] == lab, schema, classes, sitk)
    return out


def extract_pyradiomics(
    image: np.ndarray,
    labels: np.ndarray,
    schema: FeatureSchema,
    workers: int = 1,
    progress=None,
) -> tuple[np.ndarray, np.ndarray]:
    """Reference features of every label, one pyradiomics call per cell.

    Args:
        image: (H, W, 3) uint8 RGB at ``schema.mpp``.
        labels: (H, W) int32 instance map (0 = background).
        schema: the feature schema.
        workers: worker processes (1 = run in this process).
        progress: optional callable(fraction).

    Returns:
        (ids, values): (n,) int64 sorted label ids and (n, F) float64 features.
    """
    _import_pyradiomics()
    schema = schema.base  # plain radiomics; radiomics.extract assembles a v2 schema's views
    ids = np.unique(labels)
    ids = ids[ids > 0].astype(np.int64)
    if ids.size == 0:
        return ids, np.empty((0, schema.n_features))
    chans = {ch: to_channel(image, ch) for ch in schema.channels}
    boxes = crop_boxes(labels, ids)
    n_chunks = max(1, min(len(ids), 4 * workers if workers > 1 else 8))
    parts = np.array_split(np.arange(len(ids)), n_chunks)
    jobs = []
    for part in parts:
        if part.size == 0:
            continue
        # Ship only the region the chunk needs, not the whole patch, to the workers.
        y0, x0 = boxes[part, 0].min(), boxes[part, 2].min()
        y1, x1 = boxes[part, 1].max(), boxes[part, 3].max()
        sub = {ch: c[y0:y1, x0:x1] for ch, c in chans.items()}
        jobs.append((sub, labels[y0:y1, x0:x1], ids[part], boxes[part] - [y0, y0, x0, x0], schema))
    results = []
    if workers > 1:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            for k, res in enumerate(pool.map(_extract_chunk, jobs)):
                results.append(res)
                if progress is not None:
                    progress((k + 1) / len(jobs))
    else:
        for k, job in enumerate(jobs):
            results.append(_extract_chunk(job))
            if progress is not None:
                progress((k + 1) / len(jobs))
    return ids, np.concatenate(results, axis=0)
