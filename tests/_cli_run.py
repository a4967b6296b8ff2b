"""``napari-uam`` in a fresh process, and a small real H&E patch to run it on.

Imported by tests/test_cli.py and tests/batch/ (tests/ is on the import path through its
conftest.py); tests/batch/conftest.py offers the ``patch`` fixture to the batch tests.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from napari_uam.sample_data import SAMPLE_PATH

REPO = Path(__file__).resolve().parents[1]


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), str(REPO), env.get("PYTHONPATH", "")])
    return env


def cli(*args, timeout=600, **kw) -> subprocess.CompletedProcess:
    """Run ``napari-uam ARGS`` in a fresh process."""
    return subprocess.run(
        [sys.executable, "-m", "napari_uam.cli", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        **kw,
    )


def _err_lines(proc) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.strip()]


@pytest.fixture
def patch(tmp_path) -> Path:
    """A small real H&E patch (the shipped sample, 465x465) as a PNG without a pixel size."""
    folder = tmp_path / "in"
    folder.mkdir()
    path = folder / "patch.png"
    Image.open(SAMPLE_PATH).convert("RGB").save(path)
    return path
