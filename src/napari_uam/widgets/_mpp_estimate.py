"""The dock's pixel-size hint: the nuclei's estimate and a button that puts it in the field.

After a run whose nuclei disagree with the pixel size it was given
(:class:`napari_uam.pixel_size.PixelSizeEstimate`, more than 1.6x either way), the row shows
what the nuclei suggest and "Use estimated pixel size". Clicking only sets the dock's
pixel-size field for that image: nothing is re-run behind the user's back, the next click
on Classify cells uses it. Hidden otherwise.
"""

from __future__ import annotations

from typing import Callable, Optional

from qtpy.QtWidgets import QHBoxLayout, QLabel, QPushButton, QWidget

from ..pixel_size import PixelSizeEstimate


def rounded(mpp: float) -> float:
    """The estimate as offered: two significant digits (what the nuclei can tell)."""
    return float(f"{mpp:.2g}")


class MppEstimateRow(QWidget):
    """A message and a "Use estimated pixel size" button, shown only after a disagreement.

    Args:
        apply: called as ``apply(image_name, mpp)`` when the button is clicked.
    """

    BUTTON_TEXT = "Use estimated pixel size"

    def __init__(self, apply: Callable[[str, float], None], parent=None):
        super().__init__(parent)
        self._apply = apply
        self.source: Optional[str] = None
        self.value: Optional[float] = None
        self.label = QLabel()
        self.label.setWordWrap(True)
        self.label.setStyleSheet("color: #d08000;")
        self.button = QPushButton(self.BUTTON_TEXT)
        self.button.setToolTip("Put the pixel size the nuclei suggest into the Pixel size field; then run again.")
        self.button.clicked.connect(self._on_click)
        row = QHBoxLayout(self)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.label, 1)
        row.addWidget(self.button)
        self.setVisible(False)

    def show_estimate(self, source: str, estimate: Optional[PixelSizeEstimate]) -> None:
        """Offer ``estimate`` for image ``source`` if it disagrees; hide the row otherwise."""
        if estimate is None or not estimate.disagrees:
            self.forget()
            return
        self.source, self.value = source, rounded(estimate.estimate)
        self.label.setText(
            f"The nuclei look {'small' if estimate.ratio > 1 else 'large'} for {estimate.given:g} um/px: "
            f"the image may be at about {self.value:g} um/px."
        )
        self.setVisible(True)

    def forget(self, unless: Optional[str] = None) -> None:
        """Hide the offer (kept when ``unless`` names the image it is about)."""
        if unless is not None and unless == self.source:
            return
        self.source = self.value = None
        self.setVisible(False)

    def _on_click(self) -> None:
        if self.source is None or self.value is None:
            return
        source, value = self.source, self.value
        self.forget()
        self._apply(source, value)
