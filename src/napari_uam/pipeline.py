"""The headless napari-uam pipeline: image -> nuclei -> cell table -> classes.

Each stage is a plain function so that widgets, the command line and tests can call one
stage at a time; :func:`run` chains them and records provenance. Nothing here imports Qt.

Segmentation backends work at the pixel size they were built for and return labels at the
image's resolution (so they overlay the image in napari); features are measured at the
feature schema's pixel size (0.5 um/px), to which image and labels are resampled, so that
20x and 40x patches give comparable features.

Progress is reported through ``progress(stage, fraction)`` callables and a run can be
stopped between steps through ``cancel() -> bool`` (raises :class:`CancelledError`).
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass, field
from typing import Callable, Optional

import numpy as np
import pandas as pd

from . import provenance as P
from . import radiomics
from .classify.cache import weights_cache
from .classify.checkpoint import default_weights_path, load_classifier
from .device import resolve_device
from .domain import OutOfDomainWarning, UnknownDomainWarning
from .errors import CancelledError, InvalidLabelsError, NoNucleiError
from .io.regions import tumor_area
from .pixel_size import PixelSizeWarning, check_mpp, estimate_mpp
from .radiomics.schema import DEFAULT_SCHEMA
from .sample_data import SAMPLE_MPP, sample_image
from .scale import rescale_image, resize_labels, scale_factor
from .segment import resolve_backend, segment
from .tumor import load_tumor_model, predict_tumor_mask, tumor_weights_available
from .validation import as_labels, as_rgb_uint8, check_brightfield, check_he_stain, check_he_tissue

Progress = Optional[Callable[[str, float], None]]
Cancel = Optional[Callable[[], bool]]

#: Columns every cell table starts with, before the feature columns.
BASE_COLUMNS = ("label", "y", "x", "area_um2")
#: Columns added by :func:`classify_cells`.
CLASS_COLUMNS = ("class", "tumor_probability")


@dataclass
class PipelineResult:
    """Everything one run produced for one image.

    Attributes:
        labels: (H, W) int32 nuclei instance labels at the image's resolution, 0 = background.
        table: one row per label: ``label, y, x, area_um2`` (centroid in image pixels, area in
            um^2), then ``class, tumor_probability`` once classified, then the feature columns.
        tumor_mask: (H, W) uint8 tumor-region mask (1 = tumor) or None when no region model ran.
        provenance: versions, model id and hash, schema id, parameters and stage timings.
        tumor_probability: (H, W) float32 per-pixel tumor probability behind ``tumor_mask``
            (:func:`napari_uam.tumor.predict_tumor_mask`), or None.
    """

    labels: np.ndarray
    table: pd.DataFrame
    tumor_mask: Optional[np.ndarray] = None
    provenance: dict = field(default_factory=dict)
    tumor_probability: Optional[np.ndarray] = None

    @property
    def tumor_cells(self) -> np.ndarray:
        """(H, W) int32 labels keeping only the nuclei classified as tumor."""
        return tumor_cell_labels(self.labels, self.table)


def _tick(progress: Progress, stage: str, fraction: float) -> None:
    if progress is not None:
        progress(stage, float(fraction))


def _check_cancel(cancel: Cancel) -> None:
    if cancel is not None and cancel():
        raise CancelledError("Run cancelled; no result was produced.")


def segment_nuclei(
    image,
    mpp: float,
    *,
    backend: str = "auto",
    device: str = "auto",
    progress: Progress = None,
    cancel: Cancel = None,
    return_backend: bool = False,
):
    """Segment nuclei of an RGB H&E image.

    Args:
        image: (H, W, 3) RGB image (uint8, uint16, float; see :func:`as_rgb_uint8`).
        mpp: microns per pixel of ``image`` (0.25 at 40x, 0.5 at 20x).
        backend: segmentation backend name (``"auto"`` picks the best installed).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` for backends running a network.
        progress: optional ``progress(stage, fraction)``.
        cancel: optional ``cancel() -> bool``; when it returns True the run stops.
        return_backend: also return the name of the backend that produced the labels
            (``"auto"`` may fall back to the watershed, see :func:`napari_uam.segment.segment`).

    Returns:
        (H, W) int32 labels, 0 = background, nuclei numbered 1..N
        (``(labels, backend_name)`` when ``return_backend``).
    """
    rgb = as_rgb_uint8(image)
    mpp = check_mpp(mpp)
    # The H&E segmenters would take a fluorescence image's black background for stain.
    check_brightfield(rgb)
    # Blank, noise, underexposed or grey input gets a clear refusal, never a confident table.
    check_he_tissue(rgb)
    check_he_stain(rgb)
    _check_cancel(cancel)
    _tick(progress, "segment", 0.0)
    # Each backend works at the pixel size it was designed or trained for and returns labels
    # at the image's own resolution, so nothing is resampled here.
    labels, used = segment(
        rgb,
        mpp,
        backend=backend,
        device=device,
        return_backend=True,
        cancel=cancel,
        progress=(lambda f, _msg="": _tick(progress, "segment", f)),
    )
    _check_cancel(cancel)
    if labels.max() == 0:
        raise NoNucleiError(
            f"No nuclei found in this {rgb.shape[0]}x{rgb.shape[1]} image at {mpp:g} um/px. "
            "Check that it is an H&E image with tissue and that the pixel size is right."
        )
    estimate = estimate_mpp(labels, mpp)
    if estimate is not None and estimate.disagrees:
        warnings.warn(estimate.message(), PixelSizeWarning, stacklevel=2)
    _tick(progress, "segment", 1.0)
    return (labels, used) if return_backend else labels


def cell_geometry(labels: np.ndarray, mpp: float) -> pd.DataFrame:
    """Label id, centroid (pixels) and area (um^2) of every nucleus, sorted by label."""
    lab = np.asarray(labels)
    flat = lab.ravel()
    n = int(flat.max()) + 1 if flat.size else 1
    # Per-label pixel counts and coordinate sums by bincount over the labelled pixels only:
    # no unique() sort and no (H, W) coordinate images. The sums are of integers, exact in
    # float64, so the order of addition does not change them.
    where = np.flatnonzero(flat)
    idx = flat[where]
    pixels = np.bincount(idx, minlength=n)
    ids = np.flatnonzero(pixels[1:]) + 1
    if ids.size == 0:
        return pd.DataFrame({c: pd.Series(dtype="int64" if c == "label" else "float64") for c in BASE_COLUMNS})
    yy, xx = np.divmod(where, lab.shape[1])
    sum_y = np.bincount(idx, weights=yy, minlength=n)
    sum_x = np.bincount(idx, weights=xx, minlength=n)
    counts = pixels[ids].astype(np.float64)
    cy = sum_y[ids] / counts
    cx = sum_x[ids] / counts
    return pd.DataFrame({"label": ids.astype(np.int64), "y": cy, "x": cx, "area_um2": counts * mpp * mpp})


def measure_cells(
    image,
    labels,
    mpp: float,
    *,
    schema=None,
    backend: str = "auto",
    device: str = "auto",
    progress: Progress = None,
    cancel: Cancel = None,
) -> pd.DataFrame:
    """Measure every nucleus: geometry plus the radiomics features of ``schema``.

    Args:
        image: (H, W, 3) RGB image.
        labels: (H, W) integer nuclei labels of the same height and width.
        mpp: microns per pixel of ``image``.
        schema: feature schema (default: the shipped one).
        backend: ``"fast"``, ``"pyradiomics"`` or ``"auto"``.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"`` for the fast engine.
        progress: optional ``progress("measure", fraction)``, a few times a second.
        cancel: optional ``cancel() -> bool``, polled between the steps and inside the
            radiomics engine between chunks of cells (a cancel acts within about 0.1 s of
            engine work); True raises :class:`CancelledError`.

    Returns:
        One row per label: ``label, y, x, area_um2`` then one column per schema feature.
        ``table.attrs["schema_id"]`` names the schema.
    """
    rgb = as_rgb_uint8(image)
    lab = as_labels(labels, rgb.shape)
    mpp = check_mpp(mpp)
    # Features of a fluorescence image mean nothing to a classifier trained on H&E.
    check_brightfield(rgb)
    check_he_stain(rgb)
    _check_cancel(cancel)
    _tick(progress, "measure", 0.0)
    if not lab.any():
        raise NoNucleiError("The labels contain no nucleus (all zero): segment or paint nuclei first.")
    return measure_features(rgb, lab, mpp, schema=schema, backend=backend, device=device, progress=progress,
                            cancel=cancel)  # fmt: skip


def measure_features(
    rgb: np.ndarray,
    labels: np.ndarray,
    mpp: float,
    *,
    schema=None,
    backend: str = "auto",
    device: str = "auto",
    stain=None,
    progress: Progress = None,
    cancel: Cancel = None,
) -> pd.DataFrame:
    """:func:`measure_cells` on inputs already checked: geometry, then the schema's features
    at the schema's pixel size (the one home of "rescale to the feature pixel size, then
    measure"). Tiles call it directly: the whole-image checks ran once on the overview, and
    on a tile of background they would misfire.

    Args:
        rgb: (H, W, 3) uint8 RGB.
        labels: (H, W) int labels with at least one nucleus.
        stain: the image's stain estimate (tiles pass the whole image's), else estimated here.
        schema, backend, device, progress, cancel: as in :func:`measure_cells`.
    """
    schema = schema or DEFAULT_SCHEMA
    geom = cell_geometry(labels, mpp)
    _check_cancel(cancel)
    work = rescale_image(rgb, scale_factor(mpp, schema.mpp))
    _check_cancel(cancel)
    lab_w = resize_labels(labels, work.shape[:2])
    feats = radiomics.extract(
        work,
        lab_w,
        schema=schema,
        backend=backend,
        device=device,
        stain=stain,
        progress=(lambda f: _tick(progress, "measure", f)),
        cancel=cancel,
    )
    _check_cancel(cancel)
    # Nuclei too small to survive resampling to the working pixel size get no features (NaN).
    feats = feats.reindex(geom["label"].to_numpy())
    table = pd.concat([geom.reset_index(drop=True), feats.reset_index(drop=True)], axis=1)
    table.attrs["schema_id"] = schema.schema_id
    if stain is None and feats.attrs.get("stain") is not None:
        # The image's stain estimate: the trust signal needs it (tiles keep the whole image's).
        table.attrs["stain"] = feats.attrs["stain"]
    _tick(progress, "measure", 1.0)
    return table


def feature_columns(table: pd.DataFrame) -> list[str]:
    """The feature columns of a cell table (everything but geometry and class columns)."""
    skip = set(BASE_COLUMNS) | set(CLASS_COLUMNS) | {"index"}
    return [c for c in table.columns if c not in skip]


def get_classifier(model=None, device: str = "auto"):
    """Return a loaded cell classifier.

    Args:
        model: None for the shipped default weights, a checkpoint path, or an already
            loaded classifier (returned as is).
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.
    """
    if model is not None and hasattr(model, "predict_proba"):
        return model
    path = None if model is None else str(model)
    device = resolve_device(device)
    # Keyed on the file's identity (the default weights' file when ``path`` is None).
    key_path = default_weights_path() if path is None else path
    return weights_cache.get("classifier", key_path, device, lambda: load_classifier(path, device=device))


def classify_cells(
    table: pd.DataFrame,
    *,
    model=None,
    device: str = "auto",
    progress: Progress = None,
    cancel: Cancel = None,
) -> pd.DataFrame:
    """Classify every cell of a measured table.

    Args:
        table: output of :func:`measure_cells`.
        model: None (shipped default), a checkpoint path or a loaded classifier.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        A copy of ``table`` with ``class`` (name) and ``tumor_probability`` inserted after the
        geometry columns. Raises :class:`SchemaMismatchError` if the model was trained on
        other features.
    """
    clf = get_classifier(model, device)
    _check_cancel(cancel)
    _tick(progress, "classify", 0.0)
    out = table.drop(columns=[c for c in CLASS_COLUMNS if c in table.columns]).copy()
    feats = out[feature_columns(out)]
    if len(out):
        proba = clf.predict_proba(feats)
        names = np.asarray(clf.class_names, dtype=object)
        cls = names[np.argmax(proba, axis=1)]
        tumor_p = proba[:, clf.tumor_class].astype(np.float64)
    else:
        cls = np.array([], dtype=object)
        tumor_p = np.array([], dtype=np.float64)
    pos = len(BASE_COLUMNS)
    out.insert(pos, "class", pd.Series(cls, index=out.index, dtype=object))
    out.insert(pos + 1, "tumor_probability", tumor_p)
    out.attrs.update(table.attrs)
    out.attrs["model_id"] = clf.model_id
    out.attrs["tumor_class"] = clf.class_names[clf.tumor_class]
    _tick(progress, "classify", 1.0)
    return out


def check_domain(clf, table: pd.DataFrame, prov: dict):
    """Record how far the image lies from the classifier's training data; warn when outside.

    Adds ``stain`` (the image's stain estimate) and ``domain`` (distance, threshold,
    in_domain, status) to ``prov``; issues an :class:`~napari_uam.domain.OutOfDomainWarning`
    (the CLI prints it, the dock shows it) when the image is out of the training domain.
    A model without trust statistics cannot judge the image: ``domain`` is then
    ``{"status": "unknown", "in_domain": None, "reason": ...}`` (never "in domain") and an
    :class:`~napari_uam.domain.UnknownDomainWarning` says so.
    Returns the :class:`~napari_uam.domain.DomainCheck` (None: the model has no statistics).
    """
    stain = table.attrs.get("stain")
    if stain is not None:
        prov["stain"] = stain
    if len(table) == 0:
        return None
    return record_domain(clf, clf.check_domain(table[feature_columns(table)], stain), prov)


def record_domain(clf, check, prov: dict):
    """Record a :class:`~napari_uam.domain.DomainCheck` (None: the model has no trust model)
    in ``prov["domain"]`` and warn as :func:`check_domain` says; the one home of that rule for
    whole images and tiled ones."""
    if check is None:
        reason = untrusted_reason(clf)
        prov["domain"] = {"status": "unknown", "in_domain": None, "reason": reason}
        warnings.warn(
            f"Model {clf.model_id!r} cannot say whether this image is like its training data: {reason}. "
            "Its tumor calls are unchecked; review them, or fine-tune from the shipped model, whose "
            "checkpoints carry a trust model.",
            UnknownDomainWarning, stacklevel=3,
        )  # fmt: skip
        return None
    prov["domain"] = check.as_dict()
    if check.status == "unknown":  # too few cells to judge: say so, do not claim "outside"
        warnings.warn(
            f"Too few cells to judge whether this image is like the classifier's training data "
            f"({prov['domain']['reason']}); its tumor calls are unchecked.",
            UnknownDomainWarning, stacklevel=3,
        )  # fmt: skip
    elif not check.in_domain:
        warnings.warn(check.message(), OutOfDomainWarning, stacklevel=3)
    return check


def untrusted_reason(clf) -> str:
    """Why a classifier has no trust model (from its model card when the trainer said)."""
    card = getattr(clf, "card", None) or {}
    said = ((card.get("training") or {}).get("trust") or {}).get("reason")
    base = f"the checkpoint {clf.model_id!r} carries no trust statistics (feature statistics of its training data)"
    return f"{base}; {said}" if said else base


def tumor_cell_labels(labels: np.ndarray, table: pd.DataFrame) -> np.ndarray:
    """Labels keeping only the nuclei whose class is the tumor class (others set to 0)."""
    if "class" not in table.columns:
        raise InvalidLabelsError("The cell table has no 'class' column yet: run Classify cells first.")
    tumor_name = table.attrs.get("tumor_class", "tumor")
    keep = table.loc[table["class"] == tumor_name, "label"].to_numpy(dtype=np.int64)
    if labels.size == 0:
        return labels.copy()
    lut = np.zeros(int(labels.max()) + 1, dtype=labels.dtype)
    keep = keep[keep <= labels.max()]
    lut[keep] = keep.astype(labels.dtype)
    return lut[labels]


@dataclass
class StageState:
    """What :func:`run_stages` has computed so far (one object, filled stage by stage)."""

    labels: Optional[np.ndarray] = None
    table: Optional[pd.DataFrame] = None
    segment_backend: str = "given"
    classifier: object = None
    domain: object = None  # the DomainCheck of check_domain (None: no trust statistics)
    provenance: dict = field(default_factory=dict)  # check_domain's records ("stain", "domain")
    tumor_model: object = None
    tumor_probability: Optional[np.ndarray] = None
    ran: list = field(default_factory=list)
    timings: dict = field(default_factory=dict)


@dataclass(frozen=True)
class TileContext:
    """What a tile of a larger image takes from the whole image (see :mod:`napari_uam.batch.tiles`).

    The whole-image checks (brightfield, tissue, stain) and statistics ran once on the image's
    overview; on a tile of background they would misfire, and a per-tile estimate would make a
    tile's result depend on what else it holds. So a tile is segmented by ``segment`` (which
    carries the image-level statistics), measured with the image's ``stain`` estimate, and its
    domain is judged over all tiles by the caller.
    """

    segment: Callable[[np.ndarray], np.ndarray]  # (h, w, 3) uint8 -> (h, w) int32 labels
    stain: object = None  # the whole image's StainEstimate


#: The last item every :func:`run_stages` run yields.
DONE = "done"


def run_stages(
    rgb: np.ndarray,
    mpp: float,
    *,
    labels=None,
    table=None,
    measure: bool = True,
    classify: bool = True,
    model=None,
    segment_backend: str = "auto",
    radiomics_backend: str = "auto",
    device: str = "auto",
    tumor_mask="auto",
    tumor_model=None,
    provenance: Optional[dict] = None,
    domain_warnings: bool = True,
    check_labels: Optional[Callable[[np.ndarray], None]] = None,
    tile: Optional[TileContext] = None,
    progress: Progress = None,
    cancel: Cancel = None,
):
    """The one stage runner: load the classifier, segment, measure, classify, judge the domain,
    predict the tumor region, in that order, skipping what is given or not asked for.

    A generator, so that a caller can act between stages (the dock reports progress and lets
    Cancel act; :func:`run` records provenance; a tile keeps only the nuclei of its core): it
    yields ``(stage, state)`` after each stage that ran (``"load"``, ``"segment"``,
    ``"measure"``, ``"classify"``, ``"tumor mask"``), then ``(DONE, state)``, and returns the
    :class:`StageState`. A caller may replace ``state.labels`` / ``state.table`` between stages
    (the next stage uses them) and may stop iterating at any point. :func:`run` (so the batch
    runner), the dock's worker and every tile of a large image go through it.

    Args:
        rgb: (H, W, 3) uint8 RGB (validated by the caller).
        labels, table: given nuclei labels / measured table (their stages are skipped).
        measure: False stops after the nuclei (geometry only); implies no classification.
        classify: False stops after measuring.
        model: classifier (None: shipped weights, a path, or loaded); loaded first, so that a
            broken checkpoint is reported before minutes of segmenting and measuring.
        tumor_mask: ``"auto"`` (when weights are installed or ``tumor_model`` is given), True, False.
        provenance: dict that :func:`check_domain` records into (default: a new one).
        domain_warnings: False: the domain check records, but issues no warning (the dock
            says it in its status instead).
        check_labels: called with the labels before measuring (the dock's own messages).
        tile: ``rgb`` is a tile of a larger image (:class:`TileContext`): segmented and
            measured with the image's statistics, no per-image checks, no domain check and
            no tumor mask (the caller judges the image as a whole).
        segment_backend, radiomics_backend, device, progress, cancel: as in :func:`run`.
    """
    st = StageState(labels=labels, table=table, provenance={} if provenance is None else provenance)
    classify = classify and measure
    if classify:
        _tick(progress, "load", 0.0)
        st.classifier = get_classifier(model, device)
        yield "load", st
        _check_cancel(cancel)
    if st.labels is None:
        t = time.perf_counter()
        if tile is not None:
            st.labels, st.segment_backend = tile.segment(rgb), segment_backend
        else:
            st.segment_backend = resolve_backend(segment_backend, mpp)  # an unknown name fails before any work
            st.labels, st.segment_backend = segment_nuclei(
                rgb, mpp, backend=segment_backend, device=device, progress=progress, cancel=cancel, return_backend=True
            )
        st.timings["segment_s"] = time.perf_counter() - t
        st.ran.append("segment")
        yield "segment", st
        _check_cancel(cancel)
    else:
        st.labels = as_labels(st.labels, rgb.shape)
    if check_labels is not None:
        check_labels(st.labels)
    if st.table is None:
        if not measure:
            st.table = cell_geometry(st.labels, mpp)
        else:
            t = time.perf_counter()
            if tile is not None:
                st.table = measure_features(rgb, st.labels, mpp, backend=radiomics_backend, device=device,
                                            stain=tile.stain, progress=progress, cancel=cancel)  # fmt: skip
            else:
                st.table = measure_cells(
                    rgb, st.labels, mpp, backend=radiomics_backend, device=device, progress=progress, cancel=cancel
                )
            st.timings["measure_s"] = time.perf_counter() - t
            st.ran.append("measure")
            yield "measure", st
            _check_cancel(cancel)
    if not classify:
        yield DONE, st
        return st
    t = time.perf_counter()
    st.table = classify_cells(st.table, model=st.classifier, device=device, progress=progress, cancel=cancel)
    st.timings["classify_s"] = time.perf_counter() - t
    st.ran.append("classify")
    yield "classify", st
    if tile is None:
        with warnings.catch_warnings():
            if not domain_warnings:
                warnings.simplefilter("ignore", OutOfDomainWarning)
                warnings.simplefilter("ignore", UnknownDomainWarning)
            st.domain = check_domain(st.classifier, st.table, st.provenance)
        _check_cancel(cancel)
    wants_mask = tumor_mask is True or (tumor_mask == "auto" and _tumor_model_available(tumor_model))
    if tile is None and wants_mask:
        t = time.perf_counter()
        st.tumor_model = tumor_model if hasattr(tumor_model, "predict") else load_tumor_model(tumor_model, device)
        st.tumor_probability = predict_tumor_mask(rgb, mpp, st.table, model=st.tumor_model, progress=progress)
        st.timings["tumor_mask_s"] = time.perf_counter() - t
        st.ran.append("tumor mask")
        yield "tumor mask", st
        _check_cancel(cancel)
    yield DONE, st
    return st


def run(
    image,
    mpp: float,
    *,
    labels=None,
    segment_backend: str = "auto",
    radiomics_backend: str = "auto",
    model=None,
    device: str = "auto",
    classify: bool = True,
    measure: bool = True,
    tumor_mask="auto",
    tumor_model=None,
    progress: Progress = None,
    cancel: Cancel = None,
) -> PipelineResult:
    """Run the whole pipeline on one image (through :func:`run_stages`).

    Args:
        image: (H, W, 3) RGB H&E image.
        mpp: microns per pixel of ``image``.
        labels: optional (H, W) nuclei labels to use instead of segmenting.
        segment_backend: segmentation backend (``"auto"``: the best installed).
        radiomics_backend: ``"fast"`` (default through ``"auto"``) or ``"pyradiomics"``.
        model: None (shipped default weights), a checkpoint path or a loaded classifier.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        classify: False stops after measuring.
        measure: False stops after segmenting: the table holds the geometry only
            (``napari-uam segment``); implies ``classify=False``.
        tumor_mask: tumor-region mask after classifying: ``"auto"`` when tumor-mask weights
            are installed (or ``tumor_model`` is given), True (required), False (never).
        tumor_model: None (shipped ``tumor_mask.pt``), a checkpoint path or a loaded
            :class:`napari_uam.tumor.TumorMaskModel`.
        progress: optional ``progress(stage, fraction)``; the mask reports ``"tumor mask"``.
        cancel: optional ``cancel() -> bool``.

    Returns:
        :class:`PipelineResult`.
    """
    rgb = as_rgb_uint8(image)
    mpp = check_mpp(mpp)
    prov: dict = {}

    def base(st: StageState) -> None:
        prov.update(versions=P.versions(), image_sha256_16=P.image_hash(rgb), image_shape=list(rgb.shape))
        prov.update(P.settings(mpp, measured=measure, radiomics_backend=radiomics_backend, device=device))
        prov.update(segment_backend=st.segment_backend, n_cells=int(len(st.table)), time_utc=P.utc_now())
        if measure:
            estimate = estimate_mpp(st.labels, mpp)
            if estimate is not None:
                prov["mpp_estimate"] = round(estimate.estimate, 4)

    stages = run_stages(
        rgb,
        mpp,
        labels=labels,
        measure=measure,
        classify=classify,
        model=model,
        segment_backend=segment_backend,
        radiomics_backend=radiomics_backend,
        device=device,
        tumor_mask=tumor_mask,
        tumor_model=tumor_model,
        provenance=prov,
        progress=progress,
        cancel=cancel,
    )
    for stage, st in stages:
        if stage == "measure":
            base(st)
        elif stage == "classify":
            clf = st.classifier
            prov.update(
                P.model_fields(clf),
                model_device=str(clf.device),
                calibration_temperature=clf.temperature,
                calibration_logit_offset=[float(v) for v in clf.logit_offset],
            )
    if "n_cells" not in prov:  # nothing was measured (segment only)
        base(st)
    prob = st.tumor_probability
    if prob is not None:
        prov.update(P.tumor_model_fields(st.tumor_model))
        # Per-image tumor burden, in the provenance (parquet metadata, done marker) and the
        # table's attrs (stored with the parquet), so a cohort can be summarised from files.
        area = tumor_area(prob > 0.5, rgb, mpp).as_dict()
        prov.update(area)
        st.table.attrs.update({k: v for k, v in area.items() if v is not None})
    prov["timings"] = st.timings
    return PipelineResult(
        labels=st.labels,
        table=st.table,
        tumor_mask=None if prob is None else (prob > 0.5).astype(np.uint8),
        provenance=prov,
        tumor_probability=prob,
    )


def _tumor_model_available(tumor_model) -> bool:
    return tumor_model is not None or tumor_weights_available()


#: Side of the crop of the shipped sample that :func:`warm_up` runs the pipeline on (pixels).
WARM_UP_PX = 256


def warm_up(device: str = "auto") -> dict:
    """Pay the pipeline's one-time costs now, on a crop of the shipped sample.

    The first run in a process starts CUDA, loads (or, once per machine, compiles) the
    radiomics kernels, imports ``mamba_ssm`` (~14 s) and loads every model; on a GPU that is
    tens of seconds before the first result, against well under a second afterwards. The
    classifier dock calls this in a background worker when it opens on a GPU machine, so
    that the pathologist's first click is as fast as the next. Models stay in the caches
    of :func:`get_classifier` and :func:`napari_uam.tumor.load_tumor_model`.

    Args:
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        {"device": the resolved device, "seconds": time taken, "cells": cells classified in
        the crop}.
    """
    dev = resolve_device(device)
    t = time.perf_counter()
    crop = np.ascontiguousarray(sample_image()[:WARM_UP_PX, :WARM_UP_PX])
    res = run(crop, SAMPLE_MPP, device=dev, model=get_classifier(None, dev))
    return {"device": dev, "seconds": time.perf_counter() - t, "cells": int(len(res.table))}
