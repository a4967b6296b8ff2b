"""The docks' layout (widgets/_rows.py scroll areas): every button reachable on a small screen (issue 18)."""

from __future__ import annotations

import pytest

from _docks import _dock


def _assert_buttons_reachable(qtbot, win, dock):
    from qtpy.QtWidgets import QPushButton, QScrollArea

    areas = dock.findChildren(QScrollArea)
    assert areas, f"{type(dock).__name__} does not scroll"
    for button in dock.findChildren(QPushButton):
        if not button.isVisibleTo(dock):  # e.g. "Use estimated pixel size" before an estimate
            continue
        areas[0].ensureWidgetVisible(button)
        qtbot.wait(20)
        assert not button.visibleRegion().isEmpty(), f"'{button.text()}' cannot be reached"
        top = button.mapTo(win, button.rect().topLeft())
        assert 0 <= top.y() and top.y() + button.height() <= win.height(), button.text()
    # Nothing is cut off at the side: the content is no wider than what the dock shows.
    assert areas[0].widget().width() <= areas[0].viewport().width(), f"{type(dock).__name__} is cut off on the right"


@pytest.mark.gui
def test_every_dock_button_is_reachable_on_a_1000_px_screen(make_napari_viewer, qtbot):
    """All three docks open in a 1000-px-high window, and each dock alone: every button can be
    scrolled into view and none is cut off at the side."""
    names = ("UAM cell classifier", "UAM annotate cells", "UAM train classifier")
    viewer = make_napari_viewer(show=True)
    win = viewer.window._qt_window
    docks = [_dock(viewer, n) for n in names]
    win.resize(1400, 1000)
    qtbot.wait(200)
    assert win.height() <= 1000, "the docks force the window taller than the screen"
    for dock in docks:
        _assert_buttons_reachable(qtbot, win, dock)
    for name in names:
        viewer = make_napari_viewer(show=True)
        win = viewer.window._qt_window
        win.resize(1500, 950)
        dock = _dock(viewer, name)
        qtbot.wait(200)
        _assert_buttons_reachable(qtbot, win, dock)
