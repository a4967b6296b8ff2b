"""The batch runner (batch/runner.py, batch/folder.py) met the way an operator meets it (issue 18).

Real files, real ``napari-uam`` subprocesses (``python -m napari_uam.cli`` with this checkout on
the path) and real signals: the resampled size checked before anything is decoded, one run per
output folder, foreign files never replaced, the cohort table, a kill in the rename window and a
failing cohort write.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from _cli_run import _env, _err_lines, cli
from napari_uam.sample_data import SAMPLE_PATH


@pytest.mark.parametrize("mpp", ["20", "5"])
def test_mpp_that_explodes_the_resampled_image_is_refused_up_front(patch, tmp_path, mpp):
    out = tmp_path / "out"
    t = time.perf_counter()
    proc = cli("classify", patch, "--mpp", mpp, "--out", out, "--device", "cpu", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("napari-uam: error: --mpp"), proc.stderr
    assert "patch.png" in lines[0] and "enlargement" in lines[0]
    assert not out.exists()  # nothing written, nothing decoded
    assert time.perf_counter() - t < 60


def test_file_pixel_size_that_explodes_the_image_fails_that_image(tmp_path):
    # The pixel size comes from the file (TIFF resolution tags saying 20 um/px).
    import tifffile

    folder = tmp_path / "in"
    folder.mkdir()
    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    tifffile.imwrite(folder / "coarse.tif", rgb, resolution=(1e4 / 20.0, 1e4 / 20.0), resolutionunit="CENTIMETER")
    out = tmp_path / "out"
    proc = cli("segment", folder, "--out", out, "--device", "cpu", timeout=120)
    assert proc.returncode == 1, proc.stderr
    assert "coarse.tif: failed: At 20 um/px" in proc.stderr
    assert not list(out.glob("*_nuclei.tif"))


def _wait_for(cond, timeout=120.0, proc=None):
    t = time.perf_counter()
    while time.perf_counter() - t < timeout:
        if cond():
            return True
        if proc is not None and proc.poll() is not None:
            return cond()
        time.sleep(0.05)
    return False


def _manifest_state(out: Path):
    try:
        return json.loads((out / "napari_uam_run.json").read_text())["state"]
    except (OSError, ValueError, KeyError):
        return None


def test_second_run_into_the_same_folder_is_refused(patch, tmp_path):
    for k in range(3):  # several images, so that run A is still working when B starts
        shutil.copy(patch, patch.parent / f"copy{k}.png")
    out = tmp_path / "out"
    a = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "napari_uam.cli",
            "segment",
            patch.parent,
            "--mpp",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
            "--quiet",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert _wait_for(lambda: _manifest_state(out) == "running", proc=a), a.communicate()
        b = cli("segment", patch.parent, "--mpp", "0.5", "--out", out, "--device", "cpu", timeout=300)
        a_running = a.poll() is None
        a_out, a_err = a.communicate(timeout=600)
    finally:
        if a.poll() is None:
            a.kill()
    assert a_running, "run A finished before B started: the test proves nothing"
    assert b.returncode == 2, b.stderr
    lines = _err_lines(b)
    assert len(lines) == 1 and f"Another napari-uam run (process {a.pid}" in lines[0], b.stderr
    assert a.returncode == 0, a_err
    m = json.loads((out / "napari_uam_run.json").read_text())
    assert m["state"] == "finished" and m["totals"]["done"] == 4 and m["argv"][1] == "segment"
    # The lock is gone with run A: the next run proceeds (and skips the finished images).
    c = cli("segment", patch.parent, "--mpp", "0.5", "--out", out, "--device", "cpu", timeout=300)
    assert c.returncode == 0 and c.stdout.count("skipped (done") == 4, c.stderr


@pytest.fixture(scope="module")
def measured_master(tmp_path_factory):
    """``napari-uam measure`` run once on two real patches: (input folder, output folder)."""
    root = tmp_path_factory.mktemp("measured")
    folder = root / "in"
    folder.mkdir()
    rgb = Image.open(SAMPLE_PATH).convert("RGB")
    rgb.save(folder / "a.png")
    rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "b.png")
    out = root / "out"
    proc = cli("measure", folder, "--mpp", "0.5", "--out", out, "--device", "cpu", "--quiet")
    assert proc.returncode == 0, proc.stderr
    return folder, out


@pytest.fixture
def measured(measured_master, tmp_path):
    folder, out = (shutil.copytree(p, tmp_path / p.name) for p in measured_master)
    return Path(folder), Path(out)


def _cohort_rows(out: Path) -> dict:
    import pandas as pd

    return pd.read_parquet(out / "cohort_cells.parquet")["image"].value_counts().to_dict()


@pytest.mark.parametrize("name", ["napari_uam_run.json", "cohort_cells.parquet"])
def test_foreign_run_files_are_not_replaced(patch, tmp_path, name):
    import pandas as pd

    out = tmp_path / "out"
    out.mkdir()
    foreign = out / name
    if name.endswith(".json"):
        foreign.write_text('{"my": "notes"}\n')
    else:
        pd.DataFrame({"patient": [1, 2]}).to_parquet(foreign)
    before = foreign.read_bytes()
    proc = cli("measure", patch, "--mpp", "0.5", "--out", out, "--device", "cpu", timeout=120)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and "was not written by napari-uam; it is not replaced" in lines[0], proc.stderr
    assert foreign.read_bytes() == before
    assert sorted(p.name for p in out.iterdir()) == [name]  # nothing else written


def test_overwriting_one_image_keeps_every_finished_image_in_the_cohort(measured):
    folder, out = measured
    full = _cohort_rows(out)
    assert set(full) == {"a", "b"}
    proc = cli("measure", folder / "a.png", "--mpp", "0.5", "--out", out, "--device", "cpu", "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert _cohort_rows(out) == full  # before the fix: only image a (69 of 2,407 rows in the issue)


def test_input_named_like_an_output_is_never_destroyed(tmp_path):
    import tifffile

    folder = tmp_path / "slides"
    folder.mkdir()
    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    Image.fromarray(rgb).save(folder / "a.png")
    tifffile.imwrite(folder / "a_nuclei.tif", rgb[::-1])  # an H&E image whose name ends in _nuclei
    before = (folder / "a_nuclei.tif").read_bytes()
    # Output folder = input folder, --overwrite: the worst case of the issue.
    proc = cli("segment", folder, "--mpp", "0.5", "--out", folder, "--device", "cpu", "--overwrite")
    assert (folder / "a_nuclei.tif").read_bytes() == before
    assert proc.returncode == 1, proc.stderr
    assert "a.png: failed: a_nuclei.tif in" in proc.stderr and "is never replaced" in proc.stderr
    # Not silently skipped: it is an image, and it was segmented as one.
    assert "a_nuclei.tif: " in proc.stdout and (folder / "a_nuclei_nuclei.tif").is_file(), proc.stdout


_KILL_AT_MARKER = """
import os, signal, sys
from napari_uam import batch, cli

