"""Parity of the fast radiomics engine with pyradiomics, on real CoNSeP nuclei and edge cells.

The reference is computed live with pyradiomics where it is installed. Where it is not (the
GPU machine), the GPU tests compare with the table precomputed by
``benchmarks/make_radiomics_reference.py`` (``.gpu_data/radiomics_reference.parquet`` + its
``.npz`` of exact inputs; override with ``NAPARI_UAM_RADIOMICS_REF``). Environment knobs:

- ``NAPARI_UAM_RADIOMICS_REF_MODE=stored`` forces the stored table even with pyradiomics;
- ``NAPARI_UAM_GPU_TEST_DEVICE`` (default ``cuda``) runs the ``gpu`` tests on another torch
  device, e.g. ``cpu``, so that the whole GPU flow is exercised on a machine without a GPU.
"""

from __future__ import annotations

import importlib.util
import os
import warnings
from pathlib import Path

import numpy as np
import pytest

from _random_cells import random_patches
from napari_uam.radiomics import extract, get_schema
from napari_uam.radiomics.schema import SCHEMA_V1
from napari_uam.radiomics.fast_backend import extract_batch
from napari_uam.radiomics.pyradiomics_backend import extract_pyradiomics
from napari_uam.errors import SchemaMismatchError

HAVE_PYRADIOMICS = (
    importlib.util.find_spec("radiomics") is not None and importlib.util.find_spec("SimpleITK") is not None
)
needs_pyradiomics = pytest.mark.skipif(not HAVE_PYRADIOMICS, reason="pyradiomics (and SimpleITK) not installed")
REPO = Path(__file__).resolve().parents[2]
STORED = Path(os.environ.get("NAPARI_UAM_RADIOMICS_REF", REPO / ".gpu_data" / "radiomics_reference.parquet"))
GPU_DEVICE = os.environ.get("NAPARI_UAM_GPU_TEST_DEVICE", "cuda")

REL, ABS = 1e-6, 1e-9
FAMILIES = ("shape2D", "firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")


def _mismatch(fast, ref):
    """(cells, features) bool: values that are neither within tolerance nor both NaN."""
    both_nan = np.isnan(fast) & np.isnan(ref)
    with np.errstate(invalid="ignore"):
        close = np.abs(fast - ref) <= np.maximum(REL * np.abs(ref), ABS)
    return ~(close | both_nan)


def _report(bad, ids):
    names = SCHEMA_V1.feature_names
    return "; ".join(
        f"{names[f]} ({int(bad[:, f].sum())} cells, e.g. label {ids[np.argmax(bad[:, f])]})"
        for f in np.nonzero(bad.any(axis=0))[0][:10]
    )


def _load_consep(consep_dir, name="train_1", crop=260):
    from PIL import Image

    from napari_uam.scale import rescale_image, resize_labels

    img = np.asarray(Image.open(consep_dir / f"{name}.jpg").convert("RGB"))
    lab = np.asarray(Image.open(consep_dir / f"{name}_inst.png")).astype(np.int32)
    small = rescale_image(img, 0.25 / SCHEMA_V1.mpp)
    lab = resize_labels(lab, small.shape[:2])
    # A corner crop: cells cut by the crop edge touch the image border.
    return small[:crop, :crop].copy(), np.ascontiguousarray(lab[:crop, :crop])


def _live(img, lab, workers=1):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ids, ref = extract_pyradiomics(img, lab, SCHEMA_V1, workers=workers)
    return img, lab, ids, ref


def _stored(case):
    """(img, lab, ids, ref) of one case of the precomputed reference (skips when absent)."""
    if not STORED.is_file() or not STORED.with_suffix(".npz").is_file():
        pytest.skip(
            f"no pyradiomics and no stored reference at {STORED} (make it with "
            "benchmarks/make_radiomics_reference.py where pyradiomics is installed)"
        )
    import pandas as pd

    arrays = np.load(STORED.with_suffix(".npz"))
    assert str(arrays["schema_id"]) == SCHEMA_V1.schema_id, "stored reference has another schema"
    table = pd.read_parquet(STORED)
    rows = table[table["case"] == case]
    assert list(rows.columns[2:]) == list(SCHEMA_V1.feature_names)
    ref = rows[list(SCHEMA_V1.feature_names)].to_numpy(dtype=np.float64)
    return arrays[f"{case}_img"], arrays[f"{case}_lab"], rows["label"].to_numpy(np.int64), ref


