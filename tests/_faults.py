"""Two hand-made nuclei with their cell table, and a full disk: the faults of issue 9.

Imported by tests/io/test_writers.py, tests/io/test_export.py and tests/test_cli.py (tests/ is
on the import path through its conftest.py).
"""

from __future__ import annotations

import errno

import numpy as np
import pandas as pd


def _labels():
    lab = np.zeros((40, 50), np.int32)
    lab[5:12, 5:14] = 1
    lab[20:30, 30:45] = 2
    return lab


def _table(lab):
    ids = np.unique(lab)[1:]
    return pd.DataFrame(
        {
            "label": ids,
            "y": ids * 1.0,
            "x": ids * 2.0,
            "area_um2": ids * 3.0,
            "class": ["tumor", "non-tumor"],
            "tumor_probability": [0.9, 0.1],
        }
    )


def _enospc(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")
