"""The "UAM train classifier" dock: fine-tune the cell classifier on annotated images.

The dock collects inputs (annotated nuclei layers and/or folders of saved projects, starting
model, architecture, epochs, learning rate, validation share, seed, device, output file) in
the GUI thread and runs :func:`napari_uam.training.finetune.finetune` -- the function
``napari-uam train`` runs -- in a napari worker thread. Progress comes back through a Qt
signal: the bar follows the steps, the plot and the status line every epoch. Cancel sets a
flag the training loop polls between steps; nothing is written until training has finished,
and then the checkpoint and its model card are written together
(:func:`~napari_uam.training.finetune.save_finetuned`), never over the shipped weights and
never over an existing file without asking. **Use for Classify cells** then points the
classifier dock at the new checkpoint.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
from napari.layers import Labels
from napari.utils.notifications import show_info, show_warning
from qtpy.QtCore import Qt, QTimer
from qtpy.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QListWidget,
    QListWidgetItem,
    QMessageBox,
    QProgressBar,
    QPushButton,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from ..errors import CancelledError, UAMError
from ..io.project import ProjectError, find_projects
from ..training.calibration import describe
from ..training.finetune import (
    INIT_DEFAULT,
    INIT_SCRATCH,
    SOURCE_IMAGE,
    FinetuneConfig,
    _concat,
    _is_shipped,
    cells_from_annotation,
    cells_from_projects,
    finetune,
    save_finetuned,
    trust_sentence,
)
from ..training.splits import group_split
from ..validation import as_rgb_uint8
from . import _layers as L
from ._plot import TrainingPlot
from ._rows import path_row, scroll_wrap
from ._worker import BackgroundRun, Outcome
from .annotate import annotated_table, source_of

START_DEFAULT = "Shipped default model"
START_FILE = "Checkpoint file..."
START_SCRATCH = "From scratch"
_ROLE = Qt.ItemDataRole.UserRole


def default_output() -> Path:
    """A fresh checkpoint path in ``~/napari-uam/models`` (time-stamped, so never an existing file)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d_%H%M%S")
    return Path.home() / "napari-uam" / "models" / f"uam_finetuned_{stamp}.pt"


@dataclass
class _TrainJob:
    """Inputs of one run, captured in the GUI thread (the worker never touches layers)."""

    layers: list = field(default_factory=list)  # (image_id, image, labels, table, mpp)
    folders: list = field(default_factory=list)
    config: object = None
    out: str = ""
    overwrite: bool = False


@dataclass
class _TrainOutcome(Outcome):
    """The saved checkpoint and its model card, or why there are none (``cancelled`` /
    ``error``, see :class:`~._worker.Outcome`)."""

    job: _TrainJob
    path: Optional[Path] = None
    card: Optional[Path] = None
    result: object = None


def _train(job: _TrainJob, cancelled, report) -> _TrainOutcome:
    """Worker body: measure the annotated cells, fine-tune, save.

    Raises what training raises (the :class:`~._worker.BackgroundRun` turns it into an
    outcome); ``report(dict)`` relays progress to the GUI thread.
    """

    report({"event": "status", "text": "Measuring the annotated nuclei..."})
    parts = [
        cells_from_annotation(img, lab, tab, mpp, name, cancel=cancelled) for name, img, lab, tab, mpp in job.layers
    ]
    if job.folders:
        parts.append(cells_from_projects(job.folders, cancel=cancelled))
    cells = _concat(parts)
    cells, val_note = validation_groups(cells, job.config.val_fraction, job.config.seed)
    report({"event": "validation", "text": val_note})
    result = finetune(cells, job.config, progress=report, cancel=cancelled)
    if cancelled():
        raise CancelledError("Training cancelled; nothing was saved.")
    path, card = save_finetuned(result, job.out, overwrite=job.overwrite)
    return _TrainOutcome(job=job, path=path, card=card, result=result)


#: With this many annotated images or fewer, validation holds out cells, not whole images.
SPLIT_CELLS_UP_TO = 2


