"""Issue 18, command line and files: each defect met the way an operator meets it.

Real files, real ``napari-uam`` subprocesses (``python -m napari_uam.cli`` with this
checkout on the path) and real signals where the issue describes processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
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


# ------------------------------------------------------------ 1. pixel size vs resampled size
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


def test_resampling_limits_are_checked_on_the_shape_alone():
    from napari_uam.errors import InvalidImageError
    from napari_uam.scale import ResampleWarning, check_resample, rescale_image

    # 491x491 at 20 um/px to the segmenter's 0.25: 39280x39280, once 17 GiB of floats.
    with pytest.raises(InvalidImageError, match="enlargement"):
        check_resample((491, 491), 20.0, 0.25)
    # The last guard inside the resampler itself, before any allocation.
    with pytest.raises(InvalidImageError, match="over the 100 Mpx limit"):
        rescale_image(np.zeros((491, 491, 3), np.uint8), 80.0)
    # Below the enlargement limit but over the pixel limit.
    with pytest.raises(InvalidImageError, match="over the 100 Mpx limit"):
        check_resample((4000, 4000), 1.0, 0.25)
    with pytest.warns(ResampleWarning, match="slower"):
        assert check_resample((491, 491), 2.0, 0.25) == 8.0
    assert check_resample((491, 491), 0.5, 0.25) == 2.0  # 20x to 40x: nothing said


def test_one_pixel_size_rule_for_pipeline_and_segmenter():
    from napari_uam import pipeline, pixel_size
    from napari_uam.errors import InvalidImageError
    from napari_uam.segment import segment

    rgb = np.full((32, 32, 3), 255, np.uint8)
    for bad in (0.02, 25.0, True):  # 0.02 passed the segmenter's old 0.01-20 check
        with pytest.raises(InvalidImageError, match="Pixel size"):
            segment(rgb, bad, backend="watershed")
        with pytest.raises(InvalidImageError, match="Pixel size"):
            pipeline.segment_nuclei(rgb, bad)
    assert pixel_size.check_mpp(0.05) == 0.05 and pixel_size.check_mpp("20") == 20.0


# ------------------------------------------------------------ 2. one run per output folder
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


# ------------------------------------------------------------ 3. classifier cache by file identity
def test_retrained_checkpoint_at_the_same_path_is_used(tmp_path):
    import pandas as pd
    import torch

    from napari_uam import pipeline
    from napari_uam.classify.checkpoint import default_weights_path

    src = default_weights_path()
    if not src.is_file():
        pytest.skip("default UAM weights not installed")
    path = tmp_path / "model.pt"
    # Both versions written by torch.save of the same structure: they then have one size.
    torch.save(torch.load(src, map_location="cpu", weights_only=True), path)
    clf = pipeline.get_classifier(path, "cpu")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(200, len(clf.feature_names))), columns=clf.feature_names)
    before = pipeline.classify_cells(table, model=path, device="cpu")

    # "Retrain" into the same path: the last layer negated swaps the two classes' logits.
    # Same size, and the modification time set back: only the content differs.
    st = path.stat()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    last = [k for k, v in ckpt["state_dict"].items() if v.ndim == 2][-1]
    ckpt["state_dict"][last] = -ckpt["state_dict"][last]
    ckpt["state_dict"][last.replace("weight", "bias")] = -ckpt["state_dict"][last.replace("weight", "bias")]
    torch.save(ckpt, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size

    after = pipeline.classify_cells(table, model=path, device="cpu")
    assert pipeline.get_classifier(path, "cpu").sha256 != clf.sha256
    np.testing.assert_allclose(after["tumor_probability"], 1 - before["tumor_probability"], atol=1e-5)


def test_retrained_tumor_model_at_the_same_path_is_used(tmp_path):
    """The tumor-region model cache is keyed on file identity too, not on the path."""
    import torch

    from napari_uam.tumor import default_tumor_weights_path, load_tumor_model

    src = default_tumor_weights_path()
    if not src.is_file():
        pytest.skip("tumor-mask weights not installed")
    path = tmp_path / "tumor.pt"
    torch.save(torch.load(src, map_location="cpu", weights_only=True), path)
    first = load_tumor_model(path, "cpu")
    assert load_tumor_model(path, "cpu") is first  # unchanged file: the cached model

    # Retrain into the same path: another head bias, same size, the modification time set back.
    st = path.stat()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    ckpt["state_dict"]["head.bias"] = ckpt["state_dict"]["head.bias"] + 3.0
    torch.save(ckpt, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size

    second = load_tumor_model(path, "cpu")
    assert second is not first
    np.testing.assert_allclose(
        second.model.head.bias.detach().numpy(), first.model.head.bias.detach().numpy() + 3.0, rtol=0, atol=5e-3
    )  # float16 store


# ------------------------------------------------------------ 4. files replaced or lost
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


# ------------------------------------------------------------ 5. clear errors, before any work
@pytest.fixture(scope="module")
def project_master(tmp_path_factory):
    """A real annotation project: the sample segmented, half its nuclei labelled tumor."""
    from napari_uam import pipeline
    from napari_uam.io.project import save_project

    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    labels = pipeline.segment_nuclei(rgb, 0.5, backend="watershed")
    table = pipeline.cell_geometry(labels, 0.5)
    table["class"] = np.where(table["label"] % 2 == 0, "tumor", "non-tumor")
    return save_project(tmp_path_factory.mktemp("proj") / "good", rgb, labels, table, 0.5)


def _damage(folder: Path, how: str) -> None:
    if how == "manifest_list":
        (folder / "project.json").write_text("[]")
    elif how == "mpp_text":
        meta = json.loads((folder / "project.json").read_text())
        meta["mpp"] = "abc"
        (folder / "project.json").write_text(json.dumps(meta))
    else:
        name = {"image_cut": "image.tif", "table_cut": "cells.parquet"}[how]
        data = (folder / name).read_bytes()
        (folder / name).write_bytes(data[: len(data) // 3])


@pytest.mark.parametrize("how", ["manifest_list", "mpp_text", "image_cut", "table_cut"])
def test_train_refuses_a_damaged_project_in_one_line(project_master, tmp_path, how):
    good = shutil.copytree(project_master, tmp_path / "a_good")
    bad = shutil.copytree(project_master, tmp_path / "b_bad")
    _damage(Path(bad), how)
    model = tmp_path / "model.pt"
    proc = cli("train", good, bad, "--out", model, "--epochs", "1", timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("napari-uam: error:") and "b_bad" in lines[0], proc.stderr
    assert "labelled cells" not in proc.stdout  # refused before any feature was measured
    assert not model.exists()


def _bad_checkpoint(tmp_path: Path, how: str) -> Path:
    import torch

    from napari_uam.classify.checkpoint import default_weights_path

    if how == "csv":
        path = tmp_path / "cells.csv"
        path.write_text("label,y,x,area_um2\n1,2.5,3.5,20.0\n")
        return path
    ckpt = torch.load(default_weights_path(), map_location="cpu", weights_only=True)
    if how == "config5":
        ckpt["config"] = 5
    elif how == "normalisation":
        ckpt["normalization"]["method"] = "zscore_v7"
    elif how == "tumor_class":
        ckpt["tumor_class"] = 7
    elif how == "no_classes":
        ckpt["class_names"] = []
    elif how == "schema":
        ckpt["schema_id"] = "other-radiomics-v9"
        ckpt["feature_names"] = [f"other_{n}" for n in ckpt["feature_names"]]
    path = tmp_path / f"{how}.pt"
    torch.save(ckpt, path)
    return path


@pytest.mark.parametrize(
    "how, says",
    [
        ("config5", "'config' is 5"),
        ("normalisation", "unknown feature normalisation 'zscore_v7'"),
        ("tumor_class", "'tumor_class' 7 is not the index"),
        ("no_classes", "'class_names' is []"),
        ("schema", "trained on feature schema 'other-radiomics-v9'"),
        ("csv", "it is a CSV / text table"),
    ],
)
def test_bad_checkpoint_is_refused_before_any_image(patch, tmp_path, how, says):
    from napari_uam.classify.checkpoint import default_weights_path

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    model = _bad_checkpoint(tmp_path, how)
    out = tmp_path / "out"
    proc = cli("classify", patch, "--mpp", "0.5", "--out", out, "--device", "cpu", "--model", model, timeout=300)
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and lines[0].startswith("napari-uam: error:") and says in lines[0], proc.stderr
    assert "Weights only load failed" not in proc.stderr
    assert not out.exists()  # before any image was read, segmented or measured


def test_misleading_image_messages_describe_the_image(tmp_path):
    import tifffile

    from napari_uam import pipeline
    from napari_uam.errors import InvalidImageError
    from napari_uam.io.reader import read_image

    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    grey = rgb.mean(axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey] * 5))  # 5 grey pages
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "grey_alpha.png")

    def message(image) -> str:
        with pytest.raises(InvalidImageError) as err:
            pipeline.run(image, 0.5, device="cpu")
        return str(err.value)

    assert "a stack of 5 single-channel 465x465 planes" in message(read_image(tmp_path / "stack.tif")[0])
    assert "3 channels first" in message(np.moveaxis(rgb, -1, 0))  # a (3, H, W) array
    assert message(read_image(tmp_path / "grey.png")[0]).startswith("Image is grayscale")
    # Grey + alpha is grey too: before, it was converted to a colourless RGB image and accepted.
    assert message(read_image(tmp_path / "grey_alpha.png")[0]).startswith("Image is grayscale with an alpha")


def test_damaged_segmentation_weights_are_reported(patch, tmp_path):
    bad = tmp_path / "nuclei_unet.pt"
    bad.write_bytes(b"\x80\x02 not really a pickle")
    out = tmp_path / "out"
    env = {**_env(), "NAPARI_UAM_SEG_WEIGHTS": str(bad)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "napari_uam.cli",
            "segment",
            str(patch),
            "--mpp",
            "0.5",
            "--out",
            str(out),
            "--device",
            "cpu",
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    warn = [ln for ln in _err_lines(proc) if "segmenter is not available" in ln]
    assert len(warn) == 1 and warn[0].startswith("napari-uam: warning:") and str(bad) in warn[0], proc.stderr
    assert len(_err_lines(proc)) == 1  # one line, not a multi-line dump with a source line
    done = json.loads((out / "patch.done.json").read_text())
    assert done["provenance"]["segment_backend"] == "watershed"


# ------------------------------------------------------------ 6. --dask at a service that is not Dask
@pytest.fixture
def nonsense_server():
    """A real local TCP server that answers every connection like a web server would."""
    import socket
    import threading

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    stop = threading.Event()

    def serve():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                try:
                    conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
                    conn.settimeout(1.0)
                    conn.recv(4096)
                except OSError:
                    pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield f"tcp://127.0.0.1:{srv.getsockname()[1]}"
    stop.set()
    t.join(timeout=5)
    srv.close()


def test_dask_address_of_another_service_is_one_clear_line(patch, tmp_path, nonsense_server):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    proc = cli(
        "segment", patch, "--mpp", "0.5", "--out", out, "--device", "cpu", "--dask", nonsense_server, timeout=120
    )
    assert proc.returncode == 2, proc.stderr
    lines = _err_lines(proc)
    assert len(lines) == 1 and f"{nonsense_server} is not a Dask scheduler" in lines[0], proc.stderr
    assert "EiB" not in proc.stderr and "allocate" not in proc.stderr
    assert not out.exists()


def test_real_scheduler_passes_the_probe():
    distributed = pytest.importorskip("distributed")
    from napari_uam.batch.executors import probe_scheduler

    with distributed.LocalCluster(
        n_workers=0, processes=False, dashboard_address=None, protocol="tcp://", scheduler_port=0, host="127.0.0.1"
    ) as cluster:
        assert cluster.scheduler_address.startswith("tcp://127.0.0.1:")
        probe_scheduler(cluster.scheduler_address)  # a real scheduler's handshake passes
