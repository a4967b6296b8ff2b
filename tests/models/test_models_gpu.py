"""GPU parity of the pure-PyTorch SSM with mamba_ssm (skipped without CUDA + mamba_ssm).

The checks live in ``benchmarks/gpu_parity.py`` (also runnable as a script on a GPU machine).
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

pytestmark = pytest.mark.gpu

_PATH = Path(__file__).resolve().parents[2] / "benchmarks" / "gpu_parity.py"
_spec = importlib.util.spec_from_file_location("gpu_parity", _PATH)
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)


@pytest.fixture(scope="module", autouse=True)
def _needs_gpu_and_mamba_ssm():
    reason = parity.why_unavailable()
    if reason:
        pytest.skip(reason)
    parity._exact_fp32()


def test_torch_scan_matches_mamba_ssm_on_random_inputs():
    for row in parity.check_random_layers():
        for key, err in row.items():
            if key != "case":
                assert err < parity.TOL, (row["case"], key, err)


def test_checkpoints_move_between_backends():
    from research.cells.datasets import DEFAULT_TABLES

    # The GPU machine has no runs/ folder: cell tables travel in a folder named by NAPARI_UAM_TABLES.
    tables = Path(os.environ.get("NAPARI_UAM_TABLES", DEFAULT_TABLES))
    if not (tables / "consep.parquet").is_file():
        pytest.skip(f"no cell tables in {tables}: build them with python -m research.cells.datasets")
    for row in parity.check_checkpoint_transfer(tables):
        assert row["max_prob_diff_other_backend"] < 1e-5, row
        assert row["max_prob_diff_cpu"] < 1e-5, row