def _use_stored() -> bool:
    return not HAVE_PYRADIOMICS or os.environ.get("NAPARI_UAM_RADIOMICS_REF_MODE") == "stored"


@pytest.fixture(scope="module")
def consep_reference(request):
    """CoNSeP crop + pyradiomics reference: live when pyradiomics is present, else stored."""
    if _use_stored():
        return _stored("consep")
    return _live(*_load_consep(request.getfixturevalue("consep_dir")), workers=2)


@pytest.fixture(scope="module")
def edge_reference():
    return _stored("edge") if _use_stored() else _live(*_edge_cases())


def _gpu_device():
    """The torch device of the ``gpu`` tests (CUDA unless NAPARI_UAM_GPU_TEST_DEVICE says)."""
    torch = pytest.importorskip("torch")
    if GPU_DEVICE.startswith("cuda") and not torch.cuda.is_available():
        pytest.skip("no CUDA GPU visible to torch")
    return GPU_DEVICE


def _cuda_engine(engine):
    """``cuda_kernels`` argument of extract_batch for a GPU test's engine parameter."""
    if engine == "torch":
        return False
    from napari_uam.radiomics import _cuda

    if GPU_DEVICE.startswith("cuda") and not _cuda.available():
        pytest.skip("numba-cuda not installed (or disabled): the per-cell CUDA kernels cannot run")
    return True if GPU_DEVICE.startswith("cuda") else None


def _check(img, lab, ids, ref, device, **kw):
    [(ids2, fast)] = extract_batch([img], [lab], SCHEMA_V1, device, **kw)
    assert np.array_equal(ids, ids2)
    bad = _mismatch(fast, ref)
    assert not bad.any(), _report(bad, ids)
    return fast


@needs_pyradiomics
@pytest.mark.parametrize("device", ["numpy", "numpy-pure", "cpu"])
def test_consep_parity(consep_reference, device):
    img, lab, ids, ref = consep_reference
    areas = np.bincount(lab.ravel())[ids]
    assert len(ids) >= 200 and areas.min() <= 10 and areas.max() >= 150  # small and large cells
    border = np.unique(np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]]))
    assert np.isin(border[border > 0], ids).sum() >= 5  # cells touching the border
    _check(img, lab, ids, ref, device)


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["kernels", "torch"])
def test_consep_parity_cuda(consep_reference, engine):
    """Both CUDA engines (per-cell kernels, pure torch) match pyradiomics, one patch and batched."""
    device = _gpu_device()
    kw = {"cuda_kernels": _cuda_engine(engine)}
    img, lab, ids, ref = consep_reference
    assert len(ids) >= 200
    fast = _check(img, lab, ids, ref, device, **kw)
    # The batched path (many patches at once) gives the same rows as one patch at a time.
    sub_img, sub_lab = img[:120, :200], lab[:120, :200]
    res = extract_batch([img, sub_img, img], [lab, sub_lab, lab], SCHEMA_V1, device, **kw)
    for k in (0, 2):
        assert np.array_equal(res[k][0], ids)
        bad = _mismatch(res[k][1], ref)
        assert not bad.any(), _report(bad, ids)
    # The same batch again (reused staging buffers) gives the same table.
    again = extract_batch([img, sub_img, img], [lab, sub_lab, lab], SCHEMA_V1, device, **kw)
    for (i1, v1), (i2, v2) in zip(res, again):
        assert np.array_equal(i1, i2) and np.allclose(v1, v2, rtol=1e-12, atol=1e-12, equal_nan=True)
    [(sub_ids, sub_one)] = extract_batch([sub_img], [sub_lab], SCHEMA_V1, device, **kw)
    assert np.array_equal(res[1][0], sub_ids)
    assert np.allclose(res[1][1], sub_one, rtol=1e-12, atol=1e-12, equal_nan=True)
    assert np.isfinite(fast[:, :9]).all()
    # Inputs already on the device (torch tensors) give the same table as host arrays.
    torch = pytest.importorskip("torch")
    [(ids_t, on_dev)] = extract_batch(
        [torch.from_numpy(img).to(device)], [torch.from_numpy(lab).to(device)], SCHEMA_V1, device, **kw
    )
    assert np.array_equal(ids_t, ids) and np.allclose(on_dev, fast, rtol=1e-12, atol=1e-12, equal_nan=True)
    if kw["cuda_kernels"]:  # the public entry point (the pipeline's) takes the kernels on CUDA
        public = extract(img, lab, schema=SCHEMA_V1, device=device)
        assert np.array_equal(public.index.to_numpy(), ids)
        assert np.array_equal(public.to_numpy(), fast, equal_nan=True)


