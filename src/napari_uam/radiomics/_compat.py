"""Compatibility fixes applied before optional libraries load."""

import numpy as np


def _numpy_compat() -> None:
    """numba-cuda 0.30 registers an overload of ``np.row_stack``, which NumPy 2.5 removed (it
    was an alias of ``np.vstack``): put the alias back before numba-cuda's registries load."""
    if not hasattr(np, "row_stack"):
        np.row_stack = np.vstack
