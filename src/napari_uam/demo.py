"""Demo: open napari, load the shipped sample, click Classify cells, save a screenshot.

Run it with ``python -m napari_uam.demo --out DIR`` (under ``xvfb-run -a`` where there is no
display). It docks the "UAM cell classifier" exactly as a user would (through the plugin
manifest), clicks the real **Classify cells** button, waits for the worker and writes
``DIR/screenshot.png`` of the whole window. It exits 0 when the classification ran, else
prints the widget's message and exits 1.

Qt and napari are imported inside :func:`run` so that importing this module stays cheap and
headless.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def run(out_dir, timeout_s: float = 300.0, size=(1500, 950)) -> tuple[bool, str, Path]:
    """Open the sample in a napari viewer, classify its cells and save a screenshot.

    Args:
        out_dir: folder for ``screenshot.png`` (created if missing).
        timeout_s: give up waiting for the worker after this many seconds.
        size: window (width, height) in pixels.

    Returns:
        (ok, status, screenshot path): whether the tumor layer was produced, the widget's
        status line, and where the screenshot was written.
    """
    import napari
    from qtpy.QtWidgets import QApplication

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    viewer = napari.Viewer(show=True)
    try:
        viewer.window._qt_window.resize(*size)
        viewer.open_sample("napari-uam", "he_sample")
        image = viewer.layers[0]
        _, widget = viewer.window.add_plugin_dock_widget("napari-uam", "UAM cell classifier")
        widget.classify_btn.click()
        deadline = time.monotonic() + timeout_s
        while widget.busy and time.monotonic() < deadline:
            QApplication.processEvents()
            time.sleep(0.02)
        timed_out = widget.busy
        if timed_out:
            widget.cancel()
            while widget.busy:
                QApplication.processEvents()
                time.sleep(0.02)
        # Let the canvas draw the new layers before grabbing the window.
        for _ in range(20):
            QApplication.processEvents()
            time.sleep(0.01)
        ok = f"{image.name} tumor cells" in viewer.layers and not timed_out
        status = widget.status.text() if not timed_out else f"Timed out after {timeout_s:g} s."
        shot = out / "screenshot.png"
        viewer.screenshot(path=str(shot), canvas_only=False)
        return ok, status, shot
    finally:
        viewer.close()


def main(argv=None) -> int:
    """Command-line entry point: ``python -m napari_uam.demo --out DIR``."""
    parser = argparse.ArgumentParser(
        prog="python -m napari_uam.demo",
        description="Classify the cells of the shipped H&E sample in napari and save a screenshot.",
    )
    parser.add_argument("--out", required=True, help="output folder (screenshot.png is written there)")
    parser.add_argument("--timeout", type=float, default=300.0, help="seconds to wait for the run (default 300)")
    args = parser.parse_args(argv)
    ok, status, shot = run(args.out, timeout_s=args.timeout)
    print(status)
    print(f"screenshot: {shot}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