@pytest.mark.gpu
@pytest.mark.parametrize("engine", ["kernels", "torch"])
def test_edge_cells_parity_cuda(edge_reference, engine):
    device = _gpu_device()
    _check_edges(*edge_reference, device, cuda_kernels=_cuda_engine(engine))


_CACHE_SCRIPT = """
import hashlib, json, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, {src!r})
sys.path.insert(0, {tests!r})
from _random_cells import random_patches
from napari_uam.radiomics import _cuda, _numba
from napari_uam.radiomics import _cuda_kernels as kmod
from napari_uam.radiomics.fast_backend import extract_batch
from napari_uam.radiomics.schema import SCHEMA_V1
[(ids, v)] = extract_batch(*random_patches(0, [(64, 64)], 11, 2, 8), SCHEMA_V1, {device!r}, cuda_kernels=True)
ks = _cuda.kernels()
want = hashlib.sha256(Path(_numba.__file__).read_bytes() + Path(kmod.__file__).read_bytes()).hexdigest()
print(json.dumps({{"hits": {{n: sum(k.stats.cache_hits.values()) for n, k in ks.items()}},
                   "stamps": [k._cache._cache_file._source_stamp == want for k in ks.values()],
                   "values": np.nan_to_num(v, nan=-1.0).tolist()}}))
"""


