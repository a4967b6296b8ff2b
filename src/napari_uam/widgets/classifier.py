"""The "UAM cell classifier" dock: segment, measure and classify the nuclei of an H&E image.

The widget only collects inputs, runs :mod:`napari_uam.pipeline` in a napari worker thread
and shows the results; every decision about which layer a result may replace lives in
:mod:`._layers` (no Qt, tested headless). Nothing here blocks the event loop: the pipeline
runs in a :class:`~napari.qt.threading.GeneratorWorker`, progress comes back through a Qt
signal, and Cancel sets a flag the pipeline checks between steps.
"""

from __future__ import annotations

import logging
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from napari.layers import Labels, Shapes
from napari.qt.threading import create_worker
from napari.utils.colormaps import Colormap
from napari.utils.notifications import show_error, show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from .. import pipeline
from ..device import resolve_device
from ..errors import CancelledError, NoNucleiError, UAMError
from ..io.export import export_cells
from ..io.lock import FolderLock, FolderLockedError
from ..pixel_size import MAX_MPP, MIN_MPP, estimate_mpp
from ..segment import available_backends
from ..validation import as_rgb_uint8
from . import _display as D
from . import _slide_run as S
from . import _view as V
from . import _layers as L
from ._mpp_estimate import MppEstimateRow
from ._rows import path_row, scroll_wrap
from ._worker import BackgroundRun, Outcome

logger = logging.getLogger(__name__)

#: Relative cost of each stage, to turn per-stage fractions into one progress bar.
_STAGE_WEIGHT = {"load": 0.05, "segment": 0.45, "measure": 0.45, "classify": 0.05, "tumor mask": 0.1, S.STAGE: 1.0}
#: Layer kind (and name suffix) of the tumor-region result.
_KIND_REGION = "tumor region"
#: "Tumor region" choices: combo text -> job setting.
_REGION_CHOICES = {"Probability image": "probability", "Mask (p > 0.5)": "mask", "Off": "off"}
#: Export formats: check-box label -> :func:`napari_uam.io.export.export_cells` format.
_EXPORT_FORMATS = (("CSV", "csv"), ("Parquet", "parquet"), ("GeoJSON (QuPath)", "geojson"), ("TIFF labels", "tif"),
                   ("AnnData (.h5ad)", "h5ad"), ("OME-Zarr labels", "zarr"))  # fmt: skip
#: Formats checked when the dock opens (the others need the optional ``export`` libraries).
_EXPORT_DEFAULT = ("csv", "parquet", "geojson", "tif")
#: What the status line says during each stage.
_STAGE_TEXT = {"load": "loading the model", "segment": "segmenting nuclei", "measure": "measuring cells",
               "classify": "classifying cells", "tumor mask": "predicting the tumor region",
               S.STAGE: "classifying the whole slide, tile by tile"}  # fmt: skip
_DEFAULT_MODEL = "Default UAM model"
#: The "Area" choice that analyses the whole image (of a slide, the part in view).
_AREA_WHOLE = "Whole image (slide: the view)"
#: The "Area" choice that runs the whole slide in the background (files in the export folder).
_AREA_SLIDE = "Whole slide (background)"
_SLIDE_DATA = "\x00whole-slide"  # the choice's item data: no layer name holds a NUL
#: Tile side of a whole-slide run from the dock (the command line's default).
_SLIDE_TILE = S.DEFAULT_TILE
#: Layer metadata key of a whole-slide run's nuclei layer (its output folder).
_SLIDE_LAYER_KEY = "napari_uam_slide_run"
#: Pause between the steps that add a run's layers, so timers and input get a turn in between.
_STEP_PAUSE_MS = 15
_CHECKPOINT_MODEL = "Checkpoint file..."


@dataclass
class _Job:
    """Inputs of one run, captured in the GUI thread so the worker never touches layers."""

    action: str  # "segment", "measure" or "classify"
    source: str
    image: np.ndarray
    mpp: float
    device: str
    backend: str
    model: Optional[str]
    labels: Optional[np.ndarray] = None
    table: Optional[pd.DataFrame] = None
    notes: list = field(default_factory=list)
    region: str = "off"  # tumor-region layer after classify: "probability", "mask" or "off"
    geometry: dict = field(default_factory=dict)  # where results go: the image layer's scale, translate, ...
    view: Optional[V.View] = None  # the level-0 rectangle analysed (None: the whole image)
    area: Optional[int] = None  # checksum of the drawn shapes' mask inside ``view`` (None: no shapes)

    @property
    def stages(self) -> list[str]:
        """The stages this run will go through, in order."""
        out = ["load"] if self.action == "classify" else []
        if self.labels is None:
            out.append("segment")
        if self.action in ("measure", "classify") and self.table is None:
            out.append("measure")
        if self.action == "classify":
            out.append("classify")
            if self.region != "off":
                out.append("tumor mask")
        return out


@dataclass
class _Outcome(Outcome):
    """What a run gives back to the GUI thread: results, or why there are none
    (``cancelled`` / ``error``, see :class:`~._worker.Outcome`)."""

    job: _Job
    labels: Optional[np.ndarray] = None
    table: Optional[pd.DataFrame] = None
    tumor: Optional[np.ndarray] = None
    region: Optional[np.ndarray] = None  # tumor probability (H, W) float32 or mask labels
    ran: list = field(default_factory=list)
    backend: Optional[str] = None
    model_id: Optional[str] = None
    seconds: float = 0.0
    mpp_estimate: Optional[object] = None  # PixelSizeEstimate of the nuclei at job.mpp
    prepared: Optional[D.Prepared] = None  # layer data built in the worker (see _display.prepare)


#: How the dock's run reports a failure: only a UAMError has a message for the user; the
#: status line says "details are in the log" for anything else (OSError too), so it is logged.
_EXPECTED = (UAMError,)


