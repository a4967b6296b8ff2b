"""Optional compiled (numba) kernels of the NumPy engine: one loop over cells per family.

Each kernel walks every cell's own pixel list (flat indices into the padded label image, see
:mod:`.fast_backend`), builds that cell's small dense matrices and evaluates the pyradiomics
formulas of :mod:`._texture` in float64, in the same order of operations where it matters.
Kernels are ``nogil``: threads running different patches (or cell chunks) run in parallel.
Used automatically by the NumPy engine when numba imports (``AVAILABLE``); the pure NumPy
path stays the fallback (``NAPARI_UAM_NO_NUMBA=1`` forces it) and both are parity tested.

The compiled path also does its own preparation (:func:`pad_patch`, :func:`group_pixels`,
:func:`discretise`: padding, cell numbering, a counting sort of the pixels by cell, grey
levels) and its own GLSZM zones (:func:`glszm_cells`, a flood fill per cell). Entropies read
``log2`` of integer counts from a table (:func:`_log2_table`), and MCC comes from the two
extreme eigenvalues of a deflated matrix (:func:`_mcc_deflated`) rather than all of them.
"""

from __future__ import annotations

import math
import os

import numpy as np

try:  # pragma: no cover - exercised when numba is installed
    if os.environ.get("NAPARI_UAM_NO_NUMBA"):
        raise ImportError("disabled by NAPARI_UAM_NO_NUMBA")
    from numba import njit

    AVAILABLE = True
except ImportError:  # pragma: no cover
    AVAILABLE = False

    def njit(*args, **kwargs):  # noqa: D103 - identity decorator so the module still imports
        if args and callable(args[0]):
            return args[0]
        return lambda f: f


EPS = 2.220446049250313e-16
LN2 = math.log(2.0)
#: GLCM feature order of :func:`glcm_cells` (same names as :func:`._texture.glcm`).
GLCM_NAMES = (
    "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade", "ClusterTendency",
    "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance",
    "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "MCC", "Idmn", "Id", "Idn",
    "InverseVariance", "MaximumProbability", "SumAverage", "SumEntropy", "SumSquares",
)  # fmt: skip
GLRLM_NAMES = (
    "ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity",
    "GrayLevelNonUniformityNormalized", "RunLengthNonUniformity",
    "RunLengthNonUniformityNormalized", "RunPercentage", "GrayLevelVariance", "RunVariance",
    "RunEntropy", "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis",
    "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis",
    "LongRunLowGrayLevelEmphasis", "LongRunHighGrayLevelEmphasis",
)  # fmt: skip


@njit(cache=True, nogil=True, error_model="numpy")
def _tridiagonal(a, n, d, e):
    """Householder reduction of the symmetric (n, n) matrix ``a`` (overwritten) to tridiagonal
    form (Numerical Recipes' tred2, eigenvalues only): diagonal in ``d[:n]``, off-diagonal in
    ``e[:n - 1]`` (``e[n - 1] = 0``). Backward stable."""
    for i in range(n - 1, 0, -1):
        l = i - 1
        h = 0.0
        if l > 0:
            scale = 0.0
            for k in range(l + 1):
                scale += abs(a[i, k])
            if scale == 0.0:
                e[i] = a[i, l]
            else:
                rs = 1.0 / scale  # multiplications instead of divisions (rounding-level change)
                for k in range(l + 1):
                    a[i, k] *= rs
                    h += a[i, k] * a[i, k]
                f = a[i, l]
                g = -math.sqrt(h) if f >= 0.0 else math.sqrt(h)
                e[i] = scale * g
                h -= f * g
                a[i, l] = f - g
                f = 0.0
                rh = 1.0 / h
                for j in range(l + 1):
                    g = 0.0
                    for k in range(j + 1):
                        g += a[j, k] * a[i, k]
                    for k in range(j + 1, l + 1):
                        g += a[k, j] * a[i, k]
                    e[j] = g * rh
                    f += e[j] * a[i, j]
                hh = f / (h + h)
                for j in range(l + 1):
                    f = a[i, j]
                    g = e[j] - hh * f
                    e[j] = g
                    for k in range(j + 1):
                        a[j, k] -= f * e[k] + g * a[i, k]
        else:
            e[i] = a[i, l]
    for i in range(n):
        d[i] = a[i, i]
    for i in range(1, n):
        e[i - 1] = e[i]
    e[n - 1] = 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _second_abs_eig(a, n, d, e):
    """Second largest |eigenvalue| of the symmetric (n, n) matrix ``a`` (overwritten), n >= 2.

    Householder reduction to tridiagonal form, then the implicit QL iteration (eigenvalues
    only; Numerical Recipes' tred2/tqli), both backward stable: float64 accuracy on these
    small matrices, several times cheaper than a LAPACK call per matrix. ``d``, ``e``: (>= n,)
    work arrays. Returns -1.0 if QL does not converge (never seen; the caller then falls back
    to LAPACK on a rebuilt matrix).
    """
    _tridiagonal(a, n, d, e)
    for l in range(n):
        it = 0
        while True:
            m = l
            while m < n - 1:
                dd = abs(d[m]) + abs(d[m + 1])
                if abs(e[m]) <= 2.220446049250313e-16 * dd:
                    break
                m += 1
            if m == l:
                break
            it += 1
            if it > 60:
                return -1.0
            g = (d[l + 1] - d[l]) / (2.0 * e[l])
            r = math.sqrt(g * g + 1.0)
            g = d[m] - d[l] + e[l] / (g + (r if g >= 0.0 else -r))
            s = 1.0
            c = 1.0
            p = 0.0
            i = m - 1
            early = False
            while i >= l:
                f = s * e[i]
                b = c * e[i]
                r = math.sqrt(f * f + g * g)
                e[i + 1] = r
                if r == 0.0:
                    d[i + 1] -= p
                    e[m] = 0.0
                    early = True
                    break
                s = f / r
                c = g / r
                g = d[i + 1] - p
                r = (d[i] - g) * s + 2.0 * c * b
                p = s * r
                d[i + 1] = g + p
                g = c * r - b
                i -= 1
            if early:
                continue
            d[l] -= p
            e[l] = g
            e[m] = 0.0
    first = 0.0
    second = 0.0
    for i in range(n):
        v = abs(d[i])
        if v > first:
            second = first
            first = v
        elif v > second:
            second = v
    return second