def validation_groups(cells, val_fraction: float, seed: int = 0):
    """The validation groups of a training run, and a sentence naming what validates.

    Fine-tuning holds out whole images (``cells["image"]`` groups, seeded). With one or two
    images that leaves one image, or none, to learn from; then each image's cells are dealt
    at random into about ``1 / val_fraction`` groups named ``"<image> (cells k/n)"``, so a
    share of the cells of every image validates. (Neighbouring cells are alike, so such a
    score is optimistic: the sentence says so.)

    Returns:
        (cells with possibly renamed ``image`` groups, sentence for the dock's status line).
    """

    if len(cells) == 0 or val_fraction <= 0:
        return cells, "No validation (validation share 0): every annotated cell trains."
    images = sorted(map(str, cells["image"].unique()))
    if len(images) <= SPLIT_CELLS_UP_TO:
        k = int(min(10, max(2, round(1.0 / val_fraction))))
        rng = np.random.default_rng(seed)
        cells = cells.copy()

        if SOURCE_IMAGE not in cells.columns:  # the trust model anchors whole images, not groups
            cells[SOURCE_IMAGE] = cells["image"].astype(str)
        group = cells["image"].astype(str).to_numpy().astype(object)
        for name in images:
            rows = np.flatnonzero(group == name)
            folds = rng.permutation(len(rows)) % k
            group[rows] = [f"{name} (cells {f + 1}/{k})" for f in folds]
        cells["image"] = group
    _, held = group_split(cells["image"].astype(str).to_numpy(), val_fraction, seed=seed)
    names = sorted(map(str, cells.loc[held, "image"].unique()))
    if len(images) <= SPLIT_CELLS_UP_TO:
        return cells, (f"Validating on {int(held.sum())} of {len(cells)} cells ({', '.join(names)}): with "
                       f"{len(images)} image{'s' if len(images) > 1 else ''}, cells are held out, not whole "
                       "images, so the score is optimistic.")  # fmt: skip
    return cells, f"Validating on the images {', '.join(names)} ({int(held.sum())} cells); the others train."


#: Annotation sources that mean a person (or their region / points layer) set the class.
_CORRECTED = ("user", "region", "points")


def corrected(table) -> bool:
    """Whether a cell table holds classes set by the user rather than the model."""
    return "annotation" in table.columns and bool(table["annotation"].isin(_CORRECTED).any())