def _compute(job: _Job, cancelled, emit):
    """Worker body: run the missing stages of ``job``; yields (stage, fraction) between them.

    Raises what the stages raise (the :class:`~._worker.BackgroundRun` turns it into an
    outcome); ``emit((stage, fraction))`` relays progress to the GUI thread.
    """
    t0 = time.perf_counter()
    report = _reporter(emit, cancelled)
    out = _Outcome(job=job)

    def checkpoint():
        if cancelled():
            raise CancelledError("Run cancelled.")

    def check_labels(labels):
        # The dock's own words: the user segments or paints the nuclei here.
        if labels.size == 0 or int(labels.max()) == 0:
            if job.labels is None:
                raise NoNucleiError(
                    f"No nuclei found in '{job.source}'. Check that it shows H&E-stained tissue and "
                    f"that the pixel size ({job.mpp:g} um/px) is right (0.25 at 40x, 0.5 at 20x)."
                )
            raise NoNucleiError(f"The nuclei layer of '{job.source}' has no nuclei left; click Segment nuclei.")
        # What the nuclei say about the pixel size (the dock offers it when they disagree).
        out.mpp_estimate = estimate_mpp(labels, job.mpp)

    rgb = as_rgb_uint8(job.image)
    # The one stage runner; the dock only chooses inputs (which stages, what is given) and
    # outputs (layers), and between stages lets the worker report progress and Cancel act.
    stages = pipeline.run_stages(
        rgb,
        job.mpp,
        labels=job.labels,
        table=job.table,
        measure=job.action != "segment",
        classify=job.action == "classify",
        model=job.model,
        segment_backend=job.backend,
        device=job.device,
        tumor_mask="auto" if job.region != "off" else False,
        domain_warnings=False,
        check_labels=check_labels,
        progress=report,
        cancel=cancelled,
    )
    for stage, st in stages:
        if stage != pipeline.DONE:
            yield (stage, 1.0)
            checkpoint()
    labels, table = st.labels, st.table
    out.ran = list(st.ran)
    if "segment" in st.ran:
        out.backend = st.segment_backend
    if st.classifier is not None:
        check, dom = st.domain, st.provenance
        # The trust signal: an image unlike every training hospital is said so in the dock.
        if check is not None and not check.in_domain:
            job.notes.append("Caution: " + check.message())
        elif (dom.get("domain") or {}).get("status") == "unknown" and check is None:
            job.notes.append("Caution: trust unknown: " + dom["domain"]["reason"] + "; its calls are unchecked.")
        out.tumor = pipeline.tumor_cell_labels(labels, table)
        out.model_id = st.classifier.model_id
        if job.region != "off":
            prob = st.tumor_probability
            if prob is not None:
                out.region = prob if job.region == "probability" else (prob > 0.5).astype(np.int32)
            else:
                job.notes.append("No tumor-region weights are installed: no tumor region layer.")
    checkpoint()
    # Features, colour maps and checksums are built here, not in the GUI thread: with
    # thousands of cells that work froze napari for seconds when the results were added.
    out.prepared = D.prepare(labels, table, out.tumor, job.geometry)
    out.labels, out.table = labels, table
    out.seconds = time.perf_counter() - t0
    return out


def _export(labels, table, out_dir, stem, formats, overwrite, provenance, mpp, origin=(0, 0)):
    """Worker body of Export: ``(written paths, None)`` or ``(None, exception)``.

    The exception is returned inside a tuple, not raised nor returned bare (a worker treats a
    returned exception as a crash), so the GUI thread can ask before overwriting.
    """

    try:
        folder = Path(out_dir).expanduser()
        folder.mkdir(parents=True, exist_ok=True)
        # The command line's lock on its --out folder: a batch run writing into this folder
        # (its files, markers, manifest and cohort table) refuses the export, and the other
        # way round, instead of the two interleaving their files.
        with FolderLock(folder, what=f"napari-uam dock export of '{stem}'",
                        instead="wait for it to finish, or export into another folder. Nothing was written."):  # fmt: skip
            written = export_cells(labels, table, folder, stem, formats=formats, overwrite=overwrite,
                                   provenance=provenance, mpp=mpp, origin=origin)  # fmt: skip
    except Exception as err:  # noqa: BLE001 - shown to the user by the GUI thread
        if not isinstance(err, (FileExistsError, OSError, UAMError)):
            logger.exception("napari-uam export failed")
        return None, err
    return written, None


def _reporter(emit, cancelled):
    """``report(stage, fraction)`` for the worker: raises once cancelled, else relays
    ``(stage, fraction)`` through ``emit``.

    Every stage reports progress (per network tile, per chunk of measured cells), so raising
    here stops a cancelled run at its next report even inside code that takes no cancel flag.
    """

    def report(stage: str, fraction: float) -> None:
        if cancelled():
            raise CancelledError("Run cancelled.")
        emit((stage, float(fraction)))

    return report


