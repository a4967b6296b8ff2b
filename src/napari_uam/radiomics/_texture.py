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
#: Padded matrix sides of the MCC size classes (besides the closed form for 2-3 levels and a
#: last class up to the largest matrix): one batched call per class (see :func:`_mcc`).
_MCC_CLASSES = (8, 16)
#: Squarings of B^2 in the torch MCC (see :func:`_top_abs_eig_torch`); a multiple of 4.
_MCC_SQUARINGS = 24
#: Scratch bins that masked-out entries of a scatter are spread over (atomics on one address
#: serialise on the GPU).
_SPREAD = 4096


def _angle_mean(xp, values, valid):
    """Mean over valid angles of (C, A) values; NaN where a cell has no valid angle."""
    n = xp.f(valid).sum(axis=1)
    total = xp.where(valid, values, 0.0).sum(axis=1)
    return total / xp.where(n > 0, n, float("nan"))


def _angle_means(xp, feats, valid):
    """:func:`_angle_mean` of every (C * A,) array of ``feats`` at once (one stacked pass)."""
    C, A = valid.shape
    names = list(feats)
    v = xp.stack([feats[k] for k in names], axis=0).reshape(len(names), C, A)
    n = xp.f(valid).sum(axis=1)
    total = xp.where(valid[None], v, 0.0).sum(axis=2)
    mean = total / xp.where(n > 0, n, float("nan"))[None]
    return {k: mean[f] for f, k in enumerate(names)}


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

    n_i = xp.i(xp.bincount(cell, minlength=C))
    start = xp.cumsum(n_i, axis=0) - n_i
    # Each cell's values, ascending (cells are contiguous and in order): one sort of the
    # (cell, value) keys, with no output of data-dependent size.
    sv = xp.f(xp.sort(cell * 256 + values) % 256)
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
        list over ANGLES of (src, nbr, same): src (M,) indices into ``pix``, nbr (M,) flat
        indices, same None; or on torch src None (every pixel), nbr (N,), same (N,) the mask of
        the pairs inside the cell.
    """
    own = cell + 1
    out = []
    for dy, dx in ANGLES:
        nbr = pix + dy * width + dx
        same = lab[nbr] == own
        if xp.name == "numpy":
            src = xp.nonzero(same)
            out.append((src, nbr[src], None))
        else:  # torch: every pixel, with a mask (no data-dependent size, no host sync)
            out.append((None, nbr, same))
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
    segment sum over the entries of one (cell, angle). Only MCC needs dense matrices, padded
    into a fixed few size classes (:func:`_mcc`).

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
    n_bins = int(end[-1])
    for a, (src, nbr, same) in enumerate(pairs):
        c = cell if src is None else cell[src]
        s = stride[c]
        base = off[c] + a * s * s
        li, lj = (level if src is None else level[src]), levimg[nbr]
        k1, k2 = base + li * s + lj, base + lj * s + li  # symmetrical GLCM
        if same is not None:  # pairs leaving the cell go to one extra bin, dropped below
            # (spread over _SPREAD bins: one bin would serialise the GPU's atomic adds)
            dump = n_bins + xp.arange(same.shape[0]) % _SPREAD
            k1, k2 = xp.where(same, k1, dump), xp.where(same, k2, dump)
        keys += [k1, k2]
    counts = xp.bincount(xp.concat(keys), minlength=n_bins + _SPREAD)[:n_bins]
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
    # Segment sums in two scatters (those needing the means after those giving them).
    ux, uy, hxy, autocorr, contrast, energy = xp.segment_sums(
        seg, [p * fi, p * fj, p * xp.log2(p + EPS), p * fi * fj, p * (fi - fj) ** 2, p * p], CA
    )
    hxy = -hxy
    px = xp.bincount(seg * L + i, weights=p, minlength=CA * L)  # (CA * L,) marginals
    py = xp.bincount(seg * L + j, weights=p, minlength=CA * L)
    g = xp.f(xp.arange(L))
    kd = g
    ks = xp.f(xp.arange(2 * L))
    p_sum = xp.bincount(seg * (2 * L) + i + j, weights=p, minlength=CA * 2 * L).reshape(CA, 2 * L)
    p_diff = xp.bincount(seg * L + xp.abs(i - j), weights=p, minlength=CA * L).reshape(CA, L)
    ngf = xp.f(ng)[xp.arange(CA) // A][:, None]

    sum_ij = fi + fj - (ux + uy)[seg]
    sum2 = sum_ij * sum_ij
    di = fi - ux[seg]
    dj = fj - uy[seg]
    sumsq, sigy2, corm, prominence, shade, tendency, hxy1 = xp.segment_sums(
        seg,
        [
            p * di * di,
            p * dj * dj,
            p * di * dj,
            p * sum2 * sum2,
            p * sum2 * sum_ij,
            p * sum2,
            p * xp.log2(px[seg * L + i] * py[seg * L + j] + EPS),
        ],
        CA,
    )
    hxy1 = -hxy1
    sigx = sumsq**0.5
    sigy = sigy2**0.5
    corr = xp.where(sigx * sigy == 0, 1.0, corm / (sigx * sigy + EPS))
    diffavg = (kd * p_diff).sum(axis=1)
    pxr, pyr = px.reshape(CA, L), py.reshape(CA, L)
    hx = -(pxr * xp.log2(pxr + EPS)).sum(axis=1)
    hy = -(pyr * xp.log2(pyr + EPS)).sum(axis=1)
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
    pxi = px[seg * L + i]
    mval = p / xp.sqrt(pxi * px[seg * L + j])
    if rank is None:
        mcc = _mcc(xp, c, a, i - 1, j - 1, mval, xp.sqrt(pxi), ng, C)
    else:
        mcc = _mcc(xp, c, a, rank[c * L + i], rank[c * L + j], mval, xp.sqrt(pxi), xp.i(n_present), C)
    feats = {
        "Autocorrelation": autocorr,
        "JointAverage": ux,
        "ClusterProminence": prominence,
        "ClusterShade": shade,
        "ClusterTendency": tendency,
        "Contrast": contrast,
        "Correlation": corr,
        "DifferenceAverage": diffavg,
        "DifferenceEntropy": -(p_diff * xp.log2(p_diff + EPS)).sum(axis=1),
        "DifferenceVariance": (p_diff * (kd - diffavg[:, None]) ** 2).sum(axis=1),
        "JointEnergy": energy,
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
    out = _angle_means(xp, feats, valid)
    # pyradiomics returns MCC = 1 for a single grey level even when no angle holds a pair.
    out["MCC"] = xp.where(n_present < 2, 1.0, out["MCC"])
    return out, valid


def _mcc(xp, c, a, ri, rj, mval, vval, n, C):
    """Per (cell, angle) MCC: the second largest |eigenvalue| of M = D^-1/2 P D^-1/2.

    Q = D^-1 P D^-1 P^T (pyradiomics) is similar to M^2 with M symmetric, so the eigenvalues of
    Q are the squared eigenvalues of M. M has the eigenvalue 1 with the unit eigenvector
    v = sqrt(px), so MCC is the largest |eigenvalue| of the deflated B = M - v v^T (its other
    eigenvalues are M's, v's becomes 0). Absent levels only add zero rows (eigenvalue 0), so
    each cell's matrix is indexed by the rank of its levels (``ri``, ``rj`` in 0..n-1; ``n``
    (C,) the matrix size; ``mval`` the entries of M, ``vval`` sqrt(px) of each entry's row).

    No loop over matrix sizes: sizes 2 and 3 have closed forms (B has rank <= 2: its
    eigenvalues follow from tr B and ||B||_F^2), larger ones are zero-padded into a fixed
    few size classes (8, 16, the largest matrix; padding adds eigenvalues 0), all filled with
    one scatter, and each class is one batched call: LAPACK's symmetric eigensolver on NumPy,
    repeated squaring on torch (:func:`_top_abs_eig_torch`: no eigensolver, no host sync).
    """
    A = len(ANGLES)
    out = xp.zeros(C * A)
    n_h = xp.to_numpy(n).astype(np.int64)
    # Size class of every cell: 0 none (n < 2), 1 closed form (n = 2, 3), 2.. padded classes.
    caps = [3] + [s for s in _MCC_CLASSES if s < int(n_h.max(initial=0))] + [max(int(n_h.max(initial=0)), 4)]
    caps = sorted(set(caps))
    cls = np.where(n_h < 2, -1, np.searchsorted(caps, n_h))
    order_c = np.argsort(cls, kind="stable")
    cls_sorted = cls[order_c]
    sizes = np.array([3] + caps[1:], dtype=np.int64)  # padded side per class (class 0 dense 3x3)
    side = np.where(cls >= 0, sizes[np.maximum(cls, 0)], 0)
    mat_el = A * side * side  # buffer elements of a cell's A matrices
    base = np.zeros(len(caps) + 1, np.int64)
    off = np.zeros(len(n_h), np.int64)
    for k in range(len(caps)):  # fixed few classes, host-side bookkeeping only
        cells = order_c[cls_sorted == k]
        off[cells] = base[k] + np.concatenate([[0], np.cumsum(mat_el[cells])[:-1]]) if cells.size else 0
        base[k + 1] = base[k] + int(mat_el[cells].sum())
    side_d = xp.asarray(side, dtype="i64")
    off_d = xp.asarray(off, dtype="i64")
    s = side_d[c]
    keep = n[c] >= 2
    idx = off_d[c] + (a * s + ri) * s + rj
    buf = xp.zeros(int(base[-1]) + 1)
    vbuf = xp.zeros(int(base[-1]) + 1)
    dump = int(base[-1])  # entries of cells without an MCC matrix land here
    idx = xp.where(keep, idx, dump)
    buf[idx] = mval
    vbuf[idx] = vval
    for k in range(len(caps)):
        cells = order_c[cls_sorted == k]
        if cells.size == 0:
            continue
        sk = int(sizes[k])
        nm = cells.size * A
        m = buf[base[k] : base[k + 1]].reshape(nm, sk, sk)
        vr = vbuf[base[k] : base[k + 1]].reshape(nm, sk, sk)
        # vbuf holds v_i at every stored (i, j); row i's v is the max over j (all equal or 0).
        v = vr.max(axis=2) if xp.name == "numpy" else vr.amax(dim=2)
        b = m - v[:, :, None] * v[:, None, :]
        if k == 0:  # rank <= 2: eigenvalues mu1, mu2 from t = mu1 + mu2, f = mu1^2 + mu2^2
            t = b[:, 0, 0] + b[:, 1, 1] + b[:, 2, 2]
            f = (b * b).sum(axis=(1, 2))
            d = 2 * f - t * t
            ev = (xp.abs(t) + xp.sqrt(xp.where(d > 0, d, 0.0))) / 2
        elif xp.name == "numpy":
            ev = xp.abs(xp.eigvalsh(b)).max(axis=1)
        else:
            ev = _top_abs_eig_torch(xp, b)
        dst = (xp.asarray(cells, dtype="i64")[:, None] * A + xp.arange(A)[None, :]).reshape(-1)
        out[dst] = ev
    return out


def _top_abs_eig_torch(xp, b):
    """Largest |eigenvalue| of each symmetric (n, s, s) matrix, by repeated squaring in tensor
    form (a fixed number of batched matmuls: no eigensolver, no host sync).

    A = B^2 is positive semi-definite with top eigenvalue lambda^2. S = A^(2^24), normalised by
    its trace every 2^4 powers, is numerically rank one along the top eigenvector (plus any
    eigenvalue within a factor 1 - 3e-8 of it); the Rayleigh quotient of A at S's column of
    largest diagonal then gives lambda^2, too low by at most ~ s / (2^25 e) relative in the worst
    case (near-equal top eigenvalues with adversarial weights), ~1e-7 for s = 33; repeated
    eigenvalues (MCC = 1) are exact. Float64 throughout.
    """
    torch = xp.torch
    a = b @ b
    s = a
    for _ in range(_MCC_SQUARINGS // 4):
        s = torch.linalg.matrix_power(s, 16)
        tr = s.diagonal(dim1=1, dim2=2).sum(dim=1)  # >= 0; a zero matrix stays zero below
        s = s / (tr + 1e-300)[:, None, None]
    j = s.diagonal(dim1=1, dim2=2).argmax(dim=1)
    x = torch.take_along_dim(s, j[:, None, None], dim=2)  # (n, s, 1) the column j
    xx = (x * x).sum(dim=(1, 2))
    rq = (x * (a @ x)).sum(dim=(1, 2)) / torch.where(xx > 0, xx, 1.0)
    return torch.sqrt(torch.clamp(rq, min=0.0))


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
    segs, levels, lengths = [], [], []
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
        segs.append(rc[keep] * A + a)
        levels.append(k[keep] % n_keys)
        lengths.append(length[keep])
        del k, length, keep
    # The features of all (cell, angle) pairs at once: one pass of segment sums, not four.
    per = _glrlm_angle(xp, xp.concat(segs), xp.concat(levels), xp.concat(lengths), C * A, L, g)
    return _angle_means(xp, per, valid)


def _glrlm_angle(xp, rc, rl, rj, C, L, g):
    """GLRLM features (C,) of C segments (one per (cell, angle)) from their runs
    (segment, level, length)."""
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


def glrlm_pixels(xp, lab, pix, cell, level, levimg, width, n_cells, n_levels, valid, rmax):
    """:func:`glrlm` from the pixel list instead of whole-image line scans (the torch path).

    Per direction, a pixel starts a run when the pixel before it along the direction is not of
    the same cell and level, and ends one when the pixel after it is not. With the pixels
    ordered by (direction, cell, line of that direction, position on the line) (one argsort of
    the 4 directions stacked), starts and ends alternate, so the k-th start pairs with the k-th
    end: run lengths come from two cumulative sums and two scatters, with every array sized by
    4x the pixel count (no data-dependent sizes, no host sync). Equal (segment, length) and
    (segment, level, length) runs are counted by sorting (see :func:`_group_counts`).

    Args:
        lab: (P,) padded label image, cells 1..n_cells; pix, cell, level: (N,) pixel list.
        levimg: (P,) grey level of every padded pixel.
        valid: (C, A) angles with at least one pair (from :func:`glcm`).
        rmax: an upper bound of run lengths (the padded patch side).
    """
    L, A, C = n_levels, len(ANGLES), n_cells
    n = pix.shape[0]
    own = cell + 1
    ymax = lab.shape[0] // width + 1
    span = max(width, ymax)
    y, x = pix // width, pix % width
    dy = xp.asarray([d[0] for d in ANGLES], dtype="i64")[:, None]
    dx = xp.asarray([d[1] for d in ANGLES], dtype="i64")[:, None]
    step = dy * width + dx  # (A, 1)
    prev, nxt = pix[None, :] - step, pix[None, :] + step  # (A, N)
    st = ~((lab[prev] == own[None, :]) & (levimg[prev] == level[None, :]))
    en = ~((lab[nxt] == own[None, :]) & (levimg[nxt] == level[None, :]))
    # Line and position along it: rows for 0 degrees, columns for 90, x -/+ y for the diagonals.
    line = xp.where(dy == 0, y[None, :], xp.where(dx == 0, x[None, :], x[None, :] - dx * y[None, :] + ymax))
    pos = xp.where(dy == 0, x[None, :], y[None, :])
    a_idx = xp.arange(A)[:, None]
    key = ((a_idx * C + cell[None, :]) * (width + 2 * ymax) + line) * span + pos
    perm = xp.argsort(key.reshape(-1))
    st, en = st.reshape(-1)[perm], en.reshape(-1)[perm]
    m = A * n
    q = xp.arange(m)
    # sq[k], eq[k]: ordered positions of the k-th start and end (others write to scratch slots)
    sq = xp.zeros(m + _SPREAD, dtype="i64")
    eq = xp.zeros(m + _SPREAD, dtype="i64")
    sq[xp.where(st, xp.cumsum(xp.i(st), axis=0) - 1, m + q % _SPREAD)] = q
    eq[xp.where(en, xp.cumsum(xp.i(en), axis=0) - 1, m + q % _SPREAD)] = q
    sq, eq = sq[:m], eq[:m]
    first = perm[sq]  # index into the stacked (A, N) list of each run's first pixel
    ang, px_i = first // n, first % n
    rc = cell[px_i]
    ok = (q < xp.i(st).sum()) & valid.reshape(-1)[rc * A + ang]  # runs past the count: empty slots
    # Empty slots (weight 0) are spread over the segments: all on one would serialise atomics.
    return _glrlm_runs(
        xp,
        xp.where(ok, rc * A + ang, q % (C * A)),
        xp.where(ok, level[px_i], 1),
        xp.where(ok, eq - sq + 1, 1),
        ok,
        C,
        L,
        rmax,
        valid,
    )


def _group_counts(xp, key, ok):
    """Counts of equal ``key`` among the ``ok`` entries, by sorting, with no data-dependent size.

    Returns (sorted keys, count of each entry's group, mask of the first entry of every group
    of ok entries); entries that are not ok sort last, under a sentinel.
    """
    big = 1 << 62
    sk = xp.sort(xp.where(ok, key, big))
    m = sk.shape[0]
    first = sk == sk
    first[1:] = sk[1:] != sk[:-1]
    gid = xp.cumsum(xp.i(first), axis=0) - 1
    cnt = xp.bincount(gid, minlength=m)[gid]
    return sk, cnt, first & (sk != big)


def _glrlm_runs(xp, seg, rl, rj, ok, C, L, rmax, valid):
    """GLRLM features averaged over valid angles, from runs (segment = cell * A + angle,
    level, length) of which only the ``ok`` ones count (the others hold level 1, length 1)."""
    A = len(ANGLES)
    CA = C * A
    w = xp.f(ok)
    i, j = xp.f(rl), xp.f(rj)
    i2, j2 = i * i, j * j
    inv_i2, inv_j2 = 1 / i2, 1 / j2
    # Every per-run sum in one scatter.
    nr, n_pix, sre, lre, lgl, hgl, srlgl, srhgl, lrlgl, lrhgl = xp.segment_sums(
        seg,
        [
            w,
            j * w,
            inv_j2 * w,
            j2 * w,
            inv_i2 * w,
            i2 * w,
            inv_i2 * inv_j2 * w,
            i2 * inv_j2 * w,
            j2 * inv_i2 * w,
            i2 * j2 * w,
        ],
        CA,
    )
    nrs = xp.where(nr > 0, nr, float("nan"))
    g = xp.f(xp.arange(L))
    pg = xp.bincount(seg * L + rl, weights=w, minlength=CA * L).reshape(CA, L)
    pgn = pg / nrs[:, None]
    u_i = (pgn * g).sum(axis=1)
    u_j = n_pix / nrs
    pg2 = (pg * pg).sum(axis=1)
    # sum_j pr(j)^2: counts of equal (segment, length)
    sk, cnt, fst = _group_counts(xp, seg * rmax + rj, ok)
    pr2 = xp.bincount(
        xp.where(fst, sk // rmax, xp.arange(sk.shape[0]) % CA), weights=xp.where(fst, xp.f(cnt) ** 2, 0.0), minlength=CA
    )
    # RunEntropy over the (level, length) distribution of each segment
    sk, cnt, fst = _group_counts(xp, (seg * L + rl) * rmax + rj, ok)
    sg = xp.where(fst, sk // (L * rmax), xp.arange(sk.shape[0]) % CA)
    qq = xp.f(cnt) / nrs[sg]
    ent = xp.bincount(sg, weights=xp.where(fst, -qq * xp.log2(qq + EPS), 0.0), minlength=CA)
    dj = j - u_j[seg]
    feats = {
        "ShortRunEmphasis": sre / nrs,
        "LongRunEmphasis": lre / nrs,
        "GrayLevelNonUniformity": pg2 / nrs,
        "GrayLevelNonUniformityNormalized": pg2 / nrs**2,
        "RunLengthNonUniformity": pr2 / nrs,
        "RunLengthNonUniformityNormalized": pr2 / nrs**2,
        "RunPercentage": nrs / n_pix,
        "GrayLevelVariance": (pgn * (g - u_i[:, None]) ** 2).sum(axis=1),
        "RunVariance": xp.bincount(seg, weights=xp.where(ok, dj * dj, 0.0), minlength=CA) / nrs,
        "RunEntropy": ent,
        "LowGrayLevelRunEmphasis": lgl / nrs,
        "HighGrayLevelRunEmphasis": hgl / nrs,
        "ShortRunLowGrayLevelEmphasis": srlgl / nrs,
        "ShortRunHighGrayLevelEmphasis": srhgl / nrs,
        "LongRunLowGrayLevelEmphasis": lrlgl / nrs,
        "LongRunHighGrayLevelEmphasis": lrhgl / nrs,
    }
    return _angle_means(xp, feats, valid)


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


def glszm_roots(xp, root, cell, level, n_cells, n_levels):
    """:func:`glszm` with zones given by a root pixel index (``root`` (N,) in 0..N-1, from the
    torch union-find) instead of consecutive ids: every table is sized by the pixel count,
    zones are the slots of non-zero size, and equal sizes are counted by sorting, so nothing
    is read back to the host."""
    L, C = n_levels, n_cells
    n = root.shape[0]
    size = xp.bincount(root, minlength=n)
    ok = size > 0  # slot k is a zone (rooted at pixel k), whose cell and level are pixel k's
    w = xp.f(ok)
    s = xp.where(ok, size, 1.0)
    i = xp.f(level)
    zc = cell
    s2, i2 = s * s, i * i
    nz, n_pix, sum_i, sae, lae, lgl, hgl, salgl, sahgl, lalgl, lahgl = xp.segment_sums(
        zc, [w, s * w, i * w, w / s2, s2 * w, w / i2, i2 * w, w / (i2 * s2), i2 / s2 * w, s2 / i2 * w, i2 * s2 * w], C
    )
    nz1 = xp.where(nz == 0, 1.0, nz)
    pg = xp.bincount(zc * L + level, weights=w, minlength=C * L).reshape(C, L)
    si = xp.i(s)
    smax = n + 1
    sk, cnt, fst = _group_counts(xp, zc * smax + si, ok)
    ps2 = xp.bincount(
        xp.where(fst, sk // smax, xp.arange(sk.shape[0]) % C), weights=xp.where(fst, xp.f(cnt) ** 2, 0.0), minlength=C
    )
    sk, cnt, fst = _group_counts(xp, (zc * L + level) * smax + si, ok)
    sg = xp.where(fst, sk // (L * smax), xp.arange(sk.shape[0]) % C)
    q = xp.f(cnt) / nz1[sg]
    ent = xp.bincount(sg, weights=xp.where(fst, -q * xp.log2(q + EPS), 0.0), minlength=C)
    g = xp.f(xp.arange(L))
    u_i = sum_i / nz1
    u_s = n_pix / nz1
    ds = s - u_s[zc]
    return {
        "SmallAreaEmphasis": sae / nz1,
        "LargeAreaEmphasis": lae / nz1,
        "GrayLevelNonUniformity": (pg**2).sum(axis=1) / nz1,
        "GrayLevelNonUniformityNormalized": (pg**2).sum(axis=1) / nz1**2,
        "SizeZoneNonUniformity": ps2 / nz1,
        "SizeZoneNonUniformityNormalized": ps2 / nz1**2,
        "ZonePercentage": nz1 / xp.where(n_pix == 0, 1.0, n_pix),
        "GrayLevelVariance": ((pg / nz1[:, None]) * (g - u_i[:, None]) ** 2).sum(axis=1),
        "ZoneVariance": xp.bincount(zc, weights=ds * ds * w, minlength=C) / nz1,
        "ZoneEntropy": ent,
        "LowGrayLevelZoneEmphasis": lgl / nz1,
        "HighGrayLevelZoneEmphasis": hgl / nz1,
        "SmallAreaLowGrayLevelEmphasis": salgl / nz1,
        "SmallAreaHighGrayLevelEmphasis": sahgl / nz1,
        "LargeAreaLowGrayLevelEmphasis": lalgl / nz1,
        "LargeAreaHighGrayLevelEmphasis": lahgl / nz1,
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
    if xp.name == "numpy":
        e = xp.nonzero(present.reshape(-1))
        ec = e // L
        e1, e2 = _segment_pairs(xp, ec, C)
        pf_, sf_ = p.reshape(-1), s_i.reshape(-1)
        a1, a2 = e[e1], e[e2]
        num = xp.abs(xp.f(a1 % L - a2 % L)) * (pf_[a1] * sf_[a1] + pf_[a2] * sf_[a2])
        cplx = xp.bincount(ec[e1], weights=num / (pf_[a1] + pf_[a2]), minlength=C)
    else:  # dense (C, L, L) pairs on torch: no data-dependent sizes (L is the schema's few bins)
        pis = p * s_i
        both = present[:, :, None] & present[:, None, :]
        den = p[:, :, None] + p[:, None, :]
        dist = xp.abs(g[0][:, None] - g[0][None, :])[None]
        num = dist * (pis[:, :, None] + pis[:, None, :]) / xp.where(both, den, 1.0)
        cplx = xp.where(both, num, 0.0).sum(axis=(1, 2))
    return {
        "Coarseness": xp.where(ps != 0, 1 / xp.where(ps != 0, ps, 1.0), 1e6),
        "Contrast": xp.where(div != 0, contrast / xp.where(div != 0, div, 1.0), 0.0),
        "Busyness": xp.where(absdiff != 0, ps / xp.where(absdiff != 0, absdiff, 1.0), 0.0),
        "Complexity": cplx / nvp,
        "Strength": xp.where(sum_s != 0, strength / xp.where(sum_s != 0, sum_s, 1.0), 0.0),
    }