@pytest.mark.gpu
def test_cuda_kernels_load_from_the_disk_cache_in_a_new_process(tmp_path):
    """The first process compiles the kernels and caches them (keyed on ``_numba.py`` as well
    as the kernels' file); a second process loads every kernel from that cache and gives the
    same table."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    device = _gpu_device()
    _cuda_engine("kernels")
    script = tmp_path / "cached.py"
    here = Path(__file__).resolve().parent
    script.write_text(_CACHE_SCRIPT.format(src=str(REPO / "src"), tests=str(here), device=device))
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "numba_cache")}
    runs = []
    for _ in range(2):
        res = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=600, env=env)
        assert res.returncode == 0, res.stderr[-3000:]
        runs.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert all(h == 0 for h in runs[0]["hits"].values()), runs[0]["hits"]
    assert all(h >= 1 for h in runs[1]["hits"].values()), runs[1]["hits"]
    assert all(runs[0]["stamps"]) and all(runs[1]["stamps"])
    assert np.array_equal(np.array(runs[0]["values"]), np.array(runs[1]["values"]))


def _edge_cases():
    rng = np.random.default_rng(3)
    img = rng.integers(40, 230, size=(40, 48, 3)).astype(np.uint8)
    lab = np.zeros((40, 48), np.int32)
    lab[5, 5] = 1  # 1 pixel
    lab[10, 10:12] = 2  # 2 pixels, horizontal
    lab[14:16, 20] = 3  # 2 pixels, vertical
    lab[0:6, 40:48] = 4  # touching two image borders
    lab[20:28, 2:10] = 5  # flat intensity
    img[20:28, 2:10] = (120, 60, 160)
    lab[30:38, 30:38] = 6  # one grey level after binning (values within one bin)
    img[30:38, 30:38] = (110, 50, 150)
    img[33, 33] = (109, 50, 150)
    lab[33:40, 0:3] = 7  # touching the bottom-left corner
    lab[20:24, 20:24] = 8
    lab[22, 22] = 9  # a 1-pixel cell inside another one
    return img, lab


@needs_pyradiomics
@pytest.mark.parametrize("device", ["numpy", "numpy-pure", "cpu"])
def test_edge_cells_match_pyradiomics(edge_reference, device):
    _check_edges(*edge_reference, device)


def _check_edges(img, lab, ids, ref, device, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        [(ids2, fast)] = extract_batch([img], [lab], SCHEMA_V1, device, **kw)
    assert np.array_equal(ids, ids2)
    names = np.array(SCHEMA_V1.feature_names)
    bad = _mismatch(fast, ref)
    # The documented GLRLM difference: cells only 1 pixel wide in some direction.
    sliver = np.isin(ids, [2, 3])
    glrlm = np.char.find(names.astype(str), "_glrlm_") >= 0
    bad[np.ix_(sliver, glrlm)] = False
    assert not bad.any(), _report(bad, ids)
    one = list(ids).index(1)
    assert np.isnan(fast[one, glrlm]).all()
    assert fast[one, list(names).index("hematoxylin_glcm_MCC")] == 1.0


def test_extract_frame_and_empty():
    img, lab = _edge_cases()
    calls = []
    df = extract(img, lab, schema=SCHEMA_V1, device="cpu", progress=calls.append)
    assert list(df.columns) == list(SCHEMA_V1.feature_names)
    assert df.index.name == "label" and list(df.index) == sorted(set(lab.ravel()) - {0})
    assert (df.dtypes == np.float64).all() and calls[-1] == 1.0
    empty = extract(img, np.zeros_like(lab), schema=SCHEMA_V1)
    assert empty.shape == (0, SCHEMA_V1.n_features)
    assert list(empty.columns) == list(SCHEMA_V1.feature_names)


def test_schema_registry():
    assert get_schema("uam-radiomics-v1") is SCHEMA_V1
    assert SCHEMA_V1.mpp == 0.5 and SCHEMA_V1.feature_names[0] == "shape2D_MeshSurface"
    with pytest.raises(SchemaMismatchError, match="Unknown feature schema"):
        get_schema("uam-radiomics-v0")


@pytest.mark.parametrize("device", ["numpy", "numpy-pure", "cpu"])
def test_batch_matches_single_patches(device):
    """Many patches of different sizes in one call give the rows of one call per patch (five,
    so that the torch engine's threaded host copies, from four patches on, run as well)."""
    img, lab = _edge_cases()
    rng = np.random.default_rng(5)
    img2 = rng.integers(0, 256, size=(30, 52, 3)).astype(np.uint8)
    lab2 = np.zeros((30, 52), np.int32)
    lab2[3:12, 4:15] = 7
    lab2[15:29, 30:50] = 300
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = extract_batch([img, img2, img, img2, img], [lab, lab2, lab, lab2, lab], SCHEMA_V1, device)
        singles = [extract_batch([i], [lb], SCHEMA_V1, device)[0] for i, lb in ((img, lab), (img2, lab2))]
    assert len(batch) == 5
    for k, (ids_b, v_b) in enumerate(batch):
        ids_s, v_s = singles[k % 2]
        assert np.array_equal(ids_b, ids_s)
        assert np.allclose(v_b, v_s, rtol=1e-12, atol=1e-12, equal_nan=True)


def _concurrent_batches(device, **kw):
    """Two threads, each extracting its own 5-patch batch twice, get the single-call tables."""
    from concurrent.futures import ThreadPoolExecutor

    img, lab = _edge_cases()
    rng = np.random.default_rng(9)
    img2 = rng.integers(0, 256, size=img.shape).astype(np.uint8)
    batches = [([img] * 5, [lab] * 5), ([img2] * 5, [lab] * 5)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        want = [extract_batch(i, lb, SCHEMA_V1, device, **kw) for i, lb in batches]
        with ThreadPoolExecutor(2) as pool:
            got = list(
                pool.map(
                    lambda k: [extract_batch(*batches[k % 2], SCHEMA_V1, device, **kw) for _ in range(2)], range(4)
                )
            )
    assert not np.allclose(want[0][0][1], want[1][0][1], equal_nan=True)  # the batches differ
    for k, runs in enumerate(got):
        for res in runs:
            for (ids_g, v_g), (ids_w, v_w) in zip(res, want[k % 2]):
                assert np.array_equal(ids_g, ids_w)
                assert np.allclose(v_g, v_w, rtol=1e-12, atol=1e-12, equal_nan=True)


@pytest.mark.gpu
def test_concurrent_cuda_calls_keep_their_own_batches():
    """Threads of one process (a Dask worker with several threads) share the CUDA engine's
    page-locked staging buffers: each call still gets the table of its own batch."""
    _concurrent_batches(_gpu_device(), cuda_kernels=_cuda_engine("kernels"))


def test_numba_mcc_eigensolver():
    """The compiled MCC eigensolver (tridiagonal QL) matches LAPACK on random symmetric matrices."""
    from napari_uam.radiomics import _numba

    if not _numba.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(0)
    for n in range(2, 33):
        for t in range(20):
            a = rng.random((n, n))
            if t % 2:
                a[a < 0.6] = 0
            a = a + a.T
            a[0, 1] = a[1, 0] = 0.3
            ref = np.sort(np.abs(np.linalg.eigvalsh(a)))[-2]
            got = _numba._second_abs_eig(a.copy(), n, np.empty(n), np.empty(n))
            assert abs(got - ref) <= 1e-12 * max(1.0, abs(ref))


def _mcc_case(counts):
    """(M, v, expected MCC) of a symmetrical GLCM count matrix without empty levels."""
    r = counts.sum(axis=1)
    m = counts / np.sqrt(np.outer(r, r))
    expected = np.sort(np.abs(np.linalg.eigvalsh(m)))[-2]
    return m, np.sqrt(r / r.sum()), expected


def test_numba_mcc_deflated_hard_spectra():
    """The deflated Laguerre MCC solver matches LAPACK on the spectra that stress it: repeated
    eigenvalue 1 (levels in two unconnected groups), eigenvalue -1 (bipartite: every pair joins
    two level groups), 2x2 matrices, near-diagonal GLCMs, and random GLCMs up to 32 levels."""
    from napari_uam.radiomics import _numba

    if not _numba.AVAILABLE:
        pytest.skip("numba not installed")
    rng = np.random.default_rng(1)
    cases = []
    for n in range(2, 33):
        c = rng.integers(0, 6, (n, n)).astype(float)
        c = c + c.T + np.eye(n)
        cases.append(c)
        band = np.diag(rng.integers(1, 50, n).astype(float))  # mostly same-level pairs
        if n > 1:
            off = rng.integers(0, 3, n - 1).astype(float)
            band += np.diag(off, 1) + np.diag(off, -1)
        cases.append(band)
        if n >= 4:
            k = n // 2
            blocks = np.zeros((n, n))
            blocks[:k, :k] = c[:k, :k]
            blocks[k:, k:] = c[k:, k:]
            cases.append(blocks)  # eigenvalue 1 twice: MCC = 1
            bip = np.zeros((n, n))
            bip[:k, k:] = rng.integers(1, 4, (k, n - k))
            bip = bip + bip.T
            cases.append(bip)  # eigenvalue -1: MCC = 1
    cases.append(np.array([[4.0, 2.0], [2.0, 0.0]]))
    cases.append(np.array([[0.0, 3.0], [3.0, 0.0]]))
    seen_one = settled = 0
    for c in cases:
        m, v, expected = _mcc_case(c)
        n = m.shape[0]
        fast = _numba._mcc_deflated(m.copy(), n, v, np.empty(n), np.empty(n))
        if not np.isnan(fast):  # NaN: Laguerre did not settle, _mcc falls back to QL
            settled += 1
            assert abs(fast - expected) <= 1e-12, (n, fast, expected)
        padded = np.zeros((n + 1, n + 1))
        padded[1:, 1:] = c  # level 0 is never present
        r = padded.sum(axis=1)
        got = _numba._mcc_iterative(
            padded, np.arange(1, n + 1), r, n, r.sum(), np.empty((n, n)), np.empty(n), np.empty(n), np.empty(n)
        )
        if got < 0:  # the iterative solvers did not settle: the CPU path asks LAPACK
            got = _numba._mcc_lapack(padded, np.arange(1, n + 1), r, n, np.empty((n, n)))
        assert abs(got - expected) <= 1e-12, (n, got, expected)
        seen_one += abs(expected - 1) < 1e-12
    assert seen_one >= 20  # the repeated-1 and bipartite cases were exercised
    assert settled >= 0.75 * len(cases)  # the fast path serves most matrices


def test_numba_matches_pure_numpy_on_random_patches():
    """The compiled path (own padding, counting sort, flood-fill GLSZM zones, log tables,
    deflated MCC) agrees with the pure NumPy engine to rounding on many random cells, in one
    multi-patch call, including cells with many small zones and touching neighbours."""
    from napari_uam.radiomics import _numba

    if not _numba.AVAILABLE:
        pytest.skip("numba not installed")
    images, labels = random_patches(
        11, ((40, 60), (57, 33), (64, 64)), 11, 2, 14, id_step=10, id_offset=5
    )  # sparse ids
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast = extract_batch(images, labels, SCHEMA_V1, "numpy")
        pure = extract_batch(images, labels, SCHEMA_V1, "numpy-pure")
        chunked = extract_batch(images, labels, SCHEMA_V1, "numpy", chunk_pixels=60)  # many chunks
    for (ids_f, v_f), (ids_p, v_p), (ids_c, v_c) in zip(fast, pure, chunked):
        assert np.array_equal(ids_f, ids_p) and np.array_equal(ids_f, ids_c) and len(ids_f) >= 5
        assert np.allclose(v_f, v_p, rtol=1e-9, atol=1e-12, equal_nan=True)
        assert np.array_equal(v_f, v_c, equal_nan=True)


def test_torch_mcc_squaring_matches_eigvalsh():
    """The torch MCC (largest |eigenvalue| of the deflated B = M - v v^T by repeated squaring
    of B^2, no eigensolver) matches LAPACK on real-looking and hard spectra: random GLCMs, near
    diagonal ones, two unconnected level groups (eigenvalue 1 twice: MCC = 1), bipartite pair
    patterns (eigenvalue -1: MCC = 1), zero-padded to the size classes of the engine."""
    torch = pytest.importorskip("torch")
    from napari_uam.radiomics import _texture
    from napari_uam.radiomics._ops import TorchOps

    xp = TorchOps("cpu")
    rng = np.random.default_rng(7)
    for n in range(2, 34):
        mats, expected = [], []
        for t in range(12):
            c = rng.integers(0, 6, (n, n)).astype(float)
            c = c + c.T + np.eye(n)
            if t % 4 == 1:
                off = rng.integers(0, 3, n - 1).astype(float)
                c = np.diag(rng.integers(1, 50, n).astype(float)) + np.diag(off, 1) + np.diag(off, -1)
            elif t % 4 == 2 and n >= 4:
                k = n // 2
                c[:k, k:] = 0
                c[k:, :k] = 0
            elif t % 4 == 3 and n >= 4:
                k = n // 2
                c = np.zeros((n, n))
                c[:k, k:] = rng.integers(1, 4, (k, n - k))
                c = c + c.T
            r = c.sum(axis=1)
            m = c / np.sqrt(np.outer(r, r))
            v = np.sqrt(r / r.sum())
            side = 16 if n <= 16 else 33
            b = np.zeros((side, side))
            b[:n, :n] = m - np.outer(v, v)
            mats.append(b)
            expected.append(np.sort(np.abs(np.linalg.eigvalsh(m)))[-2])
        got = _texture._top_abs_eig_torch(xp, torch.tensor(np.stack(mats))).numpy()
        assert np.allclose(got, expected, rtol=1e-9, atol=1e-12), (n, got, expected)


def test_torch_chunks_match_one_pass():
    """The torch engine split into many cell chunks (pixel-list GLRLM, masked GLCM pairs,
    zone roots per chunk) gives the rows of one pass over all cells."""
    pytest.importorskip("torch")
    rng = np.random.default_rng(12)
    images, labels = [], []
    for h, w in ((40, 60), (57, 33)):
        img = rng.integers(0, 256, size=(h, w, 3)).astype(np.uint8)
        lab = np.zeros((h, w), np.int32)
        for k in range(1, 10):
            y, x = rng.integers(0, h - 4), rng.integers(0, w - 4)
            lab[y : y + rng.integers(2, 14), x : x + rng.integers(2, 14)] = 10 * k + 3
        images.append(img)
        labels.append(lab)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        whole = extract_batch(images, labels, SCHEMA_V1, "cpu")
        chunked = extract_batch(images, labels, SCHEMA_V1, "cpu", chunk_pixels=50)
        pure = extract_batch(images, labels, SCHEMA_V1, "numpy-pure")
    for (ids_w, v_w), (ids_c, v_c), (ids_p, v_p) in zip(whole, chunked, pure):
        assert np.array_equal(ids_w, ids_c) and np.array_equal(ids_w, ids_p) and len(ids_w) >= 4
        assert np.allclose(v_w, v_c, rtol=1e-12, atol=1e-12, equal_nan=True)
        assert np.allclose(v_w, v_p, rtol=1e-9, atol=1e-12, equal_nan=True)
