"""Neighbourhood context of each nucleus: who its neighbours are, not only what it looks like.

A pathologist calls a nucleus tumor partly from its company: a sheet of crowded, similar,
large nuclei is tumor; an isolated dark round nucleus among spindle cells is a lymphocyte.
MCSpatNet's gain on BRCA-M2C came from such context. Per nucleus, from the centroids (um) and
a few of its own radiomics columns:

- ``ctx_density``: other nuclei within :data:`RADIUS_UM` per 1000 um^2;
- ``ctx_nn_um``: mean distance to its :data:`K` nearest nuclei;
- for each base column ``f`` of :data:`BASE_COLUMNS` present in the schema:
  ``ctx_mean_<f>``, the mean of ``f`` over the K nearest nuclei, and ``ctx_delta_<f>``, the
  nucleus' own value minus that mean (how it stands out from its neighbours).

Nuclei near an image (or tile) border have fewer neighbours in reach; the density counts
what is there. With fewer than two nuclei in the image the columns are NaN. Pure NumPy /
SciPy on the feature table, so every device computes the same numbers.
"""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

#: Neighbours averaged per nucleus.
K = 8
#: Radius (um) of the density count: about three nucleus diameters.
RADIUS_UM = 25.0
#: Columns whose neighbourhood mean and difference are added, when the schema has them:
#: size, elongation and stain density of the nucleus.
BASE_COLUMNS = (
    "shape2D_PixelSurface",
    "shape2D_Elongation",
    "hematoxylin_firstorder_Mean",
    "norm_hematoxylin_firstorder_Mean",
    "norm_eosin_firstorder_Mean",
    "norm_hematoxylin_glcm_JointEntropy",
)


def _base_present(schema) -> list[str]:
    names = set(schema.base.feature_names)
    if schema.normalised_view is not None:
        norm = schema.normalised_view
        names |= {f"norm_{n}" for n in norm.feature_names if not n.startswith("shape2D_")}
    return [c for c in BASE_COLUMNS if c in names]


def context_names(schema) -> tuple[str, ...]:
    """The ``ctx_*`` column names of ``schema``, in order."""
    names = ["ctx_density", "ctx_nn_um"]
    for c in _base_present(schema):
        names += [f"ctx_mean_{c}", f"ctx_delta_{c}"]
    return tuple(names)


def context_features(centroids_um: np.ndarray, table: pd.DataFrame, schema) -> pd.DataFrame:
    """The ``ctx_*`` columns for the nuclei of one image.

    Args:
        centroids_um: (n, 2) centroids in microns, rows aligned with ``table``.
        table: (n, ...) the nuclei's radiomics (must hold the base columns of ``schema``).
        schema: the feature schema (decides which base columns are used).

    Returns:
        DataFrame (n, len(context_names(schema))) float64 with ``table``'s index.
    """
    names = context_names(schema)
    base = _base_present(schema)
    n = len(table)
    out = np.full((n, len(names)), np.nan)
    if n >= 2:
        tree = cKDTree(centroids_um)
        k = min(K, n - 1)
        dist, idx = tree.query(centroids_um, k=k + 1)  # first hit is the nucleus itself
        dist, idx = dist[:, 1:], idx[:, 1:]
        counts = tree.query_ball_point(centroids_um, r=RADIUS_UM, return_length=True) - 1
        out[:, 0] = counts / (np.pi * RADIUS_UM**2) * 1000.0
        out[:, 1] = dist.mean(axis=1)
        for j, c in enumerate(base):
            v = table[c].to_numpy(np.float64)
            # NaN neighbours (degenerate cells) are left out of the mean.
            with np.errstate(invalid="ignore"), warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN neighbourhoods -> NaN
                mean = np.nanmean(np.where(np.isfinite(v[idx]), v[idx], np.nan), axis=1)
            out[:, 2 + 2 * j] = mean
            out[:, 3 + 2 * j] = v - mean
    return pd.DataFrame(out, index=table.index, columns=list(names))