@njit(cache=True, nogil=True, error_model="numpy")
def _laguerre_extreme(d, e, n, x):
    """The eigenvalue of the symmetric tridiagonal (d, e) nearest to ``x``, an upper (or
    lower) bound of all of them: Laguerre's iteration on the characteristic polynomial (three
    term recurrence with its first two derivatives). For a polynomial with only real roots it
    converges monotonically from outside the roots, cubically once close. NaN if it did not
    settle in 60 steps (the caller then falls back to QL)."""
    for _ in range(60):
        p0 = 1.0
        dp0 = 0.0
        ddp0 = 0.0
        p1 = d[0] - x
        dp1 = -1.0
        ddp1 = 0.0
        for k in range(1, n):
            t = d[k] - x
            b = e[k - 1] * e[k - 1]
            p2 = t * p1 - b * p0
            dp2 = t * dp1 - p1 - b * dp0
            ddp2 = t * ddp1 - 2.0 * dp1 - b * ddp0
            p0, dp0, ddp0 = p1, dp1, ddp1
            p1, dp1, ddp1 = p2, dp2, ddp2
        if p1 == 0.0:
            return x
        g = dp1 / p1
        h = g * g - ddp1 / p1
        disc = (n - 1) * (n * h - g * g)
        root = math.sqrt(disc) if disc > 0.0 else 0.0
        den = g + root if g >= 0.0 else g - root
        if den == 0.0:
            return np.nan
        step = n / den
        x -= step
        if abs(step) <= 1e-14:
            return x
    return np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def _mcc_deflated(m, n, v, d, e):
    """Second largest |eigenvalue| of M = D^-1/2 P D^-1/2 (n >= 2), ``m`` overwritten.

    M's largest eigenvalue is 1 with the unit eigenvector v = sqrt(px), so the answer is the
    spectral radius of B = M - v v^T (the 1 becomes 0, every other eigenvalue stays): after
    the tridiagonal reduction only B's two extreme eigenvalues are needed, from Laguerre's
    iteration started at the Gershgorin bounds, instead of all n from QL. NaN on failure.
    """
    for a in range(n):
        for b in range(n):
            m[a, b] -= v[a] * v[b]
    _tridiagonal(m, n, d, e)
    hi = -np.inf
    lo = np.inf
    for i in range(n):
        rad = abs(e[i]) + (abs(e[i - 1]) if i > 0 else 0.0)
        hi = max(hi, d[i] + rad)
        lo = min(lo, d[i] - rad)
    top = _laguerre_extreme(d, e, n, hi + 1e-3)
    bottom = _laguerre_extreme(d, e, n, lo - 1e-3)
    return max(abs(top), abs(bottom))


@njit(cache=True, nogil=True)
def pad_patch(img, lb, top, rgb, lab, off, width, base):
    """Copy one patch into the padded batch: packed colours and compact cell ids.

    Args:
        img: (H, W, 3) uint8; lb: (H, W) int labels >= 0, all < ``top``.
        rgb, lab: (B * Hp * Wp,) int32 outputs (zero background and border), written at
            ``off + (y + 1) * width + x + 1``.
        base: compact id of the batch before this patch's first cell.

    Returns:
        (n,) int64 the sorted label values present (cell ``base + k + 1`` is ``ids[k]``).
    """
    h, w = lb.shape
    rank = np.zeros(top, np.int64)
    for y in range(h):
        for x in range(w):
            rank[lb[y, x]] = 1
    rank[0] = 0
    n = 0
    for v in range(top):
        if rank[v]:
            n += 1
            rank[v] = n
    ids = np.empty(n, np.int64)
    for v in range(top):
        if rank[v]:
            ids[rank[v] - 1] = v
    for y in range(h):
        row = off + (y + 1) * width + 1
        for x in range(w):
            rgb[row + x] = (np.int32(img[y, x, 0]) << 16) | (np.int32(img[y, x, 1]) << 8) | np.int32(img[y, x, 2])
            v = lb[y, x]
            if v > 0:
                lab[row + x] = base + rank[v]
    return ids


@njit(cache=True, nogil=True, error_model="numpy")
def _mcc_fill(P, idx, r, kx, M):
    """M = D^-1/2 P D^-1/2 over the kx present levels ``idx[:kx]`` (row counts ``r``)."""
    for a in range(kx):
        ia = idx[a]
        for b in range(kx):
            c = P[ia, idx[b]]
            M[a, b] = c / math.sqrt(r[ia] * r[idx[b]]) if c != 0.0 else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def _mcc_iterative(P, idx, r, kx, total, M, vv, d, e):
    """MCC of one angle without LAPACK (also compiled for CUDA): second largest |eigenvalue|
    of M = D^-1/2 P D^-1/2 over the kx >= 2 present levels ``idx[:kx]`` (row counts ``r``,
    ``total`` pairs). Deflated Laguerre first; QL on all eigenvalues if Laguerre did not
    settle (a repeated extreme eigenvalue, e.g. MCC = 1 from two unconnected groups of
    levels). Returns -1.0 when QL did not converge either (the caller then asks LAPACK)."""
    for a in range(kx):
        vv[a] = math.sqrt(r[idx[a]] / total)
    _mcc_fill(P, idx, r, kx, M)
    mcc = _mcc_deflated(M, kx, vv, d, e)
    if mcc == mcc:  # not NaN
        return mcc
    _mcc_fill(P, idx, r, kx, M)
    mcc = _second_abs_eig(M, kx, d, e)
    return mcc if mcc >= 0.0 else -1.0


@njit(cache=True, nogil=True, error_model="numpy")
def _mcc_lapack(P, idx, r, kx, M):
    """The last resort of :func:`_mcc_iterative`: all eigenvalues from LAPACK."""
    _mcc_fill(P, idx, r, kx, M)
    ev = np.sort(np.abs(np.linalg.eigvalsh(M[:kx, :kx].copy())))
    return ev[kx - 2]


@njit(cache=True, nogil=True)
def group_pixels(lab, n_cells):
    """Flat indices of the pixels of cells 1..C of ``lab``, grouped by cell (counting sort).

    Args:
        lab: (P,) int compact cell ids of the padded image (0 = background).

    Returns:
        starts (C + 1,) int64 (cell c owns ``pix[starts[c]:starts[c + 1]]``), pix (N,) int64
        in raster order within each cell.
    """
    starts = np.zeros(n_cells + 1, np.int64)
    for p in range(lab.shape[0]):
        starts[lab[p]] += 1  # counts[0] = background, shifted out below
    run = 0
    for c in range(n_cells):
        k = starts[c + 1]
        starts[c] = run
        run += k
    starts[n_cells] = run
    pos = starts[:n_cells].copy()
    pix = np.empty(run, np.int64)
    for p in range(lab.shape[0]):
        c = lab[p]
        if c > 0:
            pix[pos[c - 1]] = p
            pos[c - 1] += 1
    return starts, pix


