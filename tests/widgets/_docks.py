"""Docking the plugin's widgets, clicking their buttons, and napari closed mid-run in a subprocess.

Imported by the dock tests in tests/widgets/ (each test file's folder is on the import path).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(__file__).resolve().parent / "_close_napari_midrun.py"
RUN_TIMEOUT_MS = 240_000
#: Cancel must act within about a second; the bound leaves room for a shared 2-core machine.
CANCEL_BOUND_S = 2.0


def _run_script(*args, timeout=600):
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO / "src"), str(REPO)]))
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, str(SCRIPT), *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=timeout)  # fmt: skip
    return proc, time.monotonic() - t0


def _closed_in(proc) -> float:
    line = [ln for ln in proc.stdout.splitlines() if ln.startswith("CLOSED ")]
    assert line, f"exit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-3000:]}"
    return float(line[-1].split()[1])


def _dock(viewer, name="UAM cell classifier"):
    _, widget = viewer.window.add_plugin_dock_widget("napari-uam", name)
    return widget


def _click(qtbot, button):
    from qtpy.QtCore import Qt

    assert button.isEnabled(), f"{button.text()} is disabled"
    qtbot.mouseClick(button, Qt.MouseButton.LeftButton)
