"""First-order and texture features (GLCM, GLRLM, GLSZM, GLDM, NGTDM) of all cells at once.

Every function follows the formulas of the pyradiomics module of the same name (read next to
it): per-angle matrices, normalised per angle, features averaged over the angles that hold at
least one neighbour pair. Inputs are pixel lists into a padded label image (see
:mod:`.fast_backend`); all arithmetic is float64.
"""

from __future__ import annotations

import math

import numpy as np

EPS = 2.220446049250313e-16  # numpy.spacing(1), pyradiomics' log guard
#: The 4 in-plane directions (dy, dx) at distance 1 (0, 45, 90 and 135 degrees).
ANGLES = ((1, 1), (1, 0), (1, -1), (0, 1))
#: The 8 neighbours of a pixel (GLDM, NGTDM).
NEIGHBOURS = ((-1, -1), (-1, 0), (-1, 1), (0, -1), (0, 1), (1, -1), (1, 0), (1, 1))


def _angle_mean(xp, values, valid):
    """Mean over valid angles of (C, A) values; NaN where a cell has no valid angle."""
    n = xp.f(valid).sum(axis=1)
    total = xp.where(valid, values, 0.0).sum(axis=1)
    return total / xp.where(n > 0, n, float("nan"))


def _safe_div(xp, num, den):
    return num / xp.where(den != 0, den, float("nan"))


def first_order(xp, cell, values, level, n_cells, n_levels, voxel_area):
    """pyradiomics ``firstorder`` features of the 0..255 channel, per pixel (no dense histogram).

    Moments are two-pass (mean first, then centred powers) segment sums over the pixels;
    order statistics index each cell's values in sorted order, produced by a counting sort.

    Args:
        cell: (N,) cell index per pixel, non-decreasing; values: (N,) channel value 0..255;
        level: (N,) discretised grey level 1..; n_levels: L (levels are < L).
        voxel_area: product of the (y, x, z) spacing (pyradiomics' ``TotalEnergy`` factor).
    """
    C = n_cells
    v = xp.f(values)

    def seg(w):
        return xp.bincount(cell, weights=w, minlength=C)

    hist = xp.i(xp.bincount(cell * 256 + values, minlength=C * 256))
    n_i = xp.i(xp.bincount(cell, minlength=C))
    start = xp.cumsum(n_i, axis=0) - n_i
    sv = xp.f(xp.repeat(xp.arange(C * 256) % 256, hist))  # each cell's values, ascending
    n = xp.f(n_i)

    def order_stat(k):  # k-th smallest value (0-based), k: (C,) float holding an integer
        return sv[start + xp.i(k)]

    def percentile(q):  # numpy's linear interpolation, including its two-sided lerp
        pos = q * (n - 1)
        lo = xp.floor(pos)
        t = pos - lo
        hi = xp.minimum(lo + 1, n - 1)
        a, b = order_stat(lo), order_stat(hi)
        d = b - a
        return xp.where(t >= 0.5, b - d * (1 - t), a + d * t)

    vmin = order_stat(xp.zeros(C))
    vmax = order_stat(n - 1)
    mean = seg(v) / n
    dev = v - mean[cell]
    dev2 = dev * dev
    m2 = seg(dev2) / n
    m3 = seg(dev2 * dev) / n
    m4 = seg(dev2 * dev2) / n
    m2_safe = xp.where(m2 == 0, 1.0, m2)
    p10, p90 = percentile(0.10), percentile(0.90)
    inner = xp.f((v >= p10[cell]) & (v <= p90[cell]))
    n_in = seg(inner)
    mean_in = seg(inner * v) / n_in
    energy = seg(v * v)
    lev_hist = xp.bincount(cell * n_levels + level, minlength=C * n_levels).reshape(C, n_levels)
    p = lev_hist / n[:, None]
    return {
        "Energy": energy,
        "TotalEnergy": energy * voxel_area,
        "Entropy": -(p * xp.log2(p + EPS)).sum(axis=1),
        "Minimum": vmin,
        "10Percentile": p10,
        "90Percentile": p90,
        "Maximum": vmax,
        "Mean": mean,
        "Median": percentile(0.5),
        "InterquartileRange": percentile(0.75) - percentile(0.25),
        "Range": vmax - vmin,
        "MeanAbsoluteDeviation": seg(xp.abs(dev)) / n,
        "RobustMeanAbsoluteDeviation": seg(inner * xp.abs(v - mean_in[cell])) / n_in,
        "RootMeanSquared": xp.sqrt(energy / n),
        "Skewness": m3 / m2_safe**1.5,
        "Kurtosis": m4 / m2_safe**2.0,
        "Variance": m2,
        "Uniformity": (p * p).sum(axis=1),
    }