@njit(cache=True, nogil=True)
def discretise(starts, pix, rgb, lut, bin_width, n_img):
    """Channel value and grey level of every cell pixel (pyradiomics' fixed bin width anchored
    at the cell's minimum: level = (v - (vmin - vmin % w)) // w + 1).

    Returns:
        values (N,) int64, level (N,) int64, levimg (n_img,) int32 level of every padded pixel
        (0 outside cells), ng (C,) int64 largest level per cell, n_present (C,) int64 distinct
        levels per cell.
    """
    n = pix.shape[0]
    n_cells = starts.shape[0] - 1
    values = np.empty(n, np.int64)
    level = np.empty(n, np.int64)
    levimg = np.zeros(n_img, np.int32)
    ng = np.zeros(n_cells, np.int64)
    n_present = np.zeros(n_cells, np.int64)
    seen = np.zeros(256 // bin_width + 2, np.bool_)
    for c in range(n_cells):
        s0, s1 = starts[c], starts[c + 1]
        vmin = 255
        for k in range(s0, s1):
            v = np.int64(lut[rgb[pix[k]]])
            values[k] = v
            vmin = min(vmin, v)
        low = vmin - vmin % bin_width
        g = 0
        m = 0
        for k in range(s0, s1):
            lv = (values[k] - low) // bin_width + 1
            level[k] = lv
            levimg[pix[k]] = lv
            g = max(g, lv)
            if not seen[lv]:
                seen[lv] = True
                m += 1
        for lv in range(g + 1):
            seen[lv] = False
        ng[c] = g
        n_present[c] = m
    return values, level, levimg, ng, n_present


@njit(cache=True, nogil=True)
def _log2_table(n):
    """log2(k) for k = 0..n-1 (entry 0 unused): every GLCM probability is count / total."""
    t = np.zeros(n)
    for k in range(1, n):
        t[k] = math.log2(k)
    return t


@njit(cache=True, nogil=True, error_model="numpy")
def _glcm_angle_feats(P, ng, lg, r, psum, pdiff, idx, M, vv, d, e, out):
    """The 24 GLCM features of one symmetrical count matrix P (levels 0..ng) into ``out``.

    Works on integer counts c (p = c / T): every ``log2(p + eps)`` of pyradiomics is
    ``lg[c] - lg[T] + eps / (p ln 2)`` (the second-order term is below 1e-20 for any cell
    size), read from the table ``lg`` instead of calling log2. P is symmetrical, so the row
    and column marginals are the same array ``r`` (and ux = uy, sigx = sigy, HX = HY).
    ``r``, ``psum``, ``pdiff``, ``idx``, ``M``, ``vv``, ``d``, ``e`` are work arrays.

    Returns 0 when P is empty (angle without pairs), 1 when done, 2 when done except MCC
    (``out[15]`` < 0: the iterative eigensolver did not settle, LAPACK must)."""
    for i in range(ng + 1):
        r[i] = 0.0
        pdiff[i] = 0.0
    for k in range(2 * ng + 2):
        psum[k] = 0.0
    total = 0.0
    sx = 0.0
    auto = 0.0
    contrast = 0.0
    energy = 0.0
    cmax = 0.0
    for i in range(1, ng + 1):
        for j in range(1, ng + 1):
            c = P[i, j]
            if c == 0.0:
                continue
            total += c
            r[i] += c
            psum[i + j] += c
            pdiff[abs(i - j)] += c
            sx += c * i
            auto += c * (i * j)
            contrast += c * ((i - j) * (i - j))
            energy += c * c
            if c > cmax:
                cmax = c
    if total == 0.0:
        return 0
    lt = lg[int(total)]
    ux = sx / total  # exact for one grey level (then sumsq = 0, Correlation = 1)
    prom = 0.0
    shade = 0.0
    tend = 0.0
    sumsq = 0.0
    corm = 0.0
    hxy = 0.0
    guard = 0.0  # sum_ij c_ij / (r_i r_j): the eps term of HXY1
    nnz = 0
    for i in range(1, ng + 1):
        for j in range(1, ng + 1):
            c = P[i, j]
            if c == 0.0:
                continue
            nnz += 1
            p = c / total
            sij = i + j - 2.0 * ux
            s2 = sij * sij
            prom += p * s2 * s2
            shade += p * s2 * sij
            tend += p * s2
            di = i - ux
            dj = j - ux
            sumsq += p * di * di
            corm += p * di * dj
            hxy -= p * (lg[int(c)] - lt)
            guard += c / (r[i] * r[j])
    hxy -= nnz * (EPS / LN2)
    sig2 = sumsq  # sigx * sigy with sigx = sigy
    if sig2 == 0.0:
        corr = 1.0
    else:
        corr = corm / (sig2 + EPS)
    diffavg = 0.0
    dent = 0.0
    dvar = 0.0
    idm = 0.0
    idmn = 0.0
    id_ = 0.0
    idn = 0.0
    invvar = 0.0
    ngf = float(ng)
    for k in range(ng + 1):
        diffavg += k * (pdiff[k] / total)
    for k in range(ng + 1):
        if pdiff[k] == 0.0:
            continue
        q = pdiff[k] / total
        dent -= q * (lg[int(pdiff[k])] - lt) + EPS / LN2
        dvar += q * (k - diffavg) ** 2
        idm += q / (1.0 + k * k)
        idmn += q / (1.0 + k * k / (ngf * ngf))
        id_ += q / (1.0 + k)
        idn += q / (1.0 + k / ngf)
        if k > 0:
            invvar += q / (k * k)
    savg = 0.0
    sent = 0.0
    for k in range(2 * ng + 2):
        if psum[k] == 0.0:
            continue
        q = psum[k] / total
        savg += k * q
        sent -= q * (lg[int(psum[k])] - lt) + EPS / LN2
    lx = 0.0  # sum_i px_i log2 px_i
    kx = 0
    for i in range(1, ng + 1):
        if r[i] > 0.0:
            lx += (r[i] / total) * (lg[int(r[i])] - lt)
            kx += 1
    hx = -lx - kx * (EPS / LN2)
    if kx == 1:  # one grey level: HXY1 = HXY2 = HXY exactly (pyradiomics: IMC1 = IMC2 = 0)
        hxy1 = hxy
        hxy2 = hxy
    else:
        hxy1 = -2.0 * lx - (EPS / LN2) * total * guard
        hxy2 = -(2.0 * lx + kx * kx * (EPS / LN2))
    imc1 = (hxy - hxy1) / hx if hx != 0.0 else 0.0
    if hxy2 == hxy:
        imc2 = 0.0
    else:
        t = 1.0 - math.exp(-2.0 * (hxy2 - hxy))
        imc2 = math.sqrt(t) if t >= 0.0 else np.nan
    # MCC: second largest |eigenvalue| of M = D^-1/2 P D^-1/2 over the levels present in this
    # angle (the eigenvalues of pyradiomics' Q are their squares; absent levels add zeros).
    if kx < 2:
        mcc = 0.0
    else:
        m = 0
        for i in range(1, ng + 1):
            if r[i] > 0.0:
                idx[m] = i
                m += 1
        mcc = _mcc_iterative(P, idx, r, kx, total, M, vv, d, e)
    out[0] = auto / total
    out[1] = ux
    out[2] = prom
    out[3] = shade
    out[4] = tend
    out[5] = contrast / total
    out[6] = corr
    out[7] = diffavg
    out[8] = dent
    out[9] = dvar
    out[10] = energy / (total * total)
    out[11] = hxy
    out[12] = imc1
    out[13] = imc2
    out[14] = idm
    out[15] = mcc
    out[16] = idmn
    out[17] = id_
    out[18] = idn
    out[19] = invvar
    out[20] = cmax / total
    out[21] = savg
    out[22] = sent
    out[23] = sumsq
    return 2 if mcc < 0.0 else 1


@njit(cache=True, nogil=True, error_model="numpy")
def glcm_angle(own, s0, s1, g, off, pix, level, levimg, lab, lg, Pa, r, psum, pdiff, idx, M, vv, d, e, out):
    """The symmetrical count matrix of one angle (flat offset ``off``) of one cell into
    ``Pa`` (>= (g + 1, g + 1)) and its 24 features into ``out``; returns the status of
    :func:`_glcm_angle_feats`. Shared by the CPU loop and the CUDA kernel (one thread per
    cell and angle there)."""
    for i in range(g + 1):
        for j in range(g + 1):
            Pa[i, j] = 0.0
    for k in range(s0, s1):
        q = pix[k] + off
        if lab[q] == own:
            li = level[k]
            lj = levimg[q]
            Pa[li, lj] += 1.0
            Pa[lj, li] += 1.0
    return _glcm_angle_feats(Pa, g, lg, r, psum, pdiff, idx, M, vv, d, e, out)


@njit(cache=True, nogil=True, error_model="numpy")
def glcm_cell(
    c,
    own,
    s0,
    s1,
    g,
    n_present,
    pix,
    level,
    levimg,
    lab,
    offs,
    lg,
    P,
    r,
    psum,
    pdiff,
    idx,
    M,
    vv,
    d,
    e,
    acc,
    tmp,
    feats,
    valid,
):
    """GLCM features of one cell (pixels ``pix[s0:s1]``, levels 1..g) into ``feats[c]`` and
    its valid angles into ``valid[c]``: the mean of :func:`glcm_angle` over the non-empty
    angles (pyradiomics deletes empty ones).

    ``lab[q] == own`` tests membership; ``offs`` the 4 angles' flat offsets (as
    ``_texture.ANGLES``). P (4, >= g + 1, >= g + 1) and the rest are work arrays.

    Returns False when an angle's MCC needs LAPACK (``feats[c, 15]`` is then NaN).
    """
    for f in range(24):
        acc[f] = 0.0
    nv = 0
    settled = True
    for a in range(4):
        st = glcm_angle(
            own, s0, s1, g, offs[a], pix, level, levimg, lab, lg, P[a], r, psum, pdiff, idx, M, vv, d, e, tmp
        )
        valid[c, a] = st > 0
        if st > 0:
            nv += 1
            if st == 2:
                settled = False
            for f in range(24):
                acc[f] += tmp[f]
    for f in range(24):
        feats[c, f] = acc[f] / nv if nv > 0 else np.nan
    if n_present < 2:
        feats[c, 15] = 1.0
    elif not settled:
        feats[c, 15] = np.nan
    return settled or n_present < 2


@njit(cache=True, nogil=True, error_model="numpy")
def _glcm_mcc_lapack(g, P, r, idx, M):
    """MCC averaged over the non-empty angles of P (4, g + 1, g + 1), all by LAPACK."""
    acc = 0.0
    nv = 0
    for a in range(4):
        total = 0.0
        for i in range(1, g + 1):
            r[i] = 0.0
            for j in range(1, g + 1):
                r[i] += P[a, i, j]
            total += r[i]
        if total == 0.0:
            continue
        nv += 1
        kx = 0
        for i in range(1, g + 1):
            if r[i] > 0.0:
                idx[kx] = i
                kx += 1
        if kx >= 2:
            acc += _mcc_lapack(P[a], idx, r, kx, M)
    return acc / nv


@njit(cache=True, nogil=True, error_model="numpy")
def glcm_cells(starts, pix, level, levimg, lab, own0, width, ng, n_present, feats, valid):
    """GLCM features (C, 24) and valid angles (C, 4) of cells ``starts[c]..starts[c+1]``.

    ``lab[q] == own0 + c`` tests membership of cell c; angles (dy, dx) as ``_texture.ANGLES``.
    All work arrays are allocated once per call, sized by the largest cell.
    """
    offs = np.array([width + 1, width, width - 1, 1], np.int64)
    n_cells = starts.shape[0] - 1
    acc = np.empty(24)
    tmp = np.empty(24)
    gmax = 1
    nmax = 1
    for c in range(n_cells):
        gmax = max(gmax, ng[c])
        nmax = max(nmax, starts[c + 1] - starts[c])
    lg = _log2_table(2 * nmax + 2)  # every count and total of one angle is <= 2 * pixels
    P = np.zeros((4, gmax + 1, gmax + 1))
    r = np.empty(gmax + 1)
    psum = np.empty(2 * gmax + 2)
    pdiff = np.empty(gmax + 1)
    idx = np.empty(gmax + 1, np.int64)
    M = np.empty((gmax, gmax))
    vv = np.empty(gmax)
    d = np.empty(gmax)
    e = np.empty(gmax)
    for c in range(n_cells):
        g = ng[c]
        if not glcm_cell(
            c,
            own0 + c,
            starts[c],
            starts[c + 1],
            g,
            n_present[c],
            pix,
            level,
            levimg,
            lab,
            offs,
            lg,
            P,
            r,
            psum,
            pdiff,
            idx,
            M,
            vv,
            d,
            e,
            acc,
            tmp,
            feats,
            valid,
        ):
            feats[c, 15] = _glcm_mcc_lapack(g, P, r, idx, M)


@njit(cache=True, nogil=True)
def cell_box(s0, s1, pix, width):
    """(ymin, ymax, xmin, xmax) of the bounding box of the cell's pixels ``pix[s0:s1]``."""
    ymin = pix[s0] // width
    ymax = ymin
    xmin = pix[s0] % width
    xmax = xmin
    for k in range(s0, s1):
        y = pix[k] // width
        x = pix[k] % width
        ymin = min(ymin, y)
        ymax = max(ymax, y)
        xmin = min(xmin, x)
        xmax = max(xmax, x)
    return ymin, ymax, xmin, xmax


@njit(cache=True, nogil=True)
def cell_extent(s0, s1, pix, width):
    """Largest side of the cell's bounding box + 2: the run-length bound of :func:`glrlm_angle`."""
    ymin, ymax, xmin, xmax = cell_box(s0, s1, pix, width)
    return max(ymax - ymin, xmax - xmin) + 2


@njit(cache=True, nogil=True, error_model="numpy")
def glrlm_angle(own, s0, s1, g, rmax, off, pix, level, levimg, lab, lg, J, pr, pg, out):
    """The 16 GLRLM features of one angle (flat offset ``off``) of one cell into ``out``.

    ``rmax`` from :func:`cell_extent`; work arrays J (>= (g + 1) * rmax, read as (g + 1, rmax)),
    pr (>= rmax), pg (>= g + 1). Shared by the CPU loop and the CUDA kernel (one thread per
    cell and angle there).
    """
    for k in range((g + 1) * rmax):
        J[k] = 0.0
    for i in range(g + 1):
        pg[i] = 0.0
    for j in range(rmax):
        pr[j] = 0.0
    nr = 0.0
    npx = 0.0
    sre = 0.0
    lre = 0.0
    lgre = 0.0
    hgre = 0.0
    srlge = 0.0
    srhge = 0.0
    lrlge = 0.0
    lrhge = 0.0
    for k in range(s0, s1):
        p = pix[k]
        li = level[k]
        b = p - off
        if lab[b] == own and levimg[b] == li:
            continue  # not the start of a run
        n = 1
        q = p + off
        while lab[q] == own and levimg[q] == li:
            n += 1
            q += off
        J[li * rmax + n] += 1.0
        pg[li] += 1.0
        pr[n] += 1.0
        nr += 1.0
        npx += n
        i2 = float(li) * li
        j2 = float(n) * n
        sre += 1.0 / j2
        lre += j2
        lgre += 1.0 / i2
        hgre += i2
        srlge += (1.0 / i2) * (1.0 / j2)
        srhge += i2 * (1.0 / j2)
        lrlge += j2 * (1.0 / i2)
        lrhge += i2 * j2
    pg2 = 0.0
    ui = 0.0
    for i in range(g + 1):
        pg2 += pg[i] * pg[i]
        ui += pg[i] / nr * i
    pr2 = 0.0
    uj = 0.0
    for j in range(rmax):
        pr2 += pr[j] * pr[j]
        uj += pr[j] / nr * j
    glv = 0.0
    for i in range(g + 1):
        glv += pg[i] / nr * (i - ui) ** 2
    rv = 0.0
    for j in range(rmax):
        rv += pr[j] / nr * (j - uj) ** 2
    ent = 0.0  # -sum q log2(q + eps), q = count / nr: log2 q from the table (see GLCM)
    ln = lg[int(nr)]
    for i in range(1, g + 1):
        for j in range(1, rmax):
            x = J[i * rmax + j]
            if x > 0.0:
                q = x / nr
                ent -= q * (lg[int(x)] - ln) + EPS / LN2
    out[0] = sre / nr
    out[1] = lre / nr
    out[2] = pg2 / nr
    out[3] = pg2 / nr**2
    out[4] = pr2 / nr
    out[5] = pr2 / nr**2
    out[6] = nr / npx
    out[7] = glv
    out[8] = rv
    out[9] = ent
    out[10] = lgre / nr
    out[11] = hgre / nr
    out[12] = srlge / nr
    out[13] = srhge / nr
    out[14] = lrlge / nr
    out[15] = lrhge / nr


@njit(cache=True, nogil=True, error_model="numpy")
def glrlm_cell(c, own, s0, s1, g, rmax, pix, level, levimg, lab, offs, valid, lg, J, pr, pg, acc, tmp, feats):
    """GLRLM features of one cell into ``feats[c]``: the mean of :func:`glrlm_angle` over the
    cell's valid angles."""
    for f in range(16):
        acc[f] = 0.0
    nv = 0
    for a in range(4):
        if not valid[c, a]:
            continue
        nv += 1
        glrlm_angle(own, s0, s1, g, rmax, offs[a], pix, level, levimg, lab, lg, J, pr, pg, tmp)
        for f in range(16):
            acc[f] += tmp[f]
    for f in range(16):
        feats[c, f] = acc[f] / nv if nv > 0 else np.nan


@njit(cache=True, nogil=True, error_model="numpy")
def glrlm_cells(starts, pix, level, levimg, lab, own0, width, ng, valid, feats):
    """GLRLM features (C, 16) averaged over the valid angles of each cell."""
    offs = np.array([width + 1, width, width - 1, 1], np.int64)
    n_cells = starts.shape[0] - 1
    acc = np.empty(16)
    tmp = np.empty(16)
    nmax = 1
    gmax = 1
    for c in range(n_cells):
        nmax = max(nmax, starts[c + 1] - starts[c])
        gmax = max(gmax, ng[c])
    lg = _log2_table(nmax + 1)  # run counts and totals are <= the cell's pixels
    jbuf = np.zeros(64 * (gmax + 1))  # work arrays, grown when a cell needs more
    prbuf = np.zeros(64)
    pg = np.zeros(gmax + 1)
    for c in range(n_cells):
        g = ng[c]
        s0, s1 = starts[c], starts[c + 1]
        rmax = cell_extent(s0, s1, pix, width)
        if (g + 1) * rmax > jbuf.shape[0]:
            jbuf = np.zeros(2 * (g + 1) * rmax)
        if rmax > prbuf.shape[0]:
            prbuf = np.zeros(2 * rmax)
        glrlm_cell(
            c, own0 + c, s0, s1, g, rmax, pix, level, levimg, lab, offs, valid, lg, jbuf, prbuf, pg, acc, tmp, feats
        )


GLSZM_NAMES = (
    "SmallAreaEmphasis", "LargeAreaEmphasis", "GrayLevelNonUniformity",
    "GrayLevelNonUniformityNormalized", "SizeZoneNonUniformity", "SizeZoneNonUniformityNormalized",
    "ZonePercentage", "GrayLevelVariance", "ZoneVariance", "ZoneEntropy",
    "LowGrayLevelZoneEmphasis", "HighGrayLevelZoneEmphasis", "SmallAreaLowGrayLevelEmphasis",
    "SmallAreaHighGrayLevelEmphasis", "LargeAreaLowGrayLevelEmphasis",
    "LargeAreaHighGrayLevelEmphasis",
)  # fmt: skip


@njit(cache=True, nogil=True)
def _heapsort(a, n):
    """Sort ``a[:n]`` in place (no allocation, so it also compiles for CUDA)."""
    for start in range(n // 2 - 1, -1, -1):
        _sift(a, start, n)
    for end in range(n - 1, 0, -1):
        t = a[0]
        a[0] = a[end]
        a[end] = t
        _sift(a, 0, end)


@njit(cache=True, nogil=True)
def _sift(a, root, n):
    while True:
        child = 2 * root + 1
        if child >= n:
            return
        if child + 1 < n and a[child + 1] > a[child]:
            child += 1
        if a[root] >= a[child]:
            return
        t = a[root]
        a[root] = a[child]
        a[child] = t
        root = child


@njit(cache=True, nogil=True, error_model="numpy")
def glszm_cell(c, own, s0, s1, g, pix, level, levimg, lab, offs, seen, lg, stack, zs, zl, hist, pg, feats):
    """GLSZM features of one cell into ``feats[c]``, as :func:`._texture.glszm`.

    Zones (8-connected same-level pixels of the cell) come from a depth-first fill from each
    not yet visited pixel of the cell's pixel list; ``seen`` marks visited pixels of the
    padded image (a pixel belongs to one cell, so cells never share an entry). Work arrays:
    stack, zs, zl (int, >= the cell's pixels), hist (>= pixels + 1, zero on entry and exit),
    pg (>= g + 1). Shared by the CPU loop and the CUDA kernel.
    """
    nz = 0
    for t in range(s0, s1):
        p0 = pix[t]
        if seen[p0]:
            continue
        li = level[t]
        seen[p0] = True
        stack[0] = p0
        top = 1
        size = 0
        while top > 0:
            top -= 1
            u = stack[top]
            size += 1
            for o in range(8):
                q = u + offs[o]
                if not seen[q] and lab[q] == own and levimg[q] == li:
                    seen[q] = True
                    stack[top] = q
                    top += 1
        zs[nz] = size
        zl[nz] = li
        nz += 1
    n = float(nz)
    npx = float(s1 - s0)
    span = s1 - s0 + 1
    for i in range(g + 1):
        pg[i] = 0.0
    sae = 0.0
    lae = 0.0
    si = 0.0
    lgze = 0.0
    hgze = 0.0
    salge = 0.0
    sahge = 0.0
    lalge = 0.0
    lahge = 0.0
    for z in range(nz):
        sz = float(zs[z])
        i = float(zl[z])
        s2 = sz * sz
        i2 = i * i
        pg[zl[z]] += 1.0
        hist[zs[z]] += 1.0
        sae += 1.0 / s2
        lae += s2
        si += i
        lgze += 1.0 / i2
        hgze += i2
        salge += 1.0 / (i2 * s2)
        sahge += i2 / s2
        lalge += s2 / i2
        lahge += i2 * s2
    ps2 = 0.0
    for z in range(nz):
        h = hist[zs[z]]
        if h > 0.0:
            ps2 += h * h
            hist[zs[z]] = 0.0
    u_i = si / n
    u_s = npx / n
    gln = 0.0
    glv = 0.0
    for i in range(g + 1):
        gln += pg[i] * pg[i]
        glv += (pg[i] / n) * (i - u_i) ** 2
    zv = 0.0
    for z in range(nz):
        zv += (zs[z] - u_s) ** 2
    # Zones per (level, size): sort the zones' keys (stack is free now), count equal runs.
    for z in range(nz):
        stack[z] = zl[z] * span + zs[z]
    _heapsort(stack, nz)
    ent = 0.0  # -sum q log2(q + eps), q = count / nz: log2 q from the table (see GLCM)
    ln = lg[nz]
    z = 0
    while z < nz:
        z1 = z + 1
        while z1 < nz and stack[z1] == stack[z]:
            z1 += 1
        h = float(z1 - z)
        ent -= (h / n) * (lg[z1 - z] - ln) + EPS / LN2
        z = z1
    feats[c, 0] = sae / n
    feats[c, 1] = lae / n
    feats[c, 2] = gln / n
    feats[c, 3] = gln / n**2
    feats[c, 4] = ps2 / n
    feats[c, 5] = ps2 / n**2
    feats[c, 6] = n / npx
    feats[c, 7] = glv
    feats[c, 8] = zv / n
    feats[c, 9] = ent
    feats[c, 10] = lgze / n
    feats[c, 11] = hgze / n
    feats[c, 12] = salge / n
    feats[c, 13] = sahge / n
    feats[c, 14] = lalge / n
    feats[c, 15] = lahge / n


@njit(cache=True, nogil=True, error_model="numpy")
def glszm_cells(starts, pix, level, levimg, lab, own0, width, ng, feats):
    """GLSZM features (C, 16) of cells ``starts[c]..starts[c+1]`` (see :func:`glszm_cell`)."""
    n_cells = starts.shape[0] - 1
    offs = np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], np.int64)
    gmax = 1
    nmax = 1
    for c in range(n_cells):
        gmax = max(gmax, ng[c])
        nmax = max(nmax, starts[c + 1] - starts[c])
    seen = np.zeros(lab.shape[0], np.bool_)
    stack = np.empty(nmax, np.int64)
    zs = np.empty(nmax, np.int64)  # zone sizes of the cell
    zl = np.empty(nmax, np.int64)  # zone levels
    hist = np.zeros(nmax + 1)  # zones per size (reset after each cell)
    lg = _log2_table(nmax + 1)
    pg = np.zeros(gmax + 1)  # zones per level
    for c in range(n_cells):
        glszm_cell(
            c,
            own0 + c,
            starts[c],
            starts[c + 1],
            ng[c],
            pix,
            level,
            levimg,
            lab,
            offs,
            seen,
            lg,
            stack,
            zs,
            zl,
            hist,
            pg,
            feats,
        )


