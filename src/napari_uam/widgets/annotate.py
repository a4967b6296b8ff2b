"""The "UAM annotate cells" dock: correct the classes the model painted, save and reload them.

With **Annotation mode** on, the chosen nuclei layer is coloured by class (tumor green,
non-tumor blue, unlabelled yellow) and:

* a click on a nucleus gives it the current class; Shift+drag paints the class over every
  nucleus the cursor crosses;
* the keys **T** / **N** / **U** (with the nuclei layer selected) give the nucleus under the
  cursor the class tumor / non-tumor / unlabelled and make it the current class;
* napari's own Labels tools (paint, erase, fill, polygon) edit the nuclei; the table follows
  (new nuclei start unlabelled, erased ones lose their row); features are measured again
  before training;
* **Label cells from layer** derives classes from a tumor-region layer (Shapes, Labels or a
  mask image: tumor when > 50 % of the nucleus is inside) or a Points layer (the nucleus
  under each point or nearest to it, class from the points' ``class`` feature, else tumor).

Classes live in the layer's ``features`` (``class`` and ``annotation`` columns), so they show on
hover, are exported with the cells, and mark the layer as edited: the classifier dock never
replaces it. **Save project** writes image + nuclei + cell table (+ region) to a folder that
**Open project** and the Train dock read back. All table logic is in :mod:`napari_uam.annotation`.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional

import numpy as np
import pandas as pd
from napari.layers import Image, Labels, Points, Shapes  # isinstance: plugins get proxies of layers
from napari.utils.colormaps import DirectLabelColormap
from napari.utils.notifications import show_warning
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QFileDialog,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QMessageBox,
    QPushButton,
    QRadioButton,
    QVBoxLayout,
    QWidget,
)

from .. import annotation as A
from ..io.project import ProjectError, load_project, save_project
from ..validation import as_rgb_uint8
from . import _display as D
from . import _layers as L
from ._rows import scroll_wrap

logger = logging.getLogger(__name__)

#: Class edits kept for undo.
_UNDO_DEPTH = 100
#: Key of the annotation record in ``layer.metadata`` (source image and pixel size).
ANNOTATION_KEY = "napari_uam_annotation"


def source_of(viewer, layer) -> tuple[Optional[object], Optional[float]]:
    """The image layer a nuclei layer belongs to and its pixel size, or (None, None).

    Looks at the annotation record, then the classifier's record, then for a single RGB image
    of the same size.
    """
    meta = getattr(layer, "metadata", None) or {}
    rec = meta.get(ANNOTATION_KEY) or L.owner_record(layer) or {}
    name, mpp = rec.get("source"), rec.get("mpp")
    image = viewer.layers[name] if name and name in viewer.layers else None
    if image is None:
        shape = tuple(np.shape(layer.data))
        same = [x for x in viewer.layers if isinstance(x, Image) and x.rgb and tuple(np.shape(x.data))[:2] == shape]
        image = same[0] if len(same) == 1 else None
    if image is not None and mpp is None:
        mpp = L.mpp_from_metadata(image.metadata)[0]
    return image, (None if mpp is None else float(mpp))


def _shift_held(event) -> bool:
    """Whether Shift is among a napari mouse event's modifiers.

    A real Qt event reaches napari through vispy, whose modifiers are ``vispy.util.keys.Key``
    objects (``<Key 'Shift'>``, which ``str()`` does not turn into ``"Shift"``); a Key
    compares equal to its name, so ``==`` works for Keys and plain names alike.
    """
    return any(m == "Shift" for m in (getattr(event, "modifiers", None) or ()))


def _region_mask(data) -> np.ndarray:
    """Tumor region of a Labels / mask layer (non-zero) or a probability image (>= 0.5)."""
    arr = np.asarray(data)
    return arr >= 0.5 if np.issubdtype(arr.dtype, np.floating) else arr > 0


def annotated_table(layer) -> Optional[pd.DataFrame]:
    """The layer's cell table if it carries classes (``class`` column), else None."""
    feats = getattr(layer, "features", None)
    if feats is None or "label" not in feats.columns or "class" not in feats.columns:
        return None
    return L.from_features(feats)


