"""2-D shape features of all cells at once, defined as pyradiomics' ``shape2D`` (cshape.c).

Cells are given as a pixel list (see :mod:`.fast_backend`): flat indices into a label image
padded by one background pixel on every side, so that every 8-neighbour lookup is in bounds.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np

# Marching squares on the 2x2 window whose corners are pixel centres; bit k set when corner k
# (TL, TR, BL, BR) belongs to the cell. Vertices sit on the midpoints of window edges.
# Area (in pixel units) enclosed inside the window by the mesh: 1 corner 1/8, 2 adjacent 1/2,
# 2 diagonal 1/4 (pyradiomics cuts the two corners off separately), 3 corners 7/8, 4 corners 1.
_AREA = [0, 1 / 8, 1 / 8, 1 / 2, 1 / 8, 1 / 2, 1 / 4, 7 / 8, 1 / 8, 1 / 4, 1 / 2, 7 / 8, 1 / 2, 7 / 8, 7 / 8, 1]
# Number of diagonal (corner-cutting) segments and of horizontal / vertical segments per case.
_DIAG = [0, 1, 1, 0, 1, 0, 2, 1, 1, 2, 0, 1, 0, 1, 1, 0]
_HORIZ = [0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]  # TL+TR or BL+BR: a horizontal line
_VERT = [0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0]  # TL+BL or TR+BR: a vertical line


def shape_features(xp, lab, pix, cell, n_cells, width, spacing):
    """pyradiomics shape2D features of every cell.

    Args:
        xp: array namespace (:mod:`._ops`).
        lab: (P,) int64 flat padded label image, cell ids 1..n_cells (0 = background).
        pix: (N,) int64 flat indices of the cells' pixels in ``lab``.
        cell: (N,) int64 0-based cell index of each pixel (``lab[pix] - 1``).
        n_cells: number of cells C.
        width: row stride of the padded image.
        spacing: (sy, sx) pixel size in microns.

    Returns:
        dict name -> (C,) float64 array, names as in ``schema.SHAPE_FEATURES``.
    """
    sy, sx = spacing
    own = cell + 1
    corners = (0, 1, width, width + 1)  # TL, TR, BL, BR offsets from a window's top-left pixel
    area_lut = xp.asarray(_AREA, dtype="f64")
    seg = math.sqrt(sy * sy + sx * sx) / 2
    perim_lut = xp.asarray([d * seg + h * sx + v * sy for d, h, v in zip(_DIAG, _HORIZ, _VERT)], dtype="f64")
    # All 4 windows of every pixel at once: window k has the pixel as its corner k; inside[k, j]
    # = corner j of that window is in the cell. Each (cell, window) is counted once, at the
    # first of its corners that belongs to the cell (no earlier corner j < k inside).
    off = xp.asarray(corners, dtype="i64")
    top_left = pix[None, :] - off[:, None]  # (4, N)
    inside = xp.i(lab[top_left[:, None, :] + off[None, :, None]] == own[None, None, :])  # (4, 4, N)
    earlier = xp.asarray(np.tril(np.ones((4, 4), np.int64), -1), dtype="i64")  # [k, j]: j < k
    keep = xp.f((inside * earlier[:, :, None]).sum(axis=1) == 0)  # (4, N)
    case = (inside * xp.asarray([1, 2, 4, 8], dtype="i64")[None, :, None]).sum(axis=1)  # (4, N)
    cell4 = (cell[None, :] + xp.zeros((4, 1), dtype="i64")).reshape(-1)
    area = xp.bincount(cell4, weights=(area_lut[case] * keep).reshape(-1), minlength=n_cells)
    perim = xp.bincount(cell4, weights=(perim_lut[case] * keep).reshape(-1), minlength=n_cells)
    area = area * (sy * sx)

    n_pix = xp.bincount(cell, minlength=n_cells)
    diameter = _max_diameter(xp, lab, pix, cell, n_cells, width, spacing)

    # Principal axes from the covariance of pixel-centre coordinates (centred per cell first,
    # in two passes, so that the sums do not lose precision far from the origin).
    y = xp.f(pix // width) * sy
    x = xp.f(pix % width) * sx
    my = xp.bincount(cell, weights=y, minlength=n_cells) / n_pix
    mx = xp.bincount(cell, weights=x, minlength=n_cells) / n_pix
    dy, dx = y - my[cell], x - mx[cell]
    cyy = xp.bincount(cell, weights=dy * dy, minlength=n_cells) / n_pix
    cxx = xp.bincount(cell, weights=dx * dx, minlength=n_cells) / n_pix
    cxy = xp.bincount(cell, weights=dy * dx, minlength=n_cells) / n_pix
    half_tr = (cyy + cxx) / 2
    disc = xp.sqrt(((cyy - cxx) / 2) ** 2 + cxy * cxy)
    major = half_tr + disc
    det = cyy * cxx - cxy * cxy
    # det / major is the accurate small root; pyradiomics rounds tiny negative eigenvalues to 0.
    minor = xp.where(major > 0, det / xp.where(major > 0, major, 1.0), half_tr - disc)
    minor = xp.where((minor < 0) & (minor > -1e-10), 0.0, minor)
    with_nan = _errstate(xp)
    with with_nan:
        out = {
            "MeshSurface": area,
            "PixelSurface": n_pix * (sy * sx),
            "Perimeter": perim,
            "PerimeterSurfaceRatio": perim / area,
            "Sphericity": 2 * xp.sqrt(math.pi * area) / perim,
            "MaximumDiameter": diameter,
            "MajorAxisLength": xp.sqrt(major) * 4,
            "MinorAxisLength": xp.sqrt(minor) * 4,
            "Elongation": xp.sqrt(minor / major),
        }
    return out


def _errstate(xp):
    return np.errstate(divide="ignore", invalid="ignore") if xp.name == "numpy" else contextlib.nullcontext()


def _max_diameter(xp, lab, pix, cell, n_cells, width, spacing):
    """Largest distance between mesh vertices (midpoints of the cell's boundary edges), per cell.

    Only vertices that are extreme in both their row and their column can be convex-hull
    vertices, and the farthest pair is always a pair of hull vertices: the pairwise search is
    run on those candidates only, padded per cell, in chunks bounded in memory.
    """
    sy, sx = spacing
    own = cell + 1
    # The 4 edge midpoints of every pixel at once, (4, N); only those on the boundary (the
    # neighbour across that edge is outside the cell) are vertices: the others get the
    # sentinel cell n_cells, which groups them apart, and are dropped below.
    dirs = ((-1, 0), (1, 0), (0, -1), (0, 1))
    dyy = xp.asarray([d[0] for d in dirs], dtype="i64")[:, None]
    dxx = xp.asarray([d[1] for d in dirs], dtype="i64")[:, None]
    out = (lab[pix[None, :] + dyy * width + dxx] != own[None, :]).reshape(-1)
    vy = (2 * (pix // width)[None, :] + dyy).reshape(-1)  # vertex coordinates in half pixels
    vx = (2 * (pix % width)[None, :] + dxx).reshape(-1)
    vc = xp.where(out, (cell[None, :] + 0 * dyy).reshape(-1), n_cells)
    span = 2 * max(lab.shape[0] // width + 1, width) + 4  # > every coordinate, known on the host
    keep = None
    for major, minor in ((vy, vx), (vx, vy)):
        key = (vc * span + major) * span + minor
        order = xp.argsort(key)
        group = (key // span)[order]
        n = group.shape[0]
        is_first, is_last = group == group, group == group
        is_first[1:] = group[1:] != group[:-1]
        is_last[:-1] = group[1:] != group[:-1]
        extreme = xp.zeros(n, dtype="i64")
        extreme[order] = xp.i(is_first | is_last)
        keep = extreme if keep is None else keep * extreme
    keep = keep * xp.i(out)
    sel = xp.nonzero(keep > 0)
    vy, vx, vc = vy[sel], vx[sel], vc[sel]
    order = xp.argsort(vc)
    vy, vx, vc = xp.f(vy[order]) * (sy / 2), xp.f(vx[order]) * (sx / 2), vc[order]
    counts = xp.to_numpy(xp.bincount(vc, minlength=n_cells)).astype(np.int64)
    starts = np.cumsum(counts) - counts
    diam2 = xp.zeros(n_cells)
    # Cells bucketed by candidate count (power-of-two buckets: a fixed few, whatever the
    # number of cells), each bucket a padded (cells, K, K) distance block; a cell's slots past
    # its count repeat its last candidate (harmless). One upload of the slot table per block.
    bucket = np.ceil(np.log2(np.maximum(counts, 2))).astype(np.int64)
    order_c = np.argsort(bucket, kind="stable")
    edges = np.flatnonzero(np.diff(bucket[order_c])) + 1
    on_gpu = getattr(getattr(xp, "device", None), "type", "cpu") == "cuda"
    budget = 1 << 26 if on_gpu else 1 << 22  # distance-block elements per call (memory)
    for group in np.split(order_c, edges):
        if group.size == 0:
            continue
        k = int(counts[group].max())
        step = max(1, budget // max(1, k * k))
        for g0 in range(0, group.size, step):
            cells = group[g0 : g0 + step]
            idx = starts[cells][:, None] + np.minimum(np.arange(k)[None, :], counts[cells][:, None] - 1)
            idx = xp.asarray(idx, dtype="i64")
            gy, gx = vy[idx], vx[idx]
            d2 = (gy[:, :, None] - gy[:, None, :]) ** 2 + (gx[:, :, None] - gx[:, None, :]) ** 2
            diam2[xp.asarray(cells, dtype="i64")] = xp.amax(d2.reshape(cells.size, -1), axis=1)
    return xp.sqrt(diam2)