def angle_pairs(xp, lab, pix, cell, width):
    """Per angle, the (pixel-list index, neighbour flat index) pairs inside the same cell.

    Returns:
        list over ANGLES of (src, nbr): src (M,) indices into ``pix``, nbr (M,) flat indices.
    """
    own = cell + 1
    out = []
    for dy, dx in ANGLES:
        nbr = pix + dy * width + dx
        src = xp.nonzero(lab[nbr] == own)
        out.append((src, nbr[src]))
    return out


def _segment_pairs(xp, seg, n_seg):
    """All ordered pairs (e1, e2) of entries of the same segment, for entries sorted by ``seg``.

    Returns (first, second) index arrays into the entries, grouped by segment.
    """
    n_e = seg.shape[0]
    k = xp.i(xp.bincount(seg, minlength=n_seg))
    seg_start = xp.cumsum(k, axis=0) - k
    partners = k[seg]
    first = xp.repeat(xp.arange(n_e), partners)
    within = xp.arange(first.shape[0]) - xp.repeat(xp.cumsum(partners, axis=0) - partners, partners)
    second = seg_start[seg[first]] + within
    return first, second


def glcm(xp, cell, level, levimg, pairs, n_cells, n_levels, ng, n_present, rank=None):
    """pyradiomics ``glcm`` (symmetrical, distance 1, 4 angles, mean over non-empty angles).

    Sparse: only the non-zero (cell, angle, i, j) entries are kept. They are counted with one
    ``bincount`` into a table sized per cell (4 (ng+1)^2 bins for a cell with ng levels), so
    the table stays small even when a few cells have many levels; every feature is then a
    segment sum over the entries of one (cell, angle). Only MCC needs dense matrices: one
    batched eigensolver call per distinct ng, on (ng x ng) matrices.

    Args:
        levimg: (P,) grey level of every padded pixel (0 outside cells).
        pairs: output of :func:`angle_pairs`.
        n_levels: L, larger than every level.
        ng: (C,) per-cell maximum grey level (pyradiomics' ``Ng``).
        n_present: (C,) number of distinct grey levels in the cell.
        rank: (C * L,) int rank of each level among the levels present in its cell (for the
            MCC matrices, sized by the number of present levels); None: level - 1.
    """
    L, A, C = n_levels, len(ANGLES), n_cells
    CA = C * A
    stride = ng + 1
    size = A * stride * stride
    end = xp.cumsum(size, axis=0)
    off = end - size
    keys = []
    for a, (src, nbr) in enumerate(pairs):
        c = cell[src]
        s = stride[c]
        base = off[c] + a * s * s
        li, lj = level[src], levimg[nbr]
        keys += [base + li * s + lj, base + lj * s + li]  # symmetrical GLCM
    counts = xp.bincount(xp.concat(keys), minlength=int(end[-1]))
    k = xp.nonzero(counts > 0)
    cnt = counts[k]
    c = xp.searchsorted(end, k, right=True)
    r = k - off[c]
    s = stride[c]
    a = r // (s * s)
    r = r - a * s * s
    i = r // s
    j = r - i * s
    seg = c * A + a  # non-decreasing: entries come out in (cell, angle, i, j) order

    def ss(w):
        return xp.bincount(seg, weights=w, minlength=CA)

    total = ss(cnt)
    valid = (total > 0).reshape(C, A)
    p = cnt / total[seg]
    fi, fj = xp.f(i), xp.f(j)
    ux = ss(p * fi)
    uy = ss(p * fj)
    px = xp.bincount(seg * L + i, weights=p, minlength=CA * L)  # (CA * L,) marginals
    py = xp.bincount(seg * L + j, weights=p, minlength=CA * L)
    g = xp.f(xp.arange(L))
    kd = g
    ks = xp.f(xp.arange(2 * L))
    p_sum = xp.bincount(seg * (2 * L) + i + j, weights=p, minlength=CA * 2 * L).reshape(CA, 2 * L)
    p_diff = xp.bincount(seg * L + xp.abs(i - j), weights=p, minlength=CA * L).reshape(CA, L)
    ngf = xp.f(ng)[xp.arange(CA) // A][:, None]

    hxy = -ss(p * xp.log2(p + EPS))
    sum_ij = fi + fj - (ux + uy)[seg]
    sum2 = sum_ij * sum_ij
    di = fi - ux[seg]
    dj = fj - uy[seg]
    sumsq = ss(p * di * di)
    sigx = sumsq**0.5
    sigy = ss(p * dj * dj) ** 0.5
    corm = ss(p * di * dj)
    corr = xp.where(sigx * sigy == 0, 1.0, corm / (sigx * sigy + EPS))
    diffavg = (kd * p_diff).sum(axis=1)
    pxr, pyr = px.reshape(CA, L), py.reshape(CA, L)
    hx = -(pxr * xp.log2(pxr + EPS)).sum(axis=1)
    hy = -(pyr * xp.log2(pyr + EPS)).sum(axis=1)
    hxy1 = -ss(p * xp.log2(px[seg * L + i] * py[seg * L + j] + EPS))
    # HXY2 = -sum_ij px_i py_j log2(px_i py_j + eps) is separable up to the eps guard: every
    # non-zero px_i py_j is >= 1 / (4 pairs^2) >> eps, so log2(ab + eps) = log2(a) + log2(b)
    # + eps / (ab ln 2) to double precision, i.e. each present (i, j) adds eps / ln 2. With one
    # level in the angle pyradiomics gets HXY2 == HXY exactly (Imc2 = 0): kept exactly below.
    sx_, sy_ = pxr.sum(axis=1), pyr.sum(axis=1)
    kx = xp.f(pxr > 0).sum(axis=1)
    ky = xp.f(pyr > 0).sum(axis=1)
    lx = (pxr * xp.log2(xp.where(pxr > 0, pxr, 1.0))).sum(axis=1)
    ly = (pyr * xp.log2(xp.where(pyr > 0, pyr, 1.0))).sum(axis=1)
    hxy2 = -(lx * sy_ + ly * sx_ + kx * ky * (EPS / math.log(2)))
    one_level = (kx == 1) & (ky == 1)
    hxy2 = xp.where(one_level, hxy, hxy2)
    div = xp.maximum(hx, hy)
    imc1 = xp.where(div != 0, (hxy - hxy1) / xp.where(div != 0, div, 1.0), 0.0)
    imc2 = xp.where(hxy2 == hxy, 0.0, xp.sqrt(1 - xp.exp(-2 * (hxy2 - hxy))))
    inv_var_w = xp.where(kd > 0, 1.0 / xp.where(kd > 0, kd, 1.0) ** 2, 0.0)
    mval = p / xp.sqrt(px[seg * L + i] * px[seg * L + j])
    if rank is None:
        mcc = _mcc(xp, c, a, i - 1, j - 1, mval, ng, C)
    else:
        mcc = _mcc(xp, c, a, rank[c * L + i], rank[c * L + j], mval, xp.i(n_present), C)
    feats = {
        "Autocorrelation": ss(p * fi * fj),
        "JointAverage": ux,
        "ClusterProminence": ss(p * sum2 * sum2),
        "ClusterShade": ss(p * sum2 * sum_ij),
        "ClusterTendency": ss(p * sum2),
        "Contrast": ss(p * (fi - fj) ** 2),
        "Correlation": corr,
        "DifferenceAverage": diffavg,
        "DifferenceEntropy": -(p_diff * xp.log2(p_diff + EPS)).sum(axis=1),
        "DifferenceVariance": (p_diff * (kd - diffavg[:, None]) ** 2).sum(axis=1),
        "JointEnergy": ss(p * p),
        "JointEntropy": hxy,
        "Imc1": imc1,
        "Imc2": imc2,
        "Idm": (p_diff / (1 + kd**2)).sum(axis=1),
        "MCC": mcc,
        "Idmn": (p_diff / (1 + kd**2 / ngf**2)).sum(axis=1),
        "Id": (p_diff / (1 + kd)).sum(axis=1),
        "Idn": (p_diff / (1 + kd / ngf)).sum(axis=1),
        "InverseVariance": (p_diff * inv_var_w).sum(axis=1),
        "MaximumProbability": xp.segment_max(CA, seg, p),
        "SumAverage": (ks * p_sum).sum(axis=1),
        "SumEntropy": -(p_sum * xp.log2(p_sum + EPS)).sum(axis=1),
        "SumSquares": sumsq,
    }
    out = {k: _angle_mean(xp, v.reshape(C, A), valid) for k, v in feats.items()}
    # pyradiomics returns MCC = 1 for a single grey level even when no angle holds a pair.
    out["MCC"] = xp.where(n_present < 2, 1.0, out["MCC"])
    return out, valid


def _mcc(xp, c, a, ri, rj, mval, ng, C):
    """Per (cell, angle) MCC: the second largest |eigenvalue| of M = D^-1/2 P D^-1/2.

    Q = D^-1 P D^-1 P^T (pyradiomics) is similar to M^2 with M symmetric, so the eigenvalues of
    Q are the squared eigenvalues of M, computed stably with a symmetric eigensolver. Absent
    levels only add zero rows (eigenvalue 0), so each cell's matrix is indexed by the rank of
    its levels (``ri``, ``rj`` in 0..ng-1; ``ng`` (C,) the matrix size; ``mval`` the entries
    of M) and cells are batched by size, which never exceeds 32 (batched Jacobi on CUDA).
    """
    A = len(ANGLES)
    out = xp.zeros(C * A)
    ng_h = xp.to_numpy(ng).astype(np.int64)
    order_c = np.argsort(ng_h, kind="stable")
    pos = np.empty(C, np.int64)
    pos[order_c] = np.arange(C)
    ng_sorted = ng_h[order_c]
    levels = np.unique(ng_sorted[ng_sorted >= 2])
    if levels.size == 0:
        return out
    g_start = np.searchsorted(ng_sorted, levels)
    g_end = np.searchsorted(ng_sorted, levels, side="right")
    local = xp.asarray(pos - np.concatenate([[0], g_start])[np.searchsorted(levels, ng_h, side="right")], dtype="i64")
    ng_e = ng[c]
    e_order = xp.argsort(ng_e)  # entries grouped by their cell's ng (already so for one channel)
    e_bounds = xp.to_numpy(xp.searchsorted(ng_e[e_order], xp.asarray(np.stack([levels, levels + 1]).reshape(-1), dtype="i64")))
    n_lv = levels.size
    for t, gl in enumerate(levels.tolist()):
        e0, e1 = int(e_bounds[t]), int(e_bounds[n_lv + t])
        n_mat = int(g_end[t] - g_start[t]) * A
        sel = e_order[e0:e1]
        buf = xp.zeros(n_mat * gl * gl)
        idx = ((local[c[sel]] * A + a[sel]) * gl + ri[sel]) * gl + rj[sel]
        buf[idx] = mval[sel]
        ev = xp.sort(xp.abs(xp.eigvalsh(buf.reshape(n_mat, gl, gl))))[:, -2]
        cells = xp.asarray(order_c[g_start[t] : g_end[t]], dtype="i64")
        dst = (cells[:, None] * A + xp.arange(A)[None, :]).reshape(-1)
        out[dst] = ev
    return out


def line_sequences(xp, key_img):
    """Per angle, the (B, H, W) key image read line by line along that direction, as one flat
    sequence in which lines (and patches) are separated by zeros.

    Horizontal: raster order; vertical: the transpose; diagonals: the classic shear (each row
    padded by H zeros and re-read with a row stride one shorter puts pixel (y, x) at column
    x + y, so anti-diagonals become columns; the mirrored image does the same for x - y).
    O(pixels) copies, no sort; every line starts and ends on the zero padding.
    """
    b, h, w = key_img.shape
    if xp.name == "numpy":
        pad = np.zeros((b, h, w + h), dtype=key_img.dtype)
    else:
        pad = xp.torch.zeros((b, h, w + h), dtype=key_img.dtype, device=key_img.device)

    def shear(img):  # (B, H, W) -> (B, H, W + H - 1) with [y, x + y] = img[y, x]
        pad[:, :, :w] = img
        pad[:, :, w:] = 0
        flat = pad.reshape(b, h * (w + h))[:, : h * (w + h - 1)]
        return flat.reshape(b, h, w + h - 1)

    def columns(img):  # read column by column, top to bottom
        return img.transpose(0, 2, 1).reshape(-1) if xp.name == "numpy" else img.transpose(1, 2).reshape(-1)

    mirrored = key_img[:, :, ::-1] if xp.name == "numpy" else key_img.flip(2)
    out = []
    for dy, dx in ANGLES:
        if dy == 0:
            out.append(key_img.reshape(-1))
        elif dx == 0:
            out.append(columns(key_img))
        elif dx == 1:  # x - y constant: anti-diagonals of the mirrored image
            out.append(columns(shear(mirrored)))
        else:  # x + y constant
            out.append(columns(shear(key_img)))
    return out


def glrlm(xp, key_img, n_keys, n_cells, n_levels, valid):
    """pyradiomics ``glrlm`` over the 4 angles (mean over angles that hold a neighbour pair).

    A run is a maximal line of same-level pixels of one cell along a direction: in the
    (cell, level)-keyed image read line by line (:func:`line_sequences`), a run is a maximal
    constant stretch of non-zero key. ``valid`` (C, A) marks the angles with at least one pair
    (from :func:`glcm`).

    Args:
        key_img: (B, H, W) int ``cell_id * n_keys + level`` of every padded pixel, 0 outside
            cells (cell ids from 1).
    """
    L, A, C = n_levels, len(ANGLES), n_cells
    g = xp.f(xp.arange(L))
    per_angle = []
    for a, seq in enumerate(line_sequences(xp, key_img)):  # one direction at a time (memory)
        n = seq.shape[0]
        starts = xp.nonzero(seq[1:] != seq[:-1]) + 1  # position 0 is padding
        k = xp.i(seq[starts])
        length = xp.concat([starts[1:], xp.asarray([n], dtype="i64")]) - starts
        del seq
        rc = k // n_keys - 1
        # Runs of background, and of cells without any pair in this direction, do not count.
        keep = xp.nonzero(k > 0)
        keep = keep[valid[:, a][rc[keep]]]
        rc, rl, rj = rc[keep], k[keep] % n_keys, length[keep]
        del k, length, keep
        per_angle.append(_glrlm_angle(xp, rc, rl, rj, C, L, g))
    names = per_angle[0].keys()
    return {k: _angle_mean(xp, xp.stack([f[k] for f in per_angle], axis=1), valid) for k in names}


def _glrlm_angle(xp, rc, rl, rj, C, L, g):
    """GLRLM features (C,) of one direction from its runs (cell, level, length)."""
    i, j = xp.f(rl), xp.f(rj)
    i2, j2 = i * i, j * j

    def run_sum(weight):
        return xp.bincount(rc, weights=weight, minlength=C)

    nr = xp.bincount(rc, minlength=C)
    rmax = (int(rj.max()) if rj.shape[0] else 0) + 1
    pr = xp.bincount(rc * rmax + rj, minlength=C * rmax).reshape(C, rmax)
    pg = xp.bincount(rc * L + rl, minlength=C * L).reshape(C, L)
    jj = xp.f(xp.arange(rmax))
    n_pix = (pr * jj).sum(axis=1)
    nrs = xp.where(nr > 0, nr, float("nan"))
    pgn = pg / nrs[:, None]
    prn = pr / nrs[:, None]
    u_i = (pgn * g).sum(axis=1)
    u_j = (prn * jj).sum(axis=1)
    uk, cnt = xp.unique_counts((rc * L + rl) * rmax + rj)
    uc = uk // (L * rmax)
    q = xp.f(cnt) / nrs[uc]
    pg2, pr2 = (pg * pg).sum(axis=1), (pr * pr).sum(axis=1)
    inv_i2, inv_j2 = 1 / i2, 1 / j2
    return {
        "ShortRunEmphasis": run_sum(inv_j2) / nrs,
        "LongRunEmphasis": run_sum(j2) / nrs,
        "GrayLevelNonUniformity": pg2 / nrs,
        "GrayLevelNonUniformityNormalized": pg2 / nrs**2,
        "RunLengthNonUniformity": pr2 / nrs,
        "RunLengthNonUniformityNormalized": pr2 / nrs**2,
        "RunPercentage": nrs / n_pix,
        "GrayLevelVariance": (pgn * (g - u_i[:, None]) ** 2).sum(axis=1),
        "RunVariance": (prn * (jj - u_j[:, None]) ** 2).sum(axis=1),
        "RunEntropy": xp.bincount(uc, weights=-q * xp.log2(q + EPS), minlength=C),
        "LowGrayLevelRunEmphasis": run_sum(inv_i2) / nrs,
        "HighGrayLevelRunEmphasis": run_sum(i2) / nrs,
        "ShortRunLowGrayLevelEmphasis": run_sum(inv_i2 * inv_j2) / nrs,
        "ShortRunHighGrayLevelEmphasis": run_sum(i2 * inv_j2) / nrs,
        "LongRunLowGrayLevelEmphasis": run_sum(j2 * inv_i2) / nrs,
        "LongRunHighGrayLevelEmphasis": run_sum(i2 * j2) / nrs,
    }


def glszm(xp, zone, cell, level, n_cells, n_levels):
    """pyradiomics ``glszm`` from 8-connected same-level zones.

    Args:
        zone: (N,) zone index 0..Z-1 of every pixel (zones never span two cells or levels).
    """
    L, C = n_levels, n_cells
    n_zones = int(zone.max()) + 1 if zone.shape[0] else 0
    size = xp.bincount(zone, minlength=n_zones)
    # Any pixel of a zone gives its cell and level; the max over the zone is one of them.
    zc = xp.scatter_max(n_zones, zone, cell)
    zl = xp.scatter_max(n_zones, zone, level)
    s = size
    i = xp.f(zl)

    def zsum(weight):
        return xp.bincount(zc, weights=weight, minlength=C)

    nz = zsum(xp.ones_like(s))
    n_pix = zsum(s)
    nz1 = xp.where(nz == 0, 1.0, nz)
    pg = xp.bincount(zc * L + zl, minlength=C * L).reshape(C, L)
    si = xp.i(s)
    uk, cnt = xp.unique_counts(zc * (int(si.max()) + 1) + si)
    ps2 = xp.bincount(uk // (int(si.max()) + 1), weights=xp.f(cnt) ** 2, minlength=C)
    smax = int(si.max()) + 1
    jk, jcnt = xp.unique_counts((zc * L + zl) * smax + si)
    q = xp.f(jcnt) / nz1[jk // (L * smax)]
    g = xp.f(xp.arange(L))
    u_i = zsum(i) / nz1
    u_s = zsum(s) / nz1
    return {
        "SmallAreaEmphasis": zsum(1 / s**2) / nz1,
        "LargeAreaEmphasis": zsum(s**2) / nz1,
        "GrayLevelNonUniformity": (pg**2).sum(axis=1) / nz1,
        "GrayLevelNonUniformityNormalized": (pg**2).sum(axis=1) / nz1**2,
        "SizeZoneNonUniformity": ps2 / nz1,
        "SizeZoneNonUniformityNormalized": ps2 / nz1**2,
        "ZonePercentage": nz1 / xp.where(n_pix == 0, 1.0, n_pix),
        "GrayLevelVariance": ((pg / nz1[:, None]) * (g - u_i[:, None]) ** 2).sum(axis=1),
        "ZoneVariance": zsum((s - u_s[zc]) ** 2) / nz1,
        "ZoneEntropy": xp.bincount(jk // (L * smax), weights=-q * xp.log2(q + EPS), minlength=C),
        "LowGrayLevelZoneEmphasis": zsum(1 / i**2) / nz1,
        "HighGrayLevelZoneEmphasis": zsum(i**2) / nz1,
        "SmallAreaLowGrayLevelEmphasis": zsum(1 / (i**2 * s**2)) / nz1,
        "SmallAreaHighGrayLevelEmphasis": zsum(i**2 / s**2) / nz1,
        "LargeAreaLowGrayLevelEmphasis": zsum(s**2 / i**2) / nz1,
        "LargeAreaHighGrayLevelEmphasis": zsum(i**2 * s**2) / nz1,
    }


def neighbour_stats(xp, lab, pix, cell, level, levimg, width):
    """Per pixel: same-level 8-neighbours in the cell, all 8-neighbours in the cell, and the
    sum of those neighbours' levels (GLDM dependence and NGTDM neighbourhood)."""
    own = cell + 1
    same = xp.zeros(pix.shape[0], dtype="i64")
    count = xp.zeros(pix.shape[0], dtype="i64")
    total = xp.zeros(pix.shape[0], dtype="i64")
    for dy, dx in NEIGHBOURS:
        nbr = pix + dy * width + dx
        inside = lab[nbr] == own
        nl = levimg[nbr]
        count = count + xp.i(inside)
        total = total + xp.where(inside, nl, 0)
        same = same + xp.i(inside & (nl == level))
    return same, count, total


def gldm(xp, cell, level, same, n_cells, n_levels):
    """pyradiomics ``gldm`` (alpha 0, distance 1): dependence = 1 + same-level neighbours."""
    L, C, D = n_levels, n_cells, len(NEIGHBOURS) + 1
    P = xp.bincount((cell * L + level) * D + same, minlength=C * L * D).reshape(C, L, D)
    nz = P.sum(axis=(1, 2))
    nz = xp.where(nz == 0, 1.0, nz)
    pd = P.sum(axis=1)
    pg = P.sum(axis=2)
    g = xp.f(xp.arange(L))
    d = xp.f(xp.arange(D)) + 1
    i2 = xp.where(g > 0, g**2, 1.0)  # level 0 never holds counts; avoid 1/0
    pn = P / nz[:, None, None]
    u_i = (pg / nz[:, None] * g).sum(axis=1)
    u_j = (pd / nz[:, None] * d).sum(axis=1)
    w = g[:, None] ** 2
    iw = 1 / i2[:, None]
    dd = d[None, :] ** 2
    return {
        "SmallDependenceEmphasis": (pd / d**2).sum(axis=1) / nz,
        "LargeDependenceEmphasis": (pd * d**2).sum(axis=1) / nz,
        "GrayLevelNonUniformity": (pg**2).sum(axis=1) / nz,
        "DependenceNonUniformity": (pd**2).sum(axis=1) / nz,
        "DependenceNonUniformityNormalized": (pd**2).sum(axis=1) / nz**2,
        "GrayLevelVariance": (pg / nz[:, None] * (g - u_i[:, None]) ** 2).sum(axis=1),
        "DependenceVariance": (pd / nz[:, None] * (d - u_j[:, None]) ** 2).sum(axis=1),
        "DependenceEntropy": -(pn * xp.log2(pn + EPS)).sum(axis=(1, 2)),
        "LowGrayLevelEmphasis": (pg / i2).sum(axis=1) / nz,
        "HighGrayLevelEmphasis": (pg * g**2).sum(axis=1) / nz,
        "SmallDependenceLowGrayLevelEmphasis": (P * iw / dd).sum(axis=(1, 2)) / nz,
        "SmallDependenceHighGrayLevelEmphasis": (P * w / dd).sum(axis=(1, 2)) / nz,
        "LargeDependenceLowGrayLevelEmphasis": (P * iw * dd).sum(axis=(1, 2)) / nz,
        "LargeDependenceHighGrayLevelEmphasis": (P * w * dd).sum(axis=(1, 2)) / nz,
    }


def ngtdm(xp, cell, level, count, total, n_cells, n_levels):
    """pyradiomics ``ngtdm`` (distance 1): every pixel counts; one without neighbours in the
    cell adds 0 to s_i, as pyradiomics' C code does.

    Contrast and Strength are separable sums over level pairs (computed from per-cell
    moments); Busyness's sum of |i p_i - j p_j| over present pairs comes from the sorted
    i p_i; only Complexity needs the pairs of present levels of each cell (kept sparse).
    """
    L, C = n_levels, n_cells
    lf = xp.f(level)
    avg = xp.f(total) / xp.where(count > 0, xp.f(count), 1.0)
    diff = xp.where(count > 0, xp.abs(lf - avg), 0.0)
    n_i = xp.bincount(cell * L + level, minlength=C * L).reshape(C, L)
    s_i = xp.bincount(cell * L + level, weights=diff, minlength=C * L).reshape(C, L)
    nvp = n_i.sum(axis=1)
    p = n_i / xp.where(nvp > 0, nvp, 1.0)[:, None]
    present = n_i > 0
    pf = xp.f(present)
    ngp = pf.sum(axis=1)
    g = xp.f(xp.arange(L))[None, :]
    ps = (p * s_i).sum(axis=1)
    sum_s = s_i.sum(axis=1)
    div = ngp * (ngp - 1)
    # sum_ij p_i p_j (i - j)^2 = 2 (sum p) sum_i p_i (i - mu)^2 with mu the p-weighted mean.
    sp = p.sum(axis=1)
    mu = (p * g).sum(axis=1) / xp.where(sp > 0, sp, 1.0)
    var = (p * (g - mu[:, None]) ** 2).sum(axis=1)
    contrast = 2 * sp * var * sum_s / nvp
    # sum over present pairs of |x_i - x_j|, x = i p_i: 2 sum_k x_(k) (2k - K + 1), sorted x.
    ip = g * p
    xs = xp.sort(xp.where(present, ip, float("inf")))
    kk = xp.f(xp.arange(L))[None, :]
    coef = 2 * kk - ngp[:, None] + 1
    absdiff = 2 * xp.where(kk < ngp[:, None], xs * coef, 0.0).sum(axis=1)
    # sum over present pairs of (p_i + p_j)(i - j)^2 = 2 sum_i p_i sum_{j present} (i - j)^2.
    s1 = (pf * g).sum(axis=1)[:, None] / xp.where(ngp > 0, ngp, 1.0)[:, None]  # mean present level
    m2p = (pf * (g - s1) ** 2).sum(axis=1)[:, None]
    per_i = ngp[:, None] * (g - s1) ** 2 + m2p  # sum_{j present} (i - j)^2
    strength = 2 * (p * per_i).sum(axis=1)
    # Complexity: sum over ordered pairs of present levels of |i - j| (p_i s_i + p_j s_j) /
    # (p_i + p_j), over the (cell, level) entries paired within their cell (sparse).
    e = xp.nonzero(present.reshape(-1))
    ec = e // L
    e1, e2 = _segment_pairs(xp, ec, C)
    pf_, sf_ = p.reshape(-1), s_i.reshape(-1)
    a1, a2 = e[e1], e[e2]
    num = xp.abs(xp.f(a1 % L - a2 % L)) * (pf_[a1] * sf_[a1] + pf_[a2] * sf_[a2])
    cplx = xp.bincount(ec[e1], weights=num / (pf_[a1] + pf_[a2]), minlength=C)
    return {
        "Coarseness": xp.where(ps != 0, 1 / xp.where(ps != 0, ps, 1.0), 1e6),
        "Contrast": xp.where(div != 0, contrast / xp.where(div != 0, div, 1.0), 0.0),
        "Busyness": xp.where(absdiff != 0, ps / xp.where(absdiff != 0, absdiff, 1.0), 0.0),
        "Complexity": cplx / nvp,
        "Strength": xp.where(sum_s != 0, strength / xp.where(sum_s != 0, sum_s, 1.0), 0.0),
    }