class AnnotateWidget(QWidget):
    """Dock widget: cell-class annotation on a nuclei layer, and annotation projects.

    Args:
        napari_viewer: the viewer the dock belongs to (napari passes it).
    """

    def __init__(self, napari_viewer, parent=None):
        super().__init__(parent)
        self.viewer = napari_viewer
        self._layer = None  # the layer annotation mode is on for
        self._saved_colormap = None
        self._sync_timer = QTimer(self)
        self._sync_timer.setSingleShot(True)
        self._sync_timer.setInterval(250)  # one table sync per paint stroke, not per pixel
        self._sync_timer.timeout.connect(self.sync_table)
        # Class edits, newest last: (layer, features before the edit, what was done). napari's
        # own undo covers painted pixels only, not the class column of the features table.
        self._undo: list[tuple[object, pd.DataFrame, str]] = []
        self._build()
        for ev in (self.viewer.layers.events.inserted, self.viewer.layers.events.removed):
            ev.connect(self._refresh_layers)
        self._refresh_layers()

    # ------------------------------------------------------------------ UI construction
    def _build(self) -> None:
        form = QFormLayout()
        self.layer_combo = QComboBox()
        self.layer_combo.setToolTip(
            "The nuclei (Labels) layer to annotate, e.g. '<image> nuclei' after Classify cells."
        )
        self.layer_combo.currentTextChanged.connect(self._on_layer_changed)
        form.addRow("Nuclei", self.layer_combo)

        self.mode_check = QCheckBox("Annotation mode (colour nuclei by class)")
        self.mode_check.toggled.connect(self.set_mode)
        class_row = QHBoxLayout()
        self.class_group = QButtonGroup(self)
        self.class_buttons: dict[str, QRadioButton] = {}
        for cls, key in (("tumor", "T"), ("non-tumor", "N"), ("unlabelled", "U")):
            b = QRadioButton(f"{cls} ({key})")
            b.setToolTip(f"Click a nucleus to make it {cls}; key {key} sets the nucleus under the cursor.")
            self.class_group.addButton(b)
            self.class_buttons[cls] = b
            class_row.addWidget(b)
        self.class_buttons[A.TUMOR].setChecked(True)

        derive = QGroupBox("Label cells from a region or points layer")
        dv = QHBoxLayout(derive)
        self.source_combo = QComboBox()
        self.source_combo.setToolTip(
            "Shapes / Labels / mask image: tumor when > 50 % of a nucleus is inside, non-tumor otherwise. "
            "Points: the marked nuclei (class from the points' 'class' feature, else tumor)."
        )
        self.derive_btn = QPushButton("Label cells from layer")
        self.derive_btn.clicked.connect(self.derive_from_layer)
        dv.addWidget(self.source_combo, 1)
        dv.addWidget(self.derive_btn)

        self.undo_btn = QPushButton("Undo class edit (Ctrl+Z)")
        self.undo_btn.setToolTip("Undo the last class change (click, stroke, key or 'Label cells from layer').")
        self.undo_btn.setEnabled(False)
        self.undo_btn.clicked.connect(lambda: self.undo())

        self.status = QLabel("Classify cells first (UAM cell classifier), then correct the classes here.")
        self.status.setWordWrap(True)

        proj = QGroupBox("Project (image + nuclei + cell table + region)")
        pv = QHBoxLayout(proj)
        self.save_btn = QPushButton("Save project...")
        self.save_btn.clicked.connect(lambda: self.save_project())
        self.open_btn = QPushButton("Open project...")
        self.open_btn.clicked.connect(lambda: self.open_project())
        pv.addWidget(self.save_btn)
        pv.addWidget(self.open_btn)

        inner = QWidget()
        root = QVBoxLayout(inner)
        root.addLayout(form)
        root.addWidget(self.mode_check)
        root.addLayout(class_row)
        root.addWidget(self.undo_btn)
        root.addWidget(derive)
        root.addWidget(self.status)
        root.addWidget(proj)
        root.addStretch(1)
        self.scroll = scroll_wrap(self, inner)

    # ------------------------------------------------------------------------- layers
    def _labels_layers(self) -> list:
        return [x for x in self.viewer.layers if isinstance(x, Labels) and np.ndim(x.data) == 2]

    def _refresh_layers(self, event=None) -> None:
        current = self.layer_combo.currentText()
        names = [x.name for x in self._labels_layers() if L.owner_record(x) is None or L.owner_record(x)["kind"] == L.KIND_NUCLEI
                 or ANNOTATION_KEY in (x.metadata or {})]  # fmt: skip
        self.layer_combo.blockSignals(True)
        self.layer_combo.clear()
        self.layer_combo.addItems(names)
        nuclei = [n for n in names if L.owner_record(self.viewer.layers[n]) is not None]
        pick = current if current in names else (nuclei[-1] if nuclei else (names[-1] if names else ""))
        self.layer_combo.setCurrentText(pick)
        self.layer_combo.blockSignals(False)
        src = self.source_combo.currentText()
        self.source_combo.clear()
        for x in self.viewer.layers:
            if x.name != pick and (isinstance(x, (Shapes, Points)) or (isinstance(x, Labels) and L.owner_record(x) is None)
                                   or (isinstance(x, Image) and not x.rgb)):  # fmt: skip
                self.source_combo.addItem(x.name)
        if src:
            self.source_combo.setCurrentText(src)
        if self._layer is not None and self._layer not in list(self.viewer.layers):
            self._layer = None
            self.mode_check.setChecked(False)
        if pick != current:
            self._on_layer_changed(pick)

    def _on_layer_changed(self, name: str) -> None:
        if self.mode_check.isChecked():
            self.set_mode(False)
            self.set_mode(True)
        self._show_counts()

    @property
    def layer(self):
        """The chosen nuclei layer, or None."""
        name = self.layer_combo.currentText()
        return self.viewer.layers[name] if name and name in self.viewer.layers else None

    def current_class(self) -> str:
        return next(c for c, b in self.class_buttons.items() if b.isChecked())

    # ---------------------------------------------------------------------- the table
    def _table(self, layer) -> pd.DataFrame:
        """The layer's cell table with annotation columns, one row per nucleus."""
        feats = layer.features
        if feats is None or "label" not in feats.columns:
            table = A.centroids(np.asarray(layer.data))
        else:
            table = L.from_features(feats)
        table, _, _ = A.sync_to_labels(table, np.asarray(layer.data))
        return table

    def _write_table(self, layer, table: pd.DataFrame) -> None:
        layer.features = L.to_features(table)
        meta = dict(layer.metadata or {})
        if ANNOTATION_KEY not in meta:
            image, mpp = source_of(self.viewer, layer)
            meta[ANNOTATION_KEY] = {"source": image.name if image is not None else None, "mpp": mpp}
            layer.metadata = meta
        if layer is self._layer:
            self._recolor()
        self._show_counts()

    def _schedule_sync(self, event=None) -> None:
        self._sync_timer.start()

    def sync_table(self) -> None:
        """Follow Labels-tool edits: rows for new nuclei (unlabelled), none for erased ones."""
        layer = self._layer
        if layer is None:
            return
        before = layer.features
        table = self._table(layer)
        if (
            "label" not in before.columns
            or len(before) != len(table)
            or not np.array_equal(before["label"].to_numpy(np.int64), table["label"].to_numpy(np.int64))
        ):
            self._write_table(layer, table)

    def _show_counts(self) -> None:
        layer = self.layer
        if layer is None:
            self.status.setText("No nuclei layer: click Classify cells (or Segment nuclei) in the UAM cell classifier.")
            return
        table = annotated_table(layer)
        if table is None:
            self.status.setText(
                f"'{layer.name}' has no classes yet: turn on Annotation mode and click nuclei, or classify it."
            )
            return
        c = A.counts(table)
        self.status.setText(
            f"'{layer.name}': {c['tumor']} tumor, {c['non-tumor']} non-tumor, {c['unlabelled']} unlabelled; "
            f"{c['corrected']} set by you."
        )

    # ------------------------------------------------------------------ annotation mode
    def set_mode(self, on: bool) -> None:
        """Turn annotation mode on or off for the chosen nuclei layer."""
        if on and self._layer is not None:
            return
        if not on:
            layer, self._layer = self._layer, None
            if layer is not None:
                self._detach(layer)
            if self.mode_check.isChecked():
                self.mode_check.blockSignals(True)
                self.mode_check.setChecked(False)
                self.mode_check.blockSignals(False)
            return
        layer = self.layer
        if layer is None:
            self.mode_check.blockSignals(True)
            self.mode_check.setChecked(False)
            self.mode_check.blockSignals(False)
            self._show_counts()
            show_warning(self.status.text())
            return
        self._layer = layer
        self._saved_colormap = layer.colormap
        self._write_table(layer, self._table(layer))
        layer.mouse_drag_callbacks.append(self._on_mouse)
        for key, cls in A.CLASS_KEYS.items():
            layer.bind_key(key.upper(), self._key_handler(cls), overwrite=True)
        layer.bind_key("Control-Z", self._undo_key, overwrite=True)
        layer.events.paint.connect(self._schedule_sync)
        layer.events.data.connect(self._schedule_sync)
        self.viewer.layers.selection.active = layer
        layer.mode = "pan_zoom"
        if not self.mode_check.isChecked():
            self.mode_check.blockSignals(True)
            self.mode_check.setChecked(True)
            self.mode_check.blockSignals(False)

    def _detach(self, layer) -> None:
        if self._on_mouse in layer.mouse_drag_callbacks:
            layer.mouse_drag_callbacks.remove(self._on_mouse)
        for key in A.CLASS_KEYS:
            layer.bind_key(key.upper(), None)  # None unbinds
        layer.bind_key("Control-Z", None)  # napari's own paint undo is back
        for ev in (layer.events.paint, layer.events.data):
            try:
                ev.disconnect(self._schedule_sync)
            except (TypeError, RuntimeError, ValueError):
                pass
        if self._saved_colormap is not None:
            layer.colormap = self._saved_colormap
        self._saved_colormap = None

    def _recolor(self) -> None:

        layer = self._layer
        table = annotated_table(layer)
        if table is not None:
            layer.colormap = DirectLabelColormap(color_dict=A.class_color_dict(table))

    def assign(self, ids, cls: Optional[str] = None, source: str = "user") -> int:
        """Give the nuclei ``ids`` of the chosen layer the class ``cls`` (default: the current class).

        Returns:
            How many nuclei changed.
        """
        layer = self._layer or self.layer
        if layer is None:
            return 0
        cls = cls or self.current_class()
        table, n = A.set_class(self._table(layer), ids, cls, source)
        if n:
            self._remember(layer, f"{n} nucle{'us' if n == 1 else 'i'} set to {cls}")
            self._write_table(layer, table)
        return n

    # --------------------------------------------------------------------------- undo
    def _remember(self, layer, what: str) -> None:
        self._undo.append((layer, layer.features.copy(), what))
        del self._undo[:-_UNDO_DEPTH]
        self.undo_btn.setEnabled(True)

    def undo(self) -> bool:
        """Undo the newest class edit (of any layer still open); False when there is none."""
        while self._undo:
            layer, features, what = self._undo.pop()
            if layer in list(self.viewer.layers):
                # Labels-tool edits made since then keep their nuclei: sync the old classes to them.
                table, _, _ = A.sync_to_labels(L.from_features(features), np.asarray(layer.data))
                self._write_table(layer, table)
                self.undo_btn.setEnabled(bool(self._undo))
                self.status.setText(f"Undone: {what}. " + self.status.text())
                return True
        self.undo_btn.setEnabled(False)
        return False

    def _undo_key(self, layer):
        """Ctrl+Z on the annotated layer: the last class edit, else napari's paint undo."""
        if not self.undo():
            layer.undo()

    def assign_at(self, position, cls: Optional[str] = None) -> int:
        """Class of the nucleus at world ``position`` (what a click does)."""
        layer = self._layer or self.layer
        value = layer.get_value(position, world=True) if layer is not None else None
        if not value:
            return 0
        return self.assign([int(value)], cls)

    def _key_handler(self, cls: str):
        def handler(layer):
            self.class_buttons[cls].setChecked(True)
            self.assign_at(self.viewer.cursor.position, cls)

        handler.__doc__ = f"Mark the nucleus under the cursor as {cls}."
        return handler

    def _on_mouse(self, layer, event):
        """Click: class of the nucleus under the cursor. Shift+drag: of every nucleus crossed."""
        if layer.mode != "pan_zoom":
            return  # a Labels tool is active: let napari paint / erase / fill
        if not _shift_held(event):
            yield  # tell a click from a pan: only a release without a move assigns
            moved = False
            while event.type == "mouse_move":
                moved = True
                yield
            if not moved:
                self.assign_at(event.position)
            return
        pan = layer.mouse_pan
        layer.mouse_pan = False
        ids = set()
        try:
            while True:
                value = layer.get_value(event.position, world=True)
                if value:
                    ids.add(int(value))
                if event.type == "mouse_release":
                    break
                yield
        finally:
            layer.mouse_pan = pan
        self.assign(ids)

    # ---------------------------------------------------------------- derived classes
    def derive_from_layer(self) -> None:
        """Classes of the nuclei from the chosen region (Shapes / Labels / mask) or Points layer."""
        layer = self._layer or self.layer
        name = self.source_combo.currentText()
        if layer is None or not name or name not in self.viewer.layers:
            self.status.setText("Choose a nuclei layer and a region or points layer first.")
            return
        src = self.viewer.layers[name]
        labels = np.asarray(layer.data)
        try:
            if isinstance(src, Points):
                feats = getattr(src, "features", None)
                cls = feats["class"].tolist() if feats is not None and "class" in feats.columns else None
                # Points and nuclei may have different scales: go through world coordinates.
                yx = np.array([layer.world_to_data(src.data_to_world(p)) for p in src.data]).reshape(-1, 2)
                _, mpp = source_of(self.viewer, layer)
                classes = A.classes_from_points(labels, yx, cls, mpp or L.DEFAULT_MPP)
                source = "points"
            else:
                if isinstance(src, Shapes):
                    mask = src.to_labels(labels_shape=labels.shape) > 0
                else:
                    mask = _region_mask(src.data)
                classes = A.classes_from_mask(labels, mask)
                source = "region"
        except ValueError as err:
            self.status.setText(str(err))
            return
        table, n = A.apply_classes(self._table(layer), classes, source)
        if n:
            self._remember(layer, f"{n} nuclei labelled from '{name}'")
        self._write_table(layer, table)
        self.status.setText(f"{n} nuclei labelled from '{name}'. " + self.status.text())

    # ------------------------------------------------------------------------ projects
    def save_project(self, folder: Optional[str] = None, overwrite: bool = False) -> Optional[Path]:
        """Save image + nuclei + cell table (+ the chosen region layer) as a project folder."""

        layer = self._layer or self.layer
        if layer is None:
            self.status.setText("No nuclei layer to save.")
            return None
        image, mpp = source_of(self.viewer, layer)
        if image is None:
            self.status.setText(f"Cannot tell which image '{layer.name}' belongs to; keep its image open.")
            return None
        if folder is None:
            folder = QFileDialog.getSaveFileName(
                self, "Save annotation project (a folder)", L.export_stem(image.name, image.metadata)
            )[0]
            if not folder:
                return None

        table = self._table(layer)
        data = image.data[0] if getattr(image, "multiscale", False) else image.data
        region = None
        src = (
            self.viewer.layers[self.source_combo.currentText()]
            if self.source_combo.currentText() in self.viewer.layers
            else None
        )
        if isinstance(src, Shapes):
            region = src.to_labels(labels_shape=np.shape(layer.data)) > 0
        elif isinstance(src, (Labels, Image)) and np.shape(src.data) == np.shape(layer.data):
            region = _region_mask(src.data)
        rec = L.owner_record(layer) or {}
        try:
            path = save_project(folder, as_rgb_uint8(np.asarray(data)), np.asarray(layer.data), table, mpp or L.DEFAULT_MPP,
                                name=image.name, region=region, overwrite=overwrite,
                                extra={"model_id": rec.get("model_id")})  # fmt: skip
        except FileExistsError as err:
            answer = QMessageBox.question(self, "Replace project?", f"{err}\n\nReplace it?",
                                          QMessageBox.StandardButton.Yes | QMessageBox.StandardButton.No,
                                          QMessageBox.StandardButton.No)  # fmt: skip
            if answer == QMessageBox.StandardButton.Yes:
                return self.save_project(folder, overwrite=True)
            self.status.setText("Not saved: the existing project was kept.")
            return None
        except Exception as err:  # noqa: BLE001 - shown, never a traceback dialog
            logger.exception("napari-uam could not save the project")
            self.status.setText(f"Could not save the project: {err}")
            return None
        self.status.setText(f"Saved project {path} ({len(table)} nuclei).")
        return path

    def open_project(self, folder: Optional[str] = None):
        """Add a saved project's image, nuclei (with classes) and region to the viewer."""

        if folder is None:
            folder = QFileDialog.getExistingDirectory(self, "Open annotation project")
            if not folder:
                return None
        try:
            proj = load_project(folder)
        except ProjectError as err:
            self.status.setText(str(err))
            show_warning(str(err))
            return None
        name = L.unique_name(self.viewer.layers, proj.name)
        image = self.viewer.add_image(
            proj.image, name=name, rgb=True, metadata={"mpp": proj.mpp, "source": str(proj.path)}
        )
        nuclei = self.viewer.add_layer(D.CellLabels(
            proj.labels, name=L.unique_name(self.viewer.layers, f"{name} nuclei"),
            features=L.to_features(A.with_annotation_columns(proj.table)),
            metadata={ANNOTATION_KEY: {"source": name, "mpp": proj.mpp, "project": str(proj.path)}}))  # fmt: skip
        if proj.region is not None:
            self.viewer.add_labels(proj.region.astype(np.uint8), name=L.unique_name(self.viewer.layers, f"{name} tumor region"),
                                   opacity=0.3, visible=False)  # fmt: skip
        self.layer_combo.setCurrentText(nuclei.name)
        self.viewer.layers.selection.active = image
        self._show_counts()
        return nuclei