SHAPE_NAMES = (
    "MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity",
    "MaximumDiameter", "MajorAxisLength", "MinorAxisLength", "Elongation",
)  # fmt: skip
FIRSTORDER_NAMES = (
    "Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile", "Maximum",
    "Mean", "Median", "InterquartileRange", "Range", "MeanAbsoluteDeviation",
    "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "Kurtosis", "Variance",
    "Uniformity",
)  # fmt: skip
GLDM_NAMES = (
    "SmallDependenceEmphasis", "LargeDependenceEmphasis", "GrayLevelNonUniformity",
    "DependenceNonUniformity", "DependenceNonUniformityNormalized", "GrayLevelVariance",
    "DependenceVariance", "DependenceEntropy", "LowGrayLevelEmphasis", "HighGrayLevelEmphasis",
    "SmallDependenceLowGrayLevelEmphasis", "SmallDependenceHighGrayLevelEmphasis",
    "LargeDependenceLowGrayLevelEmphasis", "LargeDependenceHighGrayLevelEmphasis",
)  # fmt: skip
NGTDM_NAMES = ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength")


@njit(cache=True, nogil=True)
def shape_scratch(s0, s1, pix, width):
    """Integer work entries :func:`shape_cell` needs for one cell: 6 (hy + hx), with hy, hx
    the half-pixel grid's rows and columns over the cell's bounding box."""
    ymin, ymax, xmin, xmax = cell_box(s0, s1, pix, width)
    return 6 * ((2 * (ymax - ymin) + 3) + (2 * (xmax - xmin) + 3))