def die(*args, **kwargs):  # the outputs are renamed into place; the marker is next
    os.kill(os.getpid(), signal.SIGKILL)

batch.runner._write_marker = die
sys.exit(cli.main(sys.argv[1:]))
"""


def test_run_killed_in_the_rename_window_is_resumed_without_overwrite(patch, tmp_path):
    out = tmp_path / "out"
    args = ["measure", str(patch), "--mpp", "0.5", "--out", str(out), "--device", "cpu"]
    killed = subprocess.run(
        [sys.executable, "-c", _KILL_AT_MARKER, *args], capture_output=True, text=True, timeout=600, env=_env()
    )
    assert killed.returncode == -9, killed.stderr
    assert (out / "patch_cells.parquet").is_file() and not (out / "patch.done.json").exists()
    assert json.loads((out / "napari_uam_run.json").read_text())["images"][0]["status"] == "writing"
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr  # before: "Not overwriting existing output(s)", exit 1
    assert json.loads((out / "patch.done.json").read_text())["outputs"]["parquet"] == "patch_cells.parquet"
    assert json.loads((out / "napari_uam_run.json").read_text())["totals"]["done"] == 1


def _limit_file_size():
    import resource
    import signal

    # Writes past the limit fail with EFBIG (errno 27) instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


def test_failing_cohort_write_does_not_leave_the_manifest_running(measured):
    folder, out = measured
    (out / "cohort_cells.parquet").unlink()
    proc = cli("measure", folder, "--mpp", "0.5", "--out", out, "--device", "cpu", preexec_fn=_limit_file_size)
    assert proc.returncode == 2, proc.stderr
    last = _err_lines(proc)[-1]
    assert last.startswith("napari-uam: error:") and "File too large" in last, proc.stderr
    m = json.loads((out / "napari_uam_run.json").read_text())
    assert m["state"] == "failed" and "File too large" in m["cohort_error"], m
    assert not (out / "cohort_cells.parquet").exists() and not list(out.glob(".cohort_cells*"))