class TrainWidget(QWidget):
    """Dock widget: fine-tune (or train) the cell classifier on annotated images.

    Args:
        napari_viewer: the viewer the dock belongs to (napari passes it).
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._history: list[dict] = []
        self._epochs = 1
        self.last_checkpoint: Optional[Path] = None
        # Closing napari cancels the run and waits for it: no checkpoint is written afterwards.
        self._run = BackgroundRun(self, self._on_progress)
        self._build()
        # The list is refreshed in the next turn of the event loop: the classifier dock stamps
        # a result layer as its own right after inserting it, and "current" is read off that.
        self._refresh_timer = QTimer(self)
        self._refresh_timer.setSingleShot(True)
        self._refresh_timer.setInterval(0)
        self._refresh_timer.timeout.connect(self.refresh_sources)
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_soon)
        self.viewer.layers.events.inserted.connect(self._watch_layer)
        for layer in self.viewer.layers:
            self._watch_layer(layer)
        self.refresh_sources()

    def _refresh_soon(self, event=None) -> None:
        self._refresh_timer.start()

    def _watch_layer(self, event) -> None:
        """Class corrections (a features change) can make an older result worth listing."""
        layer = getattr(event, "value", event)
        features_event = getattr(getattr(layer, "events", None), "features", None)
        if isinstance(layer, Labels) and features_event is not None:
            features_event.connect(self._refresh_soon)

    # ------------------------------------------------------------------ UI construction
    def _build(self) -> None:
        from ..models import list_models

        self.sources = QListWidget()
        self.sources.setToolTip(
            "Tick the annotated images to train on: open nuclei layers with classes, and project folders."
        )
        self.sources.setMaximumHeight(110)
        self.sources_note = QLabel("")
        self.sources_note.setWordWrap(True)
        self.sources_note.setStyleSheet("color: gray;")
        self.sources_note.setVisible(False)
        src_row = QHBoxLayout()
        self.add_folder_btn = QPushButton("Add folder...")
        self.add_folder_btn.setToolTip("A project folder saved by the annotate dock, or a folder of them.")
        self.add_folder_btn.clicked.connect(lambda: self.add_folder())
        self.refresh_btn = QPushButton("Refresh")
        self.refresh_btn.clicked.connect(self.refresh_sources)
        src_row.addWidget(self.add_folder_btn)
        src_row.addWidget(self.refresh_btn)

        form = QFormLayout()
        self.start_combo = QComboBox()
        self.start_combo.addItems([START_DEFAULT, START_FILE, START_SCRATCH])
        self.start_combo.currentTextChanged.connect(self._on_start_changed)
        self.init_edit, self.init_browse, init_row = path_row(self._browse_init, "previous checkpoint .pt")
        form.addRow("Start from", self.start_combo)
        form.addRow("", init_row)
        self.arch_combo = QComboBox()
        self.arch_combo.addItems(list_models())
        self.arch_combo.setCurrentText("uam-l")
        form.addRow("Architecture", self.arch_combo)
        self.epochs_spin = QSpinBox()
        self.epochs_spin.setRange(1, 1000)
        self.epochs_spin.setValue(20)
        form.addRow("Epochs", self.epochs_spin)
        self.lr_spin = QDoubleSpinBox()
        self.lr_spin.setDecimals(5)
        self.lr_spin.setRange(1e-5, 0.1)
        self.lr_spin.setSingleStep(1e-4)
        self.lr_spin.setValue(3e-4)
        form.addRow("Learning rate", self.lr_spin)
        self.val_spin = QDoubleSpinBox()
        self.val_spin.setRange(0.0, 0.5)
        self.val_spin.setSingleStep(0.05)
        self.val_spin.setValue(0.2)
        self.val_spin.setToolTip(
            "Share held out to validate and stop early: whole images, or with one or two "
            "images a share of each image's cells."
        )
        form.addRow("Validation share", self.val_spin)
        self.patience_spin = QSpinBox()
        self.patience_spin.setRange(0, 100)
        self.patience_spin.setValue(5)
        self.patience_spin.setToolTip("Stop after this many epochs without validation improvement (0: never).")
        form.addRow("Early stopping", self.patience_spin)
        self.seed_spin = QSpinBox()
        self.seed_spin.setRange(0, 2**31 - 1)
        form.addRow("Seed", self.seed_spin)
        self.device_combo = QComboBox()
        self.device_combo.addItems(["cpu", "cuda"])
        try:
            import torch

            has_cuda = bool(torch.cuda.is_available())
        except ImportError:
            has_cuda = False
        self.device_combo.model().item(1).setEnabled(has_cuda)
        form.addRow("Device", self.device_combo)
        self.out_edit, self.out_browse, out_row = path_row(self._browse_out, text=str(default_output()))
        form.addRow("Save as", out_row)
        self._on_start_changed(self.start_combo.currentText())

        self.train_btn = QPushButton("Train")
        self.train_btn.clicked.connect(self.start)
        self.cancel_btn = QPushButton("Cancel")
        self.cancel_btn.setEnabled(False)
        self.cancel_btn.clicked.connect(self.cancel)
        self.progress = QProgressBar()
        self.progress.setRange(0, 1000)  # per mille: long runs still move the bar every epoch
        self.progress.setFormat("%p%")
        run_row = QHBoxLayout()
        run_row.addWidget(self.train_btn)
        run_row.addWidget(self.progress, 1)
        run_row.addWidget(self.cancel_btn)
        self.plot = TrainingPlot()
        self.status = QLabel("Annotate some nuclei (UAM annotate cells), tick them above, click Train.")
        self.status.setWordWrap(True)
        self.status.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.validation_label = QLabel("Validation: set when training starts.")
        self.validation_label.setWordWrap(True)
        self.validation_label.setToolTip("Which images (or, with one or two images, which cells) score the model.")
        self.use_btn = QPushButton("Use for Classify cells")
        self.use_btn.setEnabled(False)
        self.use_btn.setToolTip("Point the UAM cell classifier dock at the checkpoint just trained.")
        self.use_btn.clicked.connect(self.use_for_classify)

        inner = QWidget()
        root = QVBoxLayout(inner)
        root.addWidget(QLabel("Annotated images"))
        root.addWidget(self.sources)
        root.addWidget(self.sources_note)
        root.addLayout(src_row)
        root.addLayout(form)
        root.addLayout(run_row)
        root.addWidget(self.plot)
        root.addWidget(self.status)
        root.addWidget(self.validation_label)
        root.addWidget(self.use_btn)
        root.addStretch(1)
        self.scroll = scroll_wrap(self, inner)

    def _on_start_changed(self, text: str) -> None:
        self.init_edit.setEnabled(text == START_FILE)
        self.init_browse.setEnabled(text == START_FILE)
        # A checkpoint fixes its architecture; only a model trained from scratch can pick one.
        self.arch_combo.setEnabled(text == START_SCRATCH)
        self.lr_spin.setValue(1e-3 if text == START_SCRATCH else 3e-4)

    def _browse_init(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Starting checkpoint", "", "Checkpoints (*.pt *.pth)")
        if path:
            self.init_edit.setText(path)

    def _browse_out(self) -> None:
        path, _ = QFileDialog.getSaveFileName(
            self, "Save the trained model as", self.out_edit.text(), "Checkpoints (*.pt)"
        )
        if path:
            self.out_edit.setText(path)

    # ------------------------------------------------------------------------ sources
    def refresh_sources(self, event=None) -> None:
        """List the open annotated nuclei layers (kept ticked as they were) and the added folders.

        Of the classifier dock's result layers, each image's current one is listed (marked
        "(current)"); an older one only when the user corrected classes in it: older results
        nobody reviewed are stale predictions (Classify cells kept them beside the new ones
        because they had been edited, e.g. painted), and training on them teaches nothing.
        """
        ticked = {
            self.sources.item(i).data(_ROLE): self.sources.item(i).checkState() for i in range(self.sources.count())
        }
        folders = [k for k in ticked if k and k[0] == "folder"]
        self.sources.clear()
        hidden = []
        for layer in self.viewer.layers:
            rec = L.owner_record(layer)
            table = annotated_table(layer) if isinstance(layer, Labels) else None
            if table is None or (rec is not None and rec["kind"] != L.KIND_NUCLEI):
                continue
            text, tip = f"layer: {layer.name}", ""
            if rec is not None:
                if L.current_layer(self.viewer.layers, rec["source"], L.KIND_NUCLEI) is layer:
                    text += " (current)"
                    tip = f"The current results of '{rec['source']}' (what Classify cells and Export use)."
                elif corrected(table):
                    text += " (older results, with your corrections)"
                    tip = f"Older results of '{rec['source']}', listed because you corrected classes in them."
                else:
                    hidden.append(layer.name)
                    continue
            # Ticked by default only when someone reviewed it: untouched predictions would
            # just teach the model its own mistakes.
            reviewed = "annotation" in table.columns and bool((table["annotation"] != "model").any())
            default = Qt.CheckState.Checked if reviewed else Qt.CheckState.Unchecked
            self._add_item(text, ("layer", layer.name), ticked, default, tip)
        for key in folders:
            self._add_item(f"folder: {key[1]}", key, ticked)
        if hidden:
            names = ", ".join(f"'{n}'" for n in hidden)
            self.sources_note.setText(f"Not listed: {names} (older results without your corrections).")
        else:
            self.sources_note.setText("")
        self.sources_note.setVisible(bool(hidden))

    def _add_item(self, text, key, ticked, default=Qt.CheckState.Checked, tip: str = "") -> None:
        item = QListWidgetItem(text)
        if tip:
            item.setToolTip(tip)
        item.setData(_ROLE, key)
        item.setFlags(item.flags() | Qt.ItemFlag.ItemIsUserCheckable)
        item.setCheckState(ticked.get(key, default))
        self.sources.addItem(item)

    def add_folder(self, folder: Optional[str] = None) -> bool:
        """Add a project folder (or a folder of projects) to the training data."""

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Folder of annotation projects")
            if not folder:
                return False
        try:
            found = find_projects(folder)
        except ProjectError as err:
            self._fail(str(err))
            return False
        self._add_item(f"folder: {folder}", ("folder", str(folder)), {})
        self.status.setText(f"Added {len(found)} project(s) from {folder}.")
        return True

    # ------------------------------------------------------------------------ running
    @property
    def busy(self) -> bool:
        """True while a training run is in progress."""
        return self._run.active

    def _fail(self, text: str) -> None:
        self.status.setText(text)
        show_warning(text)

    def _config(self):

        start = self.start_combo.currentText()
        if start == START_FILE:
            init = self.init_edit.text().strip()
            if not init:
                self._fail("Choose the checkpoint to start from, or start from the shipped model.")
                return None
        else:
            init = INIT_SCRATCH if start == START_SCRATCH else INIT_DEFAULT
        return FinetuneConfig(
            init=init, arch=self.arch_combo.currentText(), epochs=self.epochs_spin.value(), lr=self.lr_spin.value(),
            patience=self.patience_spin.value(), val_fraction=self.val_spin.value(), seed=self.seed_spin.value(),
            device=self.device_combo.currentText(),
        )  # fmt: skip

    def _make_job(self) -> Optional[_TrainJob]:

        job = _TrainJob()
        for i in range(self.sources.count()):
            item = self.sources.item(i)
            if item.checkState() != Qt.CheckState.Checked:
                continue
            kind, name = item.data(_ROLE)
            if kind == "folder":
                job.folders.append(name)
                continue
            if name not in self.viewer.layers:
                continue
            layer = self.viewer.layers[name]
            image, mpp = source_of(self.viewer, layer)
            if image is None:
                self._fail(f"Cannot tell which image '{name}' belongs to; keep its image open.")
                return None

            data = image.data[0] if getattr(image, "multiscale", False) else image.data
            job.layers.append((image.name, as_rgb_uint8(np.asarray(data)), np.array(layer.data, copy=True),
                               annotated_table(layer), mpp or L.DEFAULT_MPP))  # fmt: skip
        if not job.layers and not job.folders:
            self._fail("Tick at least one annotated image (or add a project folder) to train on.")
            return None
        job.config = self._config()
        if job.config is None:
            return None
        out = self.out_edit.text().strip()
        if not out:
            self._fail("Choose where to save the trained model.")
            return None
        out_path = Path(out).expanduser()
        if out_path.suffix not in (".pt", ".pth"):
            out_path = out_path.with_suffix(".pt")
        if _is_shipped(out_path):
            self._fail(
                f"{out_path} is napari-uam's shipped weights folder, which is never overwritten; choose another file."
            )
            return None
        taken = [p for p in (out_path, out_path.with_suffix(".md")) if p.exists()]
        if taken:
            answer = QMessageBox.question(self, "Overwrite the model?",
                                          f"{', '.join(map(str, taken))} exists.\n\nOverwrite it when training finishes?",
                                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                          QMessageBox.StandardButton.No)  # fmt: skip
            if answer != QMessageBox.StandardButton.Yes:
                self.status.setText("Not started: choose another file name to keep the existing model.")
                return None
            job.overwrite = True
        job.out = str(out_path)
        return job

    def start(self) -> None:
        """Train on the ticked images in a worker thread."""
        if self.busy:
            self.status.setText("Training is in progress; wait for it or click Cancel.")
            return
        job = self._make_job()
        if job is None:
            return
        self._history = []
        self._epochs = job.config.epochs
        self.plot.set_history([], self._epochs)
        self.progress.setValue(0)
        self.use_btn.setEnabled(False)
        self.train_btn.setEnabled(False)
        self.cancel_btn.setEnabled(True)
        n = len(job.layers) + len(job.folders)
        self.status.setText(f"Training on {n} source(s)...")
        # Bound methods only: Qt drops them if the dock is closed while the worker runs.
        self._run.start(_train, job, _TrainOutcome, returned=self._on_returned, finished=self._on_finished,
                        log="napari-uam training failed")  # fmt: skip

    def cancel(self) -> None:
        """Stop training at the next step; nothing is saved."""
        if self._run.cancel():
            self.cancel_btn.setEnabled(False)
            self.status.setText("Cancelling...")

    def _on_progress(self, rec: dict) -> None:
        if self._run.closed:
            return
        event = rec.get("event")
        if event == "status":
            self.status.setText(rec["text"])
        elif event == "validation":
            self.validation_label.setText(rec["text"])
        elif event == "start":
            self.status.setText(
                f"Training on {rec['n_train']} cells, validating on {rec['n_val']} ({rec['device']})..."
            )
        elif event == "step":
            value = int(1000 * (rec["epoch"] - 1 + rec["fraction"]) / max(self._epochs, 1))
            self.progress.setValue(max(self.progress.value(), min(value, 999)))
        elif event == "epoch":
            self._history.append(rec)
            self.plot.set_history(self._history, self._epochs)
            self.progress.setValue(
                max(self.progress.value(), min(int(1000 * rec["epoch"] / max(self._epochs, 1)), 999))
            )
            if rec["epoch"] == 0:
                self.status.setText(f"Starting model: validation accuracy {rec['val_accuracy']:.3f}.")
            else:
                val = (
                    ""
                    if not np.isfinite(rec["val_accuracy"])
                    else (f", validation accuracy {rec['val_accuracy']:.3f}, F1 {rec['val_f1']:.3f}")
                )
                self.status.setText(f"Epoch {rec['epoch']}/{self._epochs}: loss {rec['loss']:.3f}{val}")

    def _on_finished(self) -> None:
        if not self._run.finish(self.sender()):
            return  # napari is closing: the dock's widgets may be gone
        self.train_btn.setEnabled(True)
        self.cancel_btn.setEnabled(False)

    def _on_returned(self, out: _TrainOutcome) -> None:
        if self._run.closed:
            return
        if out.cancelled:
            self.progress.setValue(0)
            self.status.setText("Training cancelled: no model was saved.")
            show_info("UAM training cancelled; nothing was saved.")
            return
        if out.error is not None:
            self.progress.setValue(0)
            err = out.error
            known = isinstance(err, (UAMError, OSError))
            self._fail(
                str(err) if known else f"Unexpected error ({type(err).__name__}: {err}); details are in the log."
            )
            return
        res = out.result
        self.progress.setValue(self.progress.maximum())
        self.last_checkpoint = out.path
        vm = res.val_metrics
        val = (
            f" Validation accuracy {vm['accuracy']:.3f} (start {res.start_metrics['accuracy']:.3f})."
            if vm and res.start_metrics
            else (f" Validation accuracy {vm['accuracy']:.3f}." if vm else "")
        )
        worse = res.start_metrics and vm and res.start_metrics["accuracy"] > vm["accuracy"]
        kept = (
            " (the starting model scored higher on the validation images: annotate more, or keep it)" if worse else ""
        )

        self.status.setText(f"Saved {out.path} and its model card; kept epoch {res.best_epoch}{kept}.{val} "
                            f"{describe(res.calibration)} {trust_sentence(res)} "
                            "Click 'Use for Classify cells' to classify with it.")  # fmt: skip
        self.use_btn.setEnabled(True)
        # Offer the next run a fresh name so it never collides with this model.
        self.out_edit.setText(str(out.path.parent / default_output().name))

    def use_for_classify(self) -> None:
        """Point the UAM cell classifier dock (opened if needed) at the model just trained."""
        if self.last_checkpoint is None:
            return
        _, classifier = self.viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
        classifier.use_checkpoint(self.last_checkpoint)
        self.status.setText(f"UAM cell classifier now uses {self.last_checkpoint.name}; click Classify cells.")
