"""Small form rows shared by the docks."""

from __future__ import annotations

from qtpy.QtWidgets import QHBoxLayout, QLineEdit, QPushButton


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
