"""Small form rows shared by the docks."""

from __future__ import annotations

from qtpy.QtCore import Qt
from qtpy.QtWidgets import QFrame, QHBoxLayout, QLineEdit, QPushButton, QScrollArea, QStyle, QVBoxLayout


def path_row(on_browse, hint: str = "", text: str = ""):
    """A path field with a "Browse..." button beside it.

    Args:
        on_browse: called when the button is clicked (opens the dock's file dialog).
        hint: grey text shown while the field is empty.
        text: initial path.

    Returns:
        (edit, button, row): the QLineEdit, the QPushButton and the QHBoxLayout holding both.
    """
    edit = QLineEdit(text)
    if hint:
        edit.setPlaceholderText(hint)
    button = QPushButton("Browse...")
    button.clicked.connect(on_browse)
    row = QHBoxLayout()
    row.addWidget(edit)
    row.addWidget(button)
    return edit, button, row


def scroll_wrap(outer, inner):
    """Put a dock's content ``inner`` in a vertical scroll area filling ``outer``.

    napari stacks docks in one column; without scrolling, each dock's minimum height adds up
    and on a 1000-px screen the lower buttons were cut off. Returns the QScrollArea.
    """

    area = QScrollArea(outer)
    area.setWidgetResizable(True)
    area.setFrameShape(QFrame.Shape.NoFrame)
    area.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
    area.setWidget(inner)
    # Scroll up and down only: the dock stays as wide as its content needs (without this the
    # area shrinks to napari's default dock width and cuts buttons off on the right).
    bar = max(area.verticalScrollBar().sizeHint().width(),
              area.style().pixelMetric(QStyle.PixelMetric.PM_ScrollBarExtent))  # fmt: skip
    # + 8: napari's stylesheet pads the scroll bar beyond its reported extent.
    area.setMinimumWidth(inner.minimumSizeHint().width() + bar + 2 * area.frameWidth() + 8)
    lay = QVBoxLayout(outer)
    lay.setContentsMargins(0, 0, 0, 0)
    lay.addWidget(area)
    return area
