"""The CUDA kernels' bookkeeping (per-cell scratch offsets, thread -> cell / angle mapping,
per-angle means, MCC fallback flags) checked without a GPU, under numba's CUDA simulator.

The per-cell functions themselves are the CPU kernels' (parity tested in
test_radiomics_parity.py); here the simulated kernels must give the CPU engine's table. The
GPU machine runs the compiled kernels against pyradiomics (``pytest -m gpu``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"

SCRIPT = textwrap.dedent(
    """
    import os, sys, warnings
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"
    sys.path.insert(0, {src!r})
    sys.path.insert(0, {tests!r})
    import numpy as np
    from _random_cells import random_patches
    warnings.simplefilter("ignore")
    from napari_uam.radiomics import _cuda, _numba, fast_backend as fb
    from napari_uam.radiomics.schema import SCHEMA_V1 as S

    images, labels = random_patches(5, ((30, 40), (25, 33), (36, 36)), 5, 1, 10, id_step=7, id_offset=3)
    ref = np.concatenate([v for _, v in fb.extract_batch(images, labels, S, "numpy")])

    # Simulated device arrays wrap NumPy arrays; the compiled CPU functions need the arrays.
    def unwrap(f):
        return lambda *a: f(*[getattr(x, "_ary", x) for x in a])

    for n in ("shape_cell", "first_order_cell", "glcm_angle", "glrlm_angle", "glszm_cell", "gldm_ngtdm_cell"):
        setattr(_numba, n, unwrap(getattr(_numba, n)))
    xp = fb.make_ops("cpu")
    rgb, lab, ids, shp = fb._stack(xp, images, labels, pack=False)
    col_of, fams, nf = fb._column_layout(S)
    out, unsettled = _cuda.extract_cuda(xp, rgb, lab, ids, shp, S, col_of, fams, nf)
    got = out.numpy()
    assert got.shape == ref.shape, (got.shape, ref.shape)
    assert int(unsettled.sum()) == 0
    assert np.allclose(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True), np.argwhere(
        ~np.isclose(got, ref, rtol=1e-12, atol=1e-12, equal_nan=True))[:5]
    print("OK", len(ref))
    """
)


@pytest.mark.skipif(
    importlib.util.find_spec("numba_cuda") is None,
    reason="numba-cuda not installed (the 'gpu' extra): no CUDA simulator to run the kernels on",
)
def test_cuda_kernels_under_the_simulator_match_the_cpu_engine(tmp_path):
    script = tmp_path / "sim.py"
    script.write_text(SCRIPT.format(src=str(SRC), tests=str(Path(__file__).resolve().parent)))
    res = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"},
    )
    assert res.returncode == 0 and "OK" in res.stdout, res.stdout[-2000:] + res.stderr[-4000:]