class ClassifierWidget(QWidget):
    """Dock widget: pick an RGB H&E layer, segment / measure / classify its nuclei, export.

    Results go to two Labels layers named after the image, ``"<image> nuclei"`` (every
    nucleus outlined in its class colour, ``features`` = the cell table, a short hover: see
    :mod:`._display`) and ``"<image> tumor cells"`` (tumor nuclei only, hidden at first).
    Re-running replaces those layers while the user has not edited them, and an edited one
    only after the user confirms. Closing napari cancels a run (:mod:`._lifecycle`).

    Args:
        napari_viewer: the viewer the dock belongs to (napari passes it).
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._job: Optional[_Job] = None
        self._stage: Optional[str] = None  # the stage the status line names
        self._export_target = ""
        self._mpp_edits: dict[str, float] = {}
        # The run of Segment / Measure / Classify and of Export; closing napari cancels it.
        self._run = BackgroundRun(self, self._on_yielded)
        self._warm_worker = None
        self._staging = None  # the steps adding a finished run's layers, one per event-loop turn
        self._build()
        self._connect_viewer()
        self._refresh_images()
        self._warm_up_gpu()

    # ------------------------------------------------------------------ UI construction
    def _build(self) -> None:
        form = QFormLayout()

        self.image_combo = QComboBox()
        self.image_combo.setToolTip("The RGB H&E image layer to analyse.")
        self.image_combo.currentTextChanged.connect(self._on_image_changed)
        form.addRow("Image", self.image_combo)
        self.area_combo = QComboBox()
        self.area_combo.setToolTip(
            "What part of the image to analyse: all of it (of a slide, the part in view); the whole "
            "slide, tile by tile in the background, its files into the export folder; or the "
            "rectangles, polygons or ellipses of a Shapes layer (its selected shapes, or all)."
        )
        # Long layer names must not widen the dock (it would be cut off on small screens).
        self.area_combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.area_combo.setMinimumContentsLength(18)
        self.area_combo.addItem(_AREA_WHOLE, None)
        self.area_combo.addItem(_AREA_SLIDE, _SLIDE_DATA)
        form.addRow("Area", self.area_combo)

        self.mpp_spin = QDoubleSpinBox()
        self.mpp_spin.setRange(MIN_MPP, MAX_MPP)
        self.mpp_spin.setDecimals(4)
        self.mpp_spin.setSingleStep(0.05)
        self.mpp_spin.setSuffix(" um/px")
        self.mpp_spin.setValue(L.DEFAULT_MPP)
        self.mpp_spin.valueChanged.connect(self._on_mpp_edited)
        self.mpp_hint = QLabel()
        self.mpp_hint.setStyleSheet("color: gray;")
        mpp_row = QHBoxLayout()
        mpp_row.addWidget(self.mpp_spin)
        mpp_row.addWidget(self.mpp_hint)
        form.addRow("Pixel size", mpp_row)
        self.mpp_estimate = MppEstimateRow(self._use_estimated_mpp)
        form.addRow("", self.mpp_estimate)

        self.device_combo = QComboBox()
        self.device_combo.addItems(["auto", "cuda", "cpu"])
        self._setup_devices()
        form.addRow("Device", self.device_combo)

        self.backend_combo = QComboBox()
        self._setup_backends()
        form.addRow("Segmentation", self.backend_combo)

        self.model_combo = QComboBox()
        self.model_combo.addItems([_DEFAULT_MODEL, _CHECKPOINT_MODEL])
        self.model_combo.currentTextChanged.connect(self._on_model_changed)
        self.checkpoint_edit, self.checkpoint_browse, ckpt_row = path_row(
            self._browse_checkpoint, "path/to/checkpoint.pt"
        )
        form.addRow("Model", self.model_combo)
        form.addRow("", ckpt_row)
        self.region_combo = QComboBox()
        self.region_combo.addItems(list(_REGION_CHOICES))
        self.region_combo.setToolTip(
            "After Classify cells, add the tumor region (the shipped region model, or a multimodal "
            "image + cells checkpoint) as a probability image or as a thresholded mask."
        )
        form.addRow("Tumor region", self.region_combo)
        self._on_model_changed(self.model_combo.currentText())

        self.segment_btn = QPushButton("Segment nuclei")
        self.segment_btn.setToolTip("Find every nucleus (no model needed).")
        self.measure_btn = QPushButton("Measure cells")
        self.measure_btn.setToolTip("Per-cell radiomics features (segments first if needed).")
        self.classify_btn = QPushButton("Classify cells")
        self.classify_btn.setToolTip("Tumor / non-tumor per cell; runs whatever stage is missing.")
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.segment_btn.clicked.connect(lambda: self.start("segment"))
        self.measure_btn.clicked.connect(lambda: self.start("measure"))
        self.classify_btn.clicked.connect(lambda: self.start("classify"))
        self.cancel_btn.clicked.connect(self.cancel)
        run_row = QHBoxLayout()
        for b in (self.segment_btn, self.measure_btn, self.classify_btn):
            run_row.addWidget(b)
        cancel_row = QHBoxLayout()
        self.progress = QProgressBar()
        self.progress.setRange(0, 100)
        self.progress.setValue(0)
        cancel_row.addWidget(self.progress)
        cancel_row.addWidget(self.cancel_btn)

        self.status = QLabel("Open an H&E image, then click Classify cells.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)

        export_box = QGroupBox("Export")
        ex = QVBoxLayout(export_box)
        fmt_row, fmt_row2 = QHBoxLayout(), QHBoxLayout()
        self.export_checks: dict[str, QCheckBox] = {}
        for i, (label, fmt) in enumerate(_EXPORT_FORMATS):
            cb = QCheckBox(label)
            cb.setChecked(fmt in _EXPORT_DEFAULT)
            self.export_checks[fmt] = cb
            (fmt_row if i < 4 else fmt_row2).addWidget(cb)
        fmt_row2.addStretch(1)
        self.export_dir_edit, self.export_browse, dir_row = path_row(self._browse_export_dir, "output folder")
        self.export_btn = QPushButton("Export")
        self.export_btn.setToolTip(
            "Write the cell table, nuclei polygons and labels of the image; never overwrites without asking."
        )
        self.export_btn.clicked.connect(self.export)
        ex.addLayout(fmt_row)
        ex.addLayout(fmt_row2)
        ex.addLayout(dir_row)
        ex.addWidget(self.export_btn)

        self.current_label = QLabel("Current results: none yet for this image.")
        self.current_label.setWordWrap(True)
        self.current_label.setToolTip(
            "The nuclei layer that Export, Measure cells and Classify cells use for this image."
        )
        self.legend = QLabel(D.legend_html())
        self.legend.setWordWrap(True)
        self.legend.setTextFormat(Qt.TextFormat.RichText)

        inner = QWidget()
        root = QVBoxLayout(inner)
        root.addLayout(form)
        root.addLayout(run_row)
        root.addLayout(cancel_row)
        root.addWidget(self.status)
        root.addWidget(self.current_label)
        root.addWidget(self.legend)
        root.addWidget(export_box)
        root.addStretch(1)
        # A scroll area: on a 1000-px screen, three docks stacked clipped their buttons.
        self.scroll = scroll_wrap(self, inner)

    def _setup_devices(self) -> None:
        try:
            import torch

            has_cuda = bool(torch.cuda.is_available())
        except ImportError:
            has_cuda = False
        if not has_cuda:
            idx = self.device_combo.findText("cuda")
            item = self.device_combo.model().item(idx)
            item.setEnabled(False)
            self.device_combo.setItemData(
                idx, "No CUDA GPU is visible to PyTorch on this machine.", Qt.ItemDataRole.ToolTipRole
            )
        self.device_combo.setToolTip("auto: the GPU when PyTorch sees one, else the CPU.")

    def _setup_backends(self) -> None:

        names = ["auto"] + [n for n in available_backends() if n != "auto"]
        self.backend_combo.addItems(names)
        self.backend_combo.setToolTip("Nuclei segmentation method; auto picks the best installed.")

    # ---------------------------------------------------------------- viewer and layers
    def _connect_viewer(self) -> None:
        layers = self.viewer.layers
        layers.events.inserted.connect(self._on_layer_inserted)
        layers.events.removed.connect(self._refresh_images)
        layers.events.removed.connect(self._show_current)
        layers.events.reordered.connect(self._refresh_images)
        layers.selection.events.active.connect(self._on_active_layer)
        for layer in layers:
            layer.events.name.connect(self._refresh_images)

    def _on_layer_inserted(self, event) -> None:
        event.value.events.name.connect(self._refresh_images)
        self._refresh_images()
        self._show_current()

    def _image_layers(self) -> list:
        return [layer for layer in self.viewer.layers if type(layer).__name__ == "Image" and layer.rgb]

    def _refresh_areas(self) -> None:
        """Refill the area list: the whole image, then every Shapes layer (kept if still there)."""
        current = self.area_combo.currentData()
        names = [layer.name for layer in self.viewer.layers if isinstance(layer, Shapes)]
        self.area_combo.blockSignals(True)
        self.area_combo.clear()
        self.area_combo.addItem(_AREA_WHOLE, None)
        self.area_combo.addItem(_AREA_SLIDE, _SLIDE_DATA)
        for name in names:
            self.area_combo.addItem(f"Shapes: {name}", name)
        if current == _SLIDE_DATA:
            self.area_combo.setCurrentIndex(1)
        elif current in names:
            self.area_combo.setCurrentIndex(names.index(current) + 2)
        self.area_combo.blockSignals(False)

    def _refresh_images(self, *_) -> None:
        """Refill the image list (RGB image layers only), keeping the current choice if it exists."""
        self._refresh_areas()
        current = self.image_combo.currentText()
        names = [layer.name for layer in self._image_layers()]
        self.image_combo.blockSignals(True)
        self.image_combo.clear()
        self.image_combo.addItems(names)
        if current in names:
            self.image_combo.setCurrentText(current)
        self.image_combo.blockSignals(False)
        if self.image_combo.currentText() != current:
            self._on_image_changed(self.image_combo.currentText())

    def _on_active_layer(self, event) -> None:
        """Follow the layer list: an RGB image becomes the target; anything else is explained."""
        layer = event.value
        if layer is None or L.owner_record(layer) is not None:
            return
        if isinstance(layer, Shapes):
            if self.area_combo.currentData() != layer.name:
                self._say(f"To analyse only inside the shapes of '{layer.name}', choose it under Area.")
            return
        problem = L.describe_layer(layer)
        if problem:
            self._say(problem)
        elif self.image_combo.findText(layer.name) >= 0:
            self.image_combo.setCurrentText(layer.name)

    def _on_image_changed(self, name: str) -> None:
        self.mpp_estimate.forget(unless=name)
        self._show_current()
        if not name or name not in self.viewer.layers:
            self.mpp_hint.setText("")
            return
        layer = self.viewer.layers[name]
        mpp, known = L.mpp_from_metadata(layer.metadata)
        if name in self._mpp_edits:
            mpp, hint = self._mpp_edits[name], "(set here)"
        else:
            hint = "(from the image)" if known else "(not in the file: check it)"
        self.mpp_spin.blockSignals(True)
        self.mpp_spin.setValue(mpp)
        self.mpp_spin.blockSignals(False)
        self.mpp_hint.setText(hint)

    def _on_mpp_edited(self, value: float) -> None:
        name = self.image_combo.currentText()
        if name:
            self._mpp_edits[name] = float(value)
            self.mpp_hint.setText("(set here)")

    def _use_estimated_mpp(self, source: str, mpp: float) -> None:
        """The "Use estimated pixel size" button: set the field for ``source`` (no re-run)."""
        if self.image_combo.findText(source) < 0:
            self._say(f"'{source}' is no longer open.")
            return
        self.image_combo.setCurrentText(source)
        self.mpp_spin.setValue(mpp)  # recorded as the user's edit for this image
        self._say(f"Pixel size of '{source}' set to {mpp:g} um/px from its nuclei; run again to use it.")

    def _on_model_changed(self, text: str) -> None:
        use_file = text == _CHECKPOINT_MODEL
        self.checkpoint_edit.setEnabled(use_file)
        self.checkpoint_browse.setEnabled(use_file)

    def use_checkpoint(self, path) -> None:
        """Classify with the checkpoint at ``path`` from now on (the Train dock offers this)."""
        self.model_combo.setCurrentText(_CHECKPOINT_MODEL)
        self.checkpoint_edit.setText(str(path))
        self._say(f"Classify cells will use the model {Path(path).name}.")

    def _browse_checkpoint(self) -> None:
        path, _ = QFileDialog.getOpenFileName(
            self, "Choose a UAM checkpoint", "", "Checkpoints (*.pt *.pth);;All files (*)"
        )
        if path:
            self.checkpoint_edit.setText(path)

    def _browse_export_dir(self) -> None:
        path = QFileDialog.getExistingDirectory(self, "Export folder", self.export_dir_edit.text())
        if path:
            self.export_dir_edit.setText(path)

    # ---------------------------------------------------------------------- messages
    def _warm_up_gpu(self) -> None:
        """On a GPU machine, pay the pipeline's one-time costs (CUDA start-up, kernels,
        mamba_ssm, weights: tens of seconds) in the background while the user opens an image
        (:func:`napari_uam.pipeline.warm_up`); best effort, its errors are ignored (the real
        run reports them)."""

        if resolve_device("auto") != "cuda":
            return
        worker = create_worker(pipeline.warm_up, "cuda", _ignore_errors=True)
        worker.returned.connect(self._on_warmed)
        self._warm_worker = worker
        self._say("Preparing the GPU in the background (first use in this session)...")
        worker.start()

    def _on_warmed(self, info: dict) -> None:
        self._warm_worker = None
        if self._job is None:  # do not overwrite a running job's status
            self._say(f"GPU ready ({info['seconds']:.0f} s to prepare).")

    def _say(self, text: str) -> None:
        self.status.setText(text)

    def _fail(self, text: str, *, error: bool = False) -> None:
        """Show a problem in the status line and as a napari notification (never a traceback)."""
        self._say(text)
        (show_error if error else show_warning)(text)

    # ------------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        """True while a computation or an export runs, or its results are being added."""
        return self._run.active or self._staging is not None

    def _selected_image(self):
        """The chosen RGB image layer, or None after telling the user what is wrong."""
        name = self.image_combo.currentText()
        if name and name in self.viewer.layers:
            return self.viewer.layers[name]
        others = [layer for layer in self.viewer.layers if L.describe_layer(layer)]
        if others:
            self._fail(f"No RGB image layer to work on. {L.describe_layer(others[-1])}")
        else:
            self._fail("No image open: open an H&E image (File > Open, or File > Open Sample > UAM).")
        return None

    def _model_choice(self) -> tuple[bool, Optional[str]]:
        if self.model_combo.currentText() != _CHECKPOINT_MODEL:
            return True, None
        path = self.checkpoint_edit.text().strip()
        if not path:
            self._fail("Choose a checkpoint file for the model, or pick the default UAM model.")
            return False, None
        return True, path

    def _make_job(self, action: str) -> Optional[_Job]:
        layer = self._selected_image()
        if layer is None:
            return None
        ok, model = self._model_choice()
        if not ok:
            return None
        mpp = float(self.mpp_spin.value())
        backend = self.backend_combo.currentText()
        view = None
        inside = None
        area_name = self.area_combo.currentData()
        if area_name is not None:
            if area_name not in self.viewer.layers:
                self._fail(f"The Shapes layer '{area_name}' is gone: choose another area.")
                return None
            try:
                area = V.shapes_area(layer, self.viewer.layers[area_name])
            except ValueError as err:
                self._fail(str(err))
                return None
            view, inside = area.view, area.inside
            if view.pixels > V.VIEW_MAX_PIXELS:
                self._fail(
                    f"The shapes of '{area_name}' span {view.shape[1]} x {view.shape[0]} pixels of the full "
                    f"resolution; the dock analyses up to {V.VIEW_MAX_PIXELS / 1e6:.1f} Mpx at a time. Draw a "
                    "smaller area, or run the whole image with `napari-uam classify`."
                )
                return None
            image = np.array(V.full_resolution(layer)[view.y0 : view.y1, view.x0 : view.x1])
            # Outside the shapes is glass (white): no nucleus is found there, and the stain and
            # tissue checks see only the drawn tissue.
            image[~inside] = np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0
        elif V.is_pyramid(layer):
            # A slide: the part in view, read from level 0 (the full resolution the pixel size
            # refers to); a lazy pyramid is never read whole.
            view = V.view_of(layer, self.viewer)
            if not view.pixels:
                self._fail(f"No part of '{layer.name}' is in view: pan to the tissue, then click again.")
                return None
            if view.pixels > V.VIEW_MAX_PIXELS:
                h, w = view.shape
                self._fail(
                    f"The view of '{layer.name}' covers {w} x {h} pixels of the full resolution "
                    f"({view.pixels / 1e6:.0f} Mpx); the dock analyses up to {V.VIEW_MAX_PIXELS / 1e6:.1f} Mpx "
                    "at a time. Zoom in on the region to classify, or run the whole slide with "
                    "`napari-uam classify` (tiled, in the background)."
                )
                return None
            image = np.asarray(V.full_resolution(layer)[view.y0 : view.y1, view.x0 : view.x1])
        else:
            image = np.asarray(layer.data)
        job = _Job(
            action=action,
            source=layer.name,
            image=image,
            mpp=mpp,
            device=self.device_combo.currentText(),
            backend=backend,
            model=model,
            region=_REGION_CHOICES[self.region_combo.currentText()],
            geometry=V.geometry_of(layer, view),
            view=view,
        )
        if inside is not None:
            job.notes.append(f"Analysed {area.describe()}.")
            job.area = zlib.crc32(np.packbits(inside).tobytes())
        elif view is not None:
            job.notes.append(f"Analysed the view: {view.describe()}.")
        nuclei = L.current_layer(self.viewer.layers, layer.name, L.KIND_NUCLEI)
        if action == "segment" or nuclei is None:
            return job
        rec = L.owner_record(nuclei)
        # Nuclei of another part of the image (view or drawn area) are not this one's.
        if (
            tuple(np.shape(nuclei.data)) != tuple(job.image.shape[:2])
            or rec.get("view") != (view.as_list() if view else None)
            or rec.get("area") != job.area
        ):
            return job
        edited = L.is_edited(nuclei)
        if edited:
            # The user's corrections are the truth: measure and classify their nuclei.
            job.labels = np.array(nuclei.data, dtype=np.int32, copy=True)
            job.notes.append(f"Used your edited nuclei from '{nuclei.name}'.")
            return job
        if rec.get("mpp") != mpp or rec.get("backend_choice") != backend:
            return job  # made with other settings: segment again
        job.labels = np.array(nuclei.data, dtype=np.int32, copy=True)
        if action == "classify" and rec.get("measured"):
            job.table = L.from_features(nuclei.features, {"schema_id": rec.get("schema_id")})
        return job

    def start(self, action: str) -> None:
        """Run ``action`` ("segment", "measure" or "classify") on the chosen image in a worker."""
        if self.busy:
            self._say("A run is in progress; wait for it or click Cancel.")
            return
        if self.area_combo.currentData() == _SLIDE_DATA:
            self._start_slide(action)
            return
        job = self._make_job(action)
        if job is None:
            return
        self._job = job
        self._stage = None
        self._set_busy(True, cancellable=True)
        self._say(f"{action.capitalize()}: working on '{job.source}'...")
        # Bound methods only: Qt drops them if the dock is closed while the worker runs.
        self._run.start(_compute, job, _Outcome, returned=self._on_returned, finished=self._on_finished,
                        yielded=self._on_yielded, expected=_EXPECTED, log="napari-uam run failed")  # fmt: skip

    def _export_folder(self) -> str:
        """The export folder's path, asking for one when the field is empty ("" if none given)."""
        out_dir = self.export_dir_edit.text().strip()
        if not out_dir:
            self._browse_export_dir()
            out_dir = self.export_dir_edit.text().strip()
        return out_dir

    # ------------------------------------------------------------------- whole slide
    def _start_slide(self, action: str) -> None:
        """Classify the whole slide file behind the chosen layer in the background (the
        command line's tiled run), its files into the export folder."""
        if action != "classify":
            self._fail("A whole-slide run classifies: click Classify cells (or choose another Area).")
            return
        layer = self._selected_image()
        if layer is None:
            return
        source = (layer.metadata or {}).get("source")
        if not source or not Path(source).is_file():
            self._fail(
                f"'{layer.name}' was not opened from a file through napari-uam, so there is no slide file "
                "to run: open the slide with File > Open, or choose another Area."
            )
            return
        ok, model = self._model_choice()
        if not ok:
            return
        out_dir = self._export_folder()
        if not out_dir:
            self._fail("Choose an export folder first: a whole-slide run writes its files there.")
            return
        job = S.SlideJob(
            source=layer.name,
            path=Path(source),
            out_dir=Path(out_dir).expanduser(),
            mpp=float(self.mpp_spin.value()),
            device=self.device_combo.currentText(),
            backend=self.backend_combo.currentText(),
            model=model,
            tile=_SLIDE_TILE,
        )
        self._job = job
        self._stage = None
        self._set_busy(True, cancellable=True)
        self._say(f"Classify the whole slide '{layer.name}' into {job.out_dir}...")
        self._run.start(S.run_slide, job, S.SlideOutcome, returned=self._on_slide_returned,
                        finished=self._on_finished, expected=_EXPECTED, log="napari-uam slide run failed")  # fmt: skip

    def _on_slide_returned(self, out) -> None:
        if self._run.closed:
            return
        job = out.job
        if out.cancelled:
            self.progress.setValue(0)
            self._say(
                f"Cancelled: no output of '{job.source}' was written (the manifest in {job.out_dir} "
                "records the interrupted run)."
            )
            return
        if out.error is not None:
            self.progress.setValue(0)
            self._fail(str(out.error) if isinstance(out.error, UAMError) else
                       f"Unexpected error ({type(out.error).__name__}: {out.error}); details are in the log.")  # fmt: skip
            return
        self.progress.setValue(100)
        st = out.status
        counts = f"{st.n_cells:,} nuclei" + (f", {st.n_tumor:,} tumor" if st.n_tumor is not None else "")
        when = "already classified there (skipped)" if st.status == "skipped" else f"in {st.seconds:.0f} s"
        if job.source not in self.viewer.layers:
            self._say(f"Whole slide: {counts}, {when}; files in {job.out_dir} ('{job.source}' was closed).")
            return
        image = self.viewer.layers[job.source]
        name = f"{job.source} slide nuclei"
        for old in [x for x in self.viewer.layers if x.name == name and _SLIDE_LAYER_KEY in (x.metadata or {})]:
            self.viewer.layers.remove(old)  # the plugin's own layer of an earlier slide run
        shown = {k: v for k, v in (("colormap", out.colormap), ("features", out.features)) if v is not None}
        # The patch results' layer class: hovering a nucleus shows its class and probability.
        layer = D.CellLabels(out.levels, multiscale=True, name=name, opacity=0.6, **shown,
                             metadata={_SLIDE_LAYER_KEY: str(job.out_dir), "source": str(out.labels_path)},
                             **V.geometry_of(image))  # fmt: skip
        self.viewer.add_layer(layer)
        self._say(f"Whole slide: {counts}, {when}; files in {job.out_dir}; nuclei shown as '{name}'.")

    def cancel(self) -> None:
        """Ask the running computation to stop at its next step; nothing of it will be added."""
        if self._job is not None and self._run.cancel():
            self.cancel_btn.setEnabled(False)
            self._say("Cancelling...")

    def _set_busy(self, busy: bool, cancellable: bool = False) -> None:
        for w in (self.segment_btn, self.measure_btn, self.classify_btn, self.export_btn):
            w.setEnabled(not busy)
        self.cancel_btn.setEnabled(busy and cancellable)
        if busy:
            self.progress.setValue(0)

    def _on_stage_progress(self, stage: str, fraction: float) -> None:
        job = self._job
        if self._run.closed or job is None or stage not in job.stages:
            return
        stages = job.stages
        total = sum(_STAGE_WEIGHT[s] for s in stages)
        done = sum(_STAGE_WEIGHT[s] for s in stages[: stages.index(stage)])
        value = int(round(100 * (done + _STAGE_WEIGHT[stage] * min(max(fraction, 0.0), 1.0)) / total))
        self.progress.setValue(max(self.progress.value(), value))
        if stage != self._stage and fraction < 1.0 and not self._run.cancelled:
            self._stage = stage  # say which stage runs ("Classify 'x': measuring cells...")
            self._say(f"{job.action.capitalize()} '{job.source}': {_STAGE_TEXT[stage]}...")

    def _on_yielded(self, step) -> None:
        self._on_stage_progress(*step)

    def _on_finished(self) -> None:
        # False for an export already handed over to its overwrite re-run, and while napari
        # closes (the dock's widgets may be gone).
        if not self._run.finish(self.sender()):
            return
        self._job = None
        if self._staging is None:
            self._set_busy(False)

    def _on_returned(self, out: _Outcome) -> None:
        if self._run.closed:
            return  # napari closed during the run: add nothing, write nothing
        if out.cancelled:
            self.progress.setValue(0)
            self._say("Cancelled: no layer was added or changed.")
            show_info("UAM run cancelled; nothing was changed.")
            return
        if out.error is not None:
            self.progress.setValue(0)
            if isinstance(out.error, UAMError):
                self._fail(str(out.error))
            else:
                self._fail(
                    f"Unexpected error ({type(out.error).__name__}: {out.error}); details are in the log.", error=True
                )
            return
        source = out.job.source
        if source not in self.viewer.layers:
            self._say(f"'{source}' was closed during the run; its results were discarded.")
            return
        self.cancel_btn.setEnabled(False)  # the run is over: its results are being shown
        # One layer per event-loop turn: adding a layer makes napari build its visuals in the
        # GUI thread (about half a second each on a small machine); in one go the window
        # froze for seconds.
        self._staging = self._result_steps(self.viewer.layers[source], out)
        self._advance()

    def _advance(self) -> None:
        """Run the next step of adding results, then hand the event loop back."""
        steps = self._staging
        if steps is None:
            return
        if self._run.closed:  # napari closed while the layers were being added
            self._staging = None
            return
        try:
            next(steps)
        except StopIteration:
            self._staging = None
            self.progress.setValue(100)
        except Exception as err:  # noqa: BLE001 - never a traceback dialog; the log has details
            self._staging = None
            logger.exception("napari-uam could not show results")
            self._fail(f"Could not show the results ({type(err).__name__}: {err}); details are in the log.", error=True)
        else:
            QTimer.singleShot(_STEP_PAUSE_MS, self._advance)
            return
        if not self._run.active:
            self._set_busy(False)

    # ------------------------------------------------------------------------ results
    def _plan(self, image_layer, kind: str, replace_edited: bool) -> L.OutputPlan:
        """Where a result goes: the plugin's unedited layer, the edited one when the user agreed
        to replace it, else a new layer."""
        plan = L.plan_output(self.viewer.layers, image_layer.name, kind)
        if plan.layer is None and replace_edited:
            mine = L.current_layer(self.viewer.layers, image_layer.name, kind)
            if mine is not None:
                return L.OutputPlan(
                    layer=mine, name=mine.name, note=f"Replaced your edited '{mine.name}' as you confirmed."
                )
        return plan

    def _edited_targets(self, image_layer, kinds) -> list:
        """The plugin's edited layers this run would otherwise leave behind next to a copy."""
        out = []
        for kind in kinds:
            if L.plan_output(self.viewer.layers, image_layer.name, kind).layer is None:
                mine = L.current_layer(self.viewer.layers, image_layer.name, kind)
                if mine is not None and L.is_edited(mine):
                    out.append(mine)
        return out

    def _confirm_replace(self, layers) -> bool:
        names = ", ".join(f"'{x.name}'" for x in layers)
        answer = QMessageBox.question(
            self,
            "Replace your edited layer?",
            f"{names} holds your edits (painted nuclei or corrected classes).\n\n"
            "Replace it with the new results? No keeps it and adds the results as a new layer.",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _write_layer(self, image_layer, plan: L.OutputPlan, kind: str, built, data: np.ndarray,
                     features: pd.DataFrame, params: dict, checksums: tuple, style: dict):  # fmt: skip
        """Write one result layer where ``plan`` says.

        A new result is the layer the worker built (``built``: data, features, colour map
        and contour already set, hidden so nothing was drawn); an existing one gets the new
        data, features and ``style`` while hidden (napari redraws a visible layer on every
        attribute set) and keeps the user's other choices.

        Returns:
            (note, layer, show): the plan's note, the layer written, and whether the caller
            should make it visible in the next turn of the event loop.
        """
        if plan.layer is not None:
            layer = plan.layer
            show = layer.visible
            layer.visible = False
            layer.data = data
            layer.features = features
            for attr, value in style.items():
                setattr(layer, attr, value)
        else:
            layer = built
            show = kind == L.KIND_NUCLEI
            layer.name = plan.name
            layer = self.viewer.add_layer(layer)
        L.stamp(layer, image_layer.name, kind, checksums=checksums, **params)
        return plan.note, layer, show

    def _write_region(self, image_layer, region: np.ndarray, params: dict, geometry: dict) -> str:
        """Write the tumor region (probability Image or mask Labels), replacing only the
        plugin's own unedited region layer of the same type; returns a note."""
        as_mask = params.get("region") == "mask"
        plan = L.plan_output(self.viewer.layers, image_layer.name, _KIND_REGION)
        layer = plan.layer
        if layer is not None and isinstance(layer, Labels) != as_mask:
            self.viewer.layers.remove(layer)  # ours, unedited, of the other type: replace it
            layer = None
        # Written hidden and shown by the caller in the next event-loop turn (see _write_layer).
        if layer is not None:
            show = layer.visible
            layer.visible = False
            layer.data = region
            for attr, value in geometry.items():  # a slide's region may lie elsewhere now
                setattr(layer, attr, value)
        elif as_mask:
            show = True
            layer = self.viewer.add_labels(region, name=plan.name, opacity=0.35, visible=False, **geometry)
        else:
            # White (p = 0) to light orange (p = 1), multiplied onto the H&E at a low opacity:
            # non-tumor tissue keeps its colours and tumor is tinted, while nuclei and their
            # class outlines stay readable underneath.

            cmap = Colormap([[1.0, 1.0, 1.0, 1.0], list(D.REGION_RGBA)], name="uam tumor probability")
            show = True
            layer = self.viewer.add_image(
                region,
                name=plan.name,
                colormap=cmap,
                contrast_limits=(0.0, 1.0),
                blending="multiplicative",
                opacity=D.REGION_OPACITY,
                visible=False,
                **geometry,
            )
        L.stamp(layer, image_layer.name, _KIND_REGION, **params)
        return plan.note, layer, show

    def _result_steps(self, image_layer, out: _Outcome):
        """Add a finished run's layers; a generator that yields after each expensive step."""
        job = out.job
        prep = out.prepared
        prev = L.current_layer(self.viewer.layers, image_layer.name, L.KIND_NUCLEI)
        prev_rec = L.owner_record(prev) if prev is not None else None
        params = {
            "mpp": job.mpp,
            "backend_choice": job.backend,
            "segment_backend": out.backend or (prev_rec or {}).get("segment_backend"),
            "measured": "measure" in out.ran or job.table is not None,
            "schema_id": out.table.attrs.get("schema_id"),
            "view": job.view.as_list() if job.view else None,
            "area": job.area,
        }
        if out.model_id:
            params.update(model_id=out.model_id, tumor_class=out.table.attrs.get("tumor_class"))
        kinds = [L.KIND_NUCLEI] + ([L.KIND_TUMOR] if out.tumor is not None else [])
        edited = self._edited_targets(image_layer, kinds)
        replace = bool(edited) and self._confirm_replace(edited)
        notes = list(job.notes)
        outline = {"contour": D.CONTOUR_PX, "opacity": 1.0, **job.geometry}
        note, nuclei, show = self._write_layer(
            image_layer, self._plan(image_layer, L.KIND_NUCLEI, replace), L.KIND_NUCLEI, prep.nuclei_layer,
            prep.labels, prep.features, params, prep.nuclei_checksums, {"colormap": prep.nuclei_colormap, **outline})  # fmt: skip
        notes.append(note)
        yield
        if show:
            nuclei.visible = True  # drawn now, in its own turn of the event loop
            yield
        n_tumor = None
        if out.tumor is not None:
            n_tumor = int((out.table["class"] == out.table.attrs.get("tumor_class", "tumor")).sum())
            # The nuclei outlines already show tumor in green; this layer isolates the tumor
            # cells on demand, so it starts hidden rather than doubling the outlines.
            note, tumor, show = self._write_layer(
                image_layer, self._plan(image_layer, L.KIND_TUMOR, replace), L.KIND_TUMOR, prep.tumor_layer, prep.tumor,
                prep.features, params, prep.tumor_checksums, {"colormap": prep.tumor_colormap, **outline})  # fmt: skip
            notes.append(note)
            yield
            if show:
                tumor.visible = True
                yield
        else:
            # The old tumor layer belongs to the previous nuclei: drop it if it is ours and untouched.
            for layer in L.owned_layers(self.viewer.layers, image_layer.name, L.KIND_TUMOR):
                if not L.is_edited(layer):
                    self.viewer.layers.remove(layer)
        if out.region is not None:
            note, region, show = self._write_region(
                image_layer, out.region, {**params, "region": job.region}, job.geometry
            )
            notes.append(note)
            yield
            if show:
                region.visible = True
                yield
        self.mpp_estimate.show_estimate(image_layer.name, out.mpp_estimate)
        # Keep the image as the active target so the next click works on it again.
        if image_layer in self.viewer.layers:
            self.viewer.layers.selection.active = image_layer
        self._show_current()
        self._say(
            L.status_text(
                ran=out.ran,
                n_cells=len(out.table),
                seconds=out.seconds,
                backend=out.backend,
                model_id=out.model_id,
                n_tumor=n_tumor,
                notes=notes,
            )
        )

    def _show_current(self, *_) -> None:
        """Name the results layer that Export, Measure and Classify work on for this image."""
        name = self.image_combo.currentText()
        nuclei = L.current_layer(self.viewer.layers, name, L.KIND_NUCLEI) if name else None
        if nuclei is None:
            self.current_label.setText("Current results: none yet for this image.")
            return
        n = len(L.owned_layers(self.viewer.layers, name, L.KIND_NUCLEI))
        others = f" (newest of {n} nuclei layers of '{name}')" if n > 1 else ""
        self.current_label.setText(f"Current results: '{nuclei.name}'{others}.")

    # ------------------------------------------------------------------------- export
    def export(self, overwrite: bool = False) -> None:
        """Write the chosen image's cell table, polygons and labels to the export folder."""
        if self.busy:
            self._say("A run is in progress; export when it has finished.")
            return
        layer = self._selected_image()
        if layer is None:
            return
        nuclei = L.current_layer(self.viewer.layers, layer.name, L.KIND_NUCLEI)
        if nuclei is None:
            self._fail(f"Nothing to export for '{layer.name}' yet: click Classify cells (or Segment nuclei) first.")
            return
        labels = np.asarray(nuclei.data)
        rec = L.owner_record(nuclei)
        table = L.from_features(
            nuclei.features, {k: rec.get(k) for k in ("schema_id", "model_id", "tumor_class") if rec.get(k)}
        )
        ids = np.unique(labels)
        if set(ids[ids > 0].tolist()) != set(table["label"].astype(int).tolist()):
            self._fail(
                f"'{nuclei.name}' was edited after it was measured, so its table no longer matches: "
                "click Measure cells or Classify cells, then export."
            )
            return
        formats = tuple(fmt for fmt, cb in self.export_checks.items() if cb.isChecked())
        if not formats:
            self._fail("Tick at least one export format.")
            return
        out_dir = self._export_folder()
        if not out_dir:
            self._say("Export: no folder chosen.")
            return
        stem = L.export_stem(layer.name, layer.metadata)
        provenance = {"image_layer": layer.name, **{k: v for k, v in rec.items() if "checksum" not in k}}
        # A slide's view or a drawn area: coordinates in the whole image's pixels (QuPath then
        # places the cells on the slide); the labels TIFF is the region's.
        view = rec.get("view")
        origin = (view[0], view[2]) if view else (0, 0)
        args = (labels.copy(), table, out_dir, stem, formats, overwrite, provenance, rec.get("mpp"), origin)
        self._set_busy(True)
        self._say(f"Exporting '{stem}' to {out_dir}...")
        self._export_target = out_dir
        # Not cancellable (no cancel flag, no guard.begin): a few files, written in seconds.
        worker = create_worker(_export, *args, _ignore_errors=True)
        self._run.launch(worker, returned=self._on_exported, finished=self._on_finished)

    def _confirm_overwrite(self, message: str) -> bool:
        answer = QMessageBox.question(
            self,
            "Overwrite files?",
            f"{message}\n\nOverwrite them?",
            QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
            QMessageBox.StandardButton.No,
        )
        return answer == QMessageBox.StandardButton.Yes

    def _on_exported(self, result) -> None:
        if self._run.closed:
            return
        out_dir = self._export_target
        written, err = result
        if isinstance(err, FileExistsError):
            # Ask after the worker has finished so the overwrite run can start right away.
            self._run.release()
            self._set_busy(False)
            if self._confirm_overwrite(str(err)):
                self.export(overwrite=True)
            else:
                self._say("Export cancelled: existing files were kept.")
            return
        if err is not None:
            if isinstance(err, FolderLockedError):
                self._fail(f"Not exported: {err}")
                return
            self._fail(f"Export failed: {err}", error=not isinstance(err, (OSError, UAMError)))
            return
        names = ", ".join(Path(p).name for p in written.values())
        self._say(f"Exported to {out_dir}: {names}.")
