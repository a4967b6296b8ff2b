"""Thin wrapper of ``python -m napari_uam.training.experiments`` (UAM vs baselines, Tables 1/2/4).

    PYTHONPATH=src python benchmarks/experiments.py --tables .gpu_data --out docs/results.md --jobs 16
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from napari_uam.training.experiments import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
