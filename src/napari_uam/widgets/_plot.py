"""A small live training plot drawn with QPainter (no matplotlib): loss and validation accuracy per epoch."""

from __future__ import annotations

import math

from qtpy.QtCore import QPointF, QRectF, Qt
from qtpy.QtGui import QColor, QFont, QPainter, QPen
from qtpy.QtWidgets import QSizePolicy, QWidget

#: Series drawn: history key -> (legend, colour, axis). Loss uses the left axis (auto range),
#: validation metrics the right axis (0-1).
SERIES = (
    ("loss", "train loss", QColor(255, 140, 0), "left"),
    ("val_accuracy", "val accuracy", QColor(0, 200, 90), "right"),
    ("val_f1", "val F1", QColor(80, 160, 255), "right"),
)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and math.isfinite(v)


class TrainingPlot(QWidget):
    """Line plot of a training history, redrawn after every epoch.

    ``set_history(records)`` takes the per-epoch dicts of
    :func:`napari_uam.training.finetune.finetune` (``epoch``, ``loss``, ``val_accuracy``,
    ``val_f1``); epoch 0 (the starting model) has validation values only.
    """

    def __init__(self, parent=None):
        super().__init__(parent)
        self._history: list[dict] = []
        self._epochs = 1
        self.setMinimumSize(240, 150)
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.setToolTip("Orange: training loss (left axis). Green / blue: validation accuracy / F1 (right axis, 0-1).")

    @property
    def history(self) -> list[dict]:
        """The records shown (a copy)."""
        return list(self._history)

    def set_history(self, records: list[dict], epochs: int | None = None) -> None:
        """Show ``records``; ``epochs`` fixes the x range (the run's planned epochs)."""
        self._history = [dict(r) for r in records]
        if epochs is not None:
            self._epochs = max(1, int(epochs))
        self.update()

    def clear(self) -> None:
        self.set_history([], 1)

    def points(self, key: str) -> list[tuple[float, float]]:
        """(epoch, value) pairs of one series, finite values only."""
        return [(float(r["epoch"]), float(r[key])) for r in self._history if _finite(r.get(key))]

    def paintEvent(self, event) -> None:  # noqa: N802 - Qt's name
        p = QPainter(self)
        p.setRenderHint(QPainter.RenderHint.Antialiasing)
        p.fillRect(self.rect(), QColor(38, 41, 48))
        font = QFont(self.font())
        font.setPointSizeF(max(7.0, font.pointSizeF() - 1))
        p.setFont(font)
        left, right, top, bottom = 38.0, 34.0, 18.0, 20.0
        area = QRectF(left, top, max(10.0, self.width() - left - right), max(10.0, self.height() - top - bottom))
        p.setPen(QPen(QColor(110, 110, 120), 1))
        p.drawRect(area)
        losses = [v for _, v in self.points("loss")]
        lo_max = max(losses) * 1.1 if losses else 1.0
        x_max = max([self._epochs] + [r["epoch"] for r in self._history])
        text = QColor(200, 200, 205)
        p.setPen(text)
        p.drawText(QRectF(0, top - 6, left - 4, 12), Qt.AlignmentFlag.AlignRight, f"{lo_max:.2g}")
        p.drawText(QRectF(0, area.bottom() - 6, left - 4, 12), Qt.AlignmentFlag.AlignRight, "0")
        p.drawText(QRectF(area.right() + 3, top - 6, right, 12), Qt.AlignmentFlag.AlignLeft, "1")
        p.drawText(QRectF(area.right() + 3, area.bottom() - 6, right, 12), Qt.AlignmentFlag.AlignLeft, "0")
        p.drawText(QRectF(area.left(), area.bottom() + 3, area.width(), 14), Qt.AlignmentFlag.AlignCenter,
                   f"epoch (0-{x_max})")  # fmt: skip

        def to_px(x: float, y: float, y_max: float) -> QPointF:
            return QPointF(
                area.left() + area.width() * x / max(x_max, 1), area.bottom() - area.height() * min(y / y_max, 1.0)
            )

        legend_x = area.left() + 4
        for key, name, color, axis in SERIES:
            pts = self.points(key)
            y_max = lo_max if axis == "left" else 1.0
            p.setPen(QPen(color, 2))
            for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
                p.drawLine(to_px(x0, y0, y_max), to_px(x1, y1, y_max))
            for x, y in pts:
                p.drawEllipse(to_px(x, y, y_max), 2.5, 2.5)
            p.setPen(color)
            last = f" {pts[-1][1]:.3f}" if pts else ""
            label = f"{name}{last}"
            p.drawText(QPointF(legend_x, top - 5), label)
            legend_x += p.fontMetrics().horizontalAdvance(label) + 12
        p.end()
