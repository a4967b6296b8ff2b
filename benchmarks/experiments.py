"""Thin wrapper of ``python -m research.cells.experiments`` (UAM vs baselines, Tables 1/2/4).

PYTHONPATH=src python benchmarks/experiments.py --tables .gpu_data --out docs/results.md --jobs 16
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # research/

from research.cells.experiments import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