@njit(cache=True, nogil=True, error_model="numpy")
def shape_cell(c, own, s0, s1, pix, lab, width, sy, sx, area_lut, perim_lut, corners, dys, dxs, work, feats):
    """shape2D features of one cell into ``feats[c]``, as :func:`._shape.shape_features`.

    ``work``: int64 work array of at least :func:`shape_scratch` entries. Shared by the CPU
    loop and the CUDA kernel.
    """
    n = s1 - s0
    area = 0.0
    perim = 0.0
    for t in range(s0, s1):
        p = pix[t]
        for k in range(4):
            tl = p - corners[k]
            case = 0
            keep = True
            for j in range(4):
                if lab[tl + corners[j]] == own:
                    case |= 1 << j
                    if j < k:
                        keep = False
            if keep:
                area += area_lut[case]
                perim += perim_lut[case]
    area = area * (sy * sx)
    # moments (two pass)
    my = 0.0
    mx = 0.0
    for t in range(s0, s1):
        my += (pix[t] // width) * sy
        mx += (pix[t] % width) * sx
    my /= n
    mx /= n
    cyy = 0.0
    cxx = 0.0
    cxy = 0.0
    for t in range(s0, s1):
        dy = (pix[t] // width) * sy - my
        dx = (pix[t] % width) * sx - mx
        cyy += dy * dy
        cxx += dx * dx
        cxy += dy * dx
    cyy /= n
    cxx /= n
    cxy /= n
    half_tr = (cyy + cxx) / 2
    disc = math.sqrt(((cyy - cxx) / 2) ** 2 + cxy * cxy)
    major = half_tr + disc
    det = cyy * cxx - cxy * cxy
    minor = det / major if major > 0 else half_tr - disc
    if minor < 0 and minor > -1e-10:
        minor = 0.0
    # maximum diameter: boundary-edge midpoints (half-pixel units) extreme in their row and in
    # their column (the only possible hull vertices), then all pairs. First pass: the extremes;
    # second pass: the midpoints that are extreme both ways (at most 2 per row and column).
    ymin, ymax, xmin, xmax = cell_box(s0, s1, pix, width)
    hy = 2 * (ymax - ymin) + 3
    hx = 2 * (xmax - xmin) + 3
    rlo = work[:hy]
    rhi = work[hy : 2 * hy]
    clo = work[2 * hy : 2 * hy + hx]
    chi = work[2 * hy + hx : 2 * (hy + hx)]
    vy = work[2 * (hy + hx) : 4 * (hy + hx)]
    vx = work[4 * (hy + hx) : 6 * (hy + hx)]
    for a in range(hy):
        rlo[a] = 1 << 40
        rhi[a] = -1
    for b in range(hx):
        clo[b] = 1 << 40
        chi[b] = -1
    m = 0
    for collect in range(2):  # over the boundary-edge midpoints: 0 = extremes, 1 = keep extreme ones
        for t in range(s0, s1):
            p = pix[t]
            yy = 2 * (p // width - ymin) + 1
            xx = 2 * (p % width - xmin) + 1
            for d in range(4):
                if lab[p + dys[d] * width + dxs[d]] != own:
                    a = yy + dys[d]
                    b = xx + dxs[d]
                    if collect == 0:
                        rlo[a] = min(rlo[a], b)
                        rhi[a] = max(rhi[a], b)
                        clo[b] = min(clo[b], a)
                        chi[b] = max(chi[b], a)
                    elif (b == rlo[a] or b == rhi[a]) and (a == clo[b] or a == chi[b]):
                        vy[m] = a
                        vx[m] = b
                        m += 1
    d2 = 0.0
    for u in range(m):
        gy = vy[u] * (sy / 2)
        gx = vx[u] * (sx / 2)
        for v in range(u + 1, m):
            ey = gy - vy[v] * (sy / 2)
            ex = gx - vx[v] * (sx / 2)
            dd = ey * ey + ex * ex
            if dd > d2:
                d2 = dd
    feats[c, 0] = area
    feats[c, 1] = n * (sy * sx)
    feats[c, 2] = perim
    feats[c, 3] = perim / area
    feats[c, 4] = 2 * math.sqrt(math.pi * area) / perim
    feats[c, 5] = math.sqrt(d2)
    feats[c, 6] = math.sqrt(major) * 4
    feats[c, 7] = math.sqrt(minor) * 4
    feats[c, 8] = math.sqrt(minor / major)


@njit(cache=True, nogil=True, error_model="numpy")
def shape_cells(starts, pix, lab, own0, width, sy, sx, area_lut, perim_lut, feats):
    """shape2D features (C, 9), as :func:`._shape.shape_features` (see :func:`shape_cell`)."""
    n_cells = starts.shape[0] - 1
    corners = np.array([0, 1, width, width + 1], np.int64)
    dys = np.array([-1, 1, 0, 0], np.int64)
    dxs = np.array([0, 0, -1, 1], np.int64)
    work = np.empty(64, np.int64)  # grown when a cell needs more
    for c in range(n_cells):
        s0, s1 = starts[c], starts[c + 1]
        need = shape_scratch(s0, s1, pix, width)
        if need > work.shape[0]:
            work = np.empty(2 * need, np.int64)
        shape_cell(c, own0 + c, s0, s1, pix, lab, width, sy, sx, area_lut, perim_lut, corners, dys, dxs, work, feats)


@njit(cache=True, nogil=True, error_model="numpy")
def first_order_cell(c, s0, s1, values, level, n_levels, voxel_area, hist, lh, sv, pct, feats):
    """firstorder features of one cell into ``feats[c]``, as :func:`._texture.first_order`.

    Work arrays: hist (256 ints), lh (>= n_levels), sv (>= the cell's pixels), pct (5).
    Shared by the CPU loop and the CUDA kernel.
    """
    n_i = s1 - s0
    n = float(n_i)
    for v in range(256):
        hist[v] = 0
    for lv in range(n_levels):
        lh[lv] = 0.0
    sm = 0.0
    energy = 0.0
    for t in range(s0, s1):
        v = values[t]
        hist[v] += 1
        lh[level[t]] += 1.0
        fv = float(v)
        sm += fv
        energy += fv * fv
    k = 0
    for v in range(256):
        for _ in range(hist[v]):
            sv[k] = v
            k += 1
    mean = sm / n
    m2 = 0.0
    m3 = 0.0
    m4 = 0.0
    mad = 0.0
    for t in range(s0, s1):
        dv = values[t] - mean
        d2 = dv * dv
        m2 += d2
        m3 += d2 * dv
        m4 += d2 * d2
        mad += abs(dv)
    m2 /= n
    m3 /= n
    m4 /= n
    m2s = 1.0 if m2 == 0 else m2
    qs = (0.10, 0.90, 0.5, 0.75, 0.25)
    for qi in range(5):
        pos = qs[qi] * (n - 1)
        lo = math.floor(pos)
        tt = pos - lo
        hi = min(lo + 1, n - 1)
        a = sv[int(lo)]
        b = sv[int(hi)]
        d = b - a
        pct[qi] = b - d * (1 - tt) if tt >= 0.5 else a + d * tt
    p10 = pct[0]
    p90 = pct[1]
    n_in = 0.0
    s_in = 0.0
    for t in range(s0, s1):
        fv = float(values[t])
        if fv >= p10 and fv <= p90:
            n_in += 1.0
            s_in += fv
    mean_in = s_in / n_in
    rmad = 0.0
    for t in range(s0, s1):
        fv = float(values[t])
        if fv >= p10 and fv <= p90:
            rmad += abs(fv - mean_in)
    ent = 0.0
    uni = 0.0
    for lv in range(n_levels):
        p = lh[lv] / n
        ent -= p * math.log2(p + EPS)
        uni += p * p
    vmin = sv[0]
    vmax = sv[n_i - 1]
    feats[c, 0] = energy
    feats[c, 1] = energy * voxel_area
    feats[c, 2] = ent
    feats[c, 3] = vmin
    feats[c, 4] = p10
    feats[c, 5] = p90
    feats[c, 6] = vmax
    feats[c, 7] = mean
    feats[c, 8] = pct[2]
    feats[c, 9] = pct[3] - pct[4]
    feats[c, 10] = vmax - vmin
    feats[c, 11] = mad / n
    feats[c, 12] = rmad / n_in
    feats[c, 13] = math.sqrt(energy / n)
    feats[c, 14] = m3 / m2s**1.5
    feats[c, 15] = m4 / m2s**2.0
    feats[c, 16] = m2
    feats[c, 17] = uni


@njit(cache=True, nogil=True, error_model="numpy")
def first_order_cells(starts, values, level, n_levels, voxel_area, feats):
    """firstorder features (C, 18), as :func:`._texture.first_order` (see :func:`first_order_cell`)."""
    n_cells = starts.shape[0] - 1
    hist = np.zeros(256, np.int64)
    lh = np.zeros(n_levels)
    nmax = 1
    for c in range(n_cells):
        nmax = max(nmax, starts[c + 1] - starts[c])
    svb = np.empty(nmax)
    pct = np.empty(5)
    for c in range(n_cells):
        first_order_cell(c, starts[c], starts[c + 1], values, level, n_levels, voxel_area, hist, lh, svb, pct, feats)


@njit(cache=True, nogil=True, error_model="numpy")
def gldm_ngtdm_cell(c, own, s0, s1, g, pix, level, levimg, lab, offs, P, n_i, s_i, pd, pg, gldm, ngtdm):
    """gldm and ngtdm features of one cell into ``gldm[c]``, ``ngtdm[c]``, as :mod:`._texture`'s.

    Work arrays: P (>= (g + 1) * 9, read as (g + 1, 9)), n_i, s_i, pg (>= g + 1), pd (9).
    Shared by the CPU loop and the CUDA kernel.
    """
    nz = float(s1 - s0)
    for i in range(g + 1):
        for d in range(9):
            P[i * 9 + d] = 0.0
        n_i[i] = 0.0
        s_i[i] = 0.0
    for t in range(s0, s1):
        p = pix[t]
        li = level[t]
        same = 0
        cnt = 0
        tot = 0
        for o in range(8):
            q = p + offs[o]
            if lab[q] == own:
                nl = levimg[q]
                cnt += 1
                tot += nl
                if nl == li:
                    same += 1
        P[li * 9 + same] += 1.0
        n_i[li] += 1.0
        if cnt > 0:
            s_i[li] += abs(li - tot / cnt)
    # GLDM
    for d in range(9):
        pd[d] = 0.0
    for i in range(g + 1):
        pg[i] = 0.0
    for i in range(g + 1):
        for d in range(9):
            pd[d] += P[i * 9 + d]
            pg[i] += P[i * 9 + d]
    ui = 0.0
    for i in range(g + 1):
        ui += pg[i] / nz * i
    uj = 0.0
    for d in range(9):
        uj += pd[d] / nz * (d + 1)
    sde = 0.0
    lde = 0.0
    dn = 0.0
    dv = 0.0
    for d in range(9):
        dd = (d + 1.0) ** 2
        sde += pd[d] / dd
        lde += pd[d] * dd
        dn += pd[d] ** 2
        dv += pd[d] / nz * (d + 1 - uj) ** 2
    gln = 0.0
    glv = 0.0
    lgle = 0.0
    hgle = 0.0
    for i in range(g + 1):
        gln += pg[i] ** 2
        glv += pg[i] / nz * (i - ui) ** 2
        i2 = float(i) ** 2 if i > 0 else 1.0
        lgle += pg[i] / i2
        hgle += pg[i] * float(i) ** 2
    de = 0.0
    sdl = 0.0
    sdh = 0.0
    ldl = 0.0
    ldh = 0.0
    for i in range(g + 1):
        w = float(i) ** 2
        iw = 1.0 / (w if i > 0 else 1.0)
        for d in range(9):
            x = P[i * 9 + d]
            pn = x / nz
            de -= pn * math.log2(pn + EPS)
            dd = (d + 1.0) ** 2
            sdl += x * iw / dd
            sdh += x * w / dd
            ldl += x * iw * dd
            ldh += x * w * dd
    gldm[c, 0] = sde / nz
    gldm[c, 1] = lde / nz
    gldm[c, 2] = gln / nz
    gldm[c, 3] = dn / nz
    gldm[c, 4] = dn / nz**2
    gldm[c, 5] = glv
    gldm[c, 6] = dv
    gldm[c, 7] = de
    gldm[c, 8] = lgle / nz
    gldm[c, 9] = hgle / nz
    gldm[c, 10] = sdl / nz
    gldm[c, 11] = sdh / nz
    gldm[c, 12] = ldl / nz
    gldm[c, 13] = ldh / nz
    # NGTDM
    ngp = 0
    ps = 0.0
    sum_s = 0.0
    for i in range(g + 1):
        if n_i[i] > 0:
            ngp += 1
        ps += n_i[i] / nz * s_i[i]
        sum_s += s_i[i]
    contrast = 0.0
    absdiff = 0.0
    strength = 0.0
    cplx = 0.0
    for i in range(1, g + 1):
        if n_i[i] == 0:
            continue
        pi = n_i[i] / nz
        for j in range(1, g + 1):
            if n_i[j] == 0:
                continue
            pj = n_i[j] / nz
            d2 = float(i - j) ** 2
            contrast += pi * pj * d2
            absdiff += abs(i * pi - j * pj)
            strength += (pi + pj) * d2
            cplx += abs(i - j) * (pi * s_i[i] + pj * s_i[j]) / (pi + pj)
    div = ngp * (ngp - 1.0)
    ngtdm[c, 0] = 1.0 / ps if ps != 0 else 1e6
    ngtdm[c, 1] = contrast * sum_s / nz / div if div != 0 else 0.0
    ngtdm[c, 2] = ps / absdiff if absdiff != 0 else 0.0
    ngtdm[c, 3] = cplx / nz
    ngtdm[c, 4] = strength / sum_s if sum_s != 0 else 0.0


@njit(cache=True, nogil=True, error_model="numpy")
def gldm_ngtdm_cells(starts, pix, level, levimg, lab, own0, width, ng, gldm, ngtdm):
    """gldm (C, 14) and ngtdm (C, 5) features (see :func:`gldm_ngtdm_cell`)."""
    n_cells = starts.shape[0] - 1
    offs = np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], np.int64)
    gmax = 1
    for c in range(n_cells):
        gmax = max(gmax, ng[c])
    P = np.zeros((gmax + 1) * 9)  # work arrays, zeroed per cell
    n_i = np.zeros(gmax + 1)
    s_i = np.zeros(gmax + 1)
    pd = np.zeros(9)
    pg = np.zeros(gmax + 1)
    for c in range(n_cells):
        gldm_ngtdm_cell(
            c,
            own0 + c,
            starts[c],
            starts[c + 1],
            ng[c],
            pix,
            level,
            levimg,
            lab,
            offs,
            P,
            n_i,
            s_i,
            pd,
            pg,
            gldm,
            ngtdm,
        )
