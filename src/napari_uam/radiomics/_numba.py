"""Optional compiled (numba) kernels of the NumPy engine: one loop over cells per family.

Each kernel walks every cell's own pixel list (flat indices into the padded label image, see
:mod:`.fast_backend`), builds that cell's small dense matrices and evaluates the pyradiomics
formulas of :mod:`._texture` in float64, in the same order of operations where it matters.
Kernels are ``nogil``: threads running different patches (or cell chunks) run in parallel.
Used automatically by the NumPy engine when numba imports (``AVAILABLE``); the pure NumPy
path stays the fallback (``NAPARI_UAM_NO_NUMBA=1`` forces it) and both are parity tested.
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
def _second_abs_eig(a, n):
    """Second largest |eigenvalue| of the symmetric (n, n) matrix ``a`` (overwritten), n >= 2.

    Householder reduction to tridiagonal form, then the implicit QL iteration (eigenvalues
    only; Numerical Recipes' tred2/tqli), both backward stable: float64 accuracy on these
    small matrices, several times cheaper than a LAPACK call per matrix. Falls back to
    ``np.linalg.eigvalsh`` if QL does not converge (never seen).
    """
    d = np.zeros(n)
    e = np.zeros(n)
    a0 = a.copy()
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
                for k in range(l + 1):
                    a[i, k] /= scale
                    h += a[i, k] * a[i, k]
                f = a[i, l]
                g = -math.sqrt(h) if f >= 0.0 else math.sqrt(h)
                e[i] = scale * g
                h -= f * g
                a[i, l] = f - g
                f = 0.0
                for j in range(l + 1):
                    g = 0.0
                    for k in range(j + 1):
                        g += a[j, k] * a[i, k]
                    for k in range(j + 1, l + 1):
                        g += a[k, j] * a[i, k]
                    e[j] = g / h
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
                ev = np.sort(np.abs(np.linalg.eigvalsh(a0)))
                return ev[n - 2]
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
def _glcm_angle_feats(P, ng, n_lev, out):
    """The 24 GLCM features of one symmetrical count matrix P (levels 0..ng) into ``out``.

    Returns False when P is empty (angle without pairs)."""
    total = 0.0
    for i in range(1, ng + 1):
        for j in range(1, ng + 1):
            total += P[i, j]
    if total == 0.0:
        return False
    px = np.zeros(ng + 1)
    py = np.zeros(ng + 1)
    psum = np.zeros(2 * ng + 2)
    pdiff = np.zeros(ng + 1)
    ux = 0.0
    uy = 0.0
    auto = 0.0
    contrast = 0.0
    energy = 0.0
    hxy = 0.0
    pmax = 0.0
    for i in range(1, ng + 1):
        for j in range(1, ng + 1):
            c = P[i, j]
            if c == 0.0:
                continue
            p = c / total
            px[i] += p
            py[j] += p
            psum[i + j] += p
            pdiff[abs(i - j)] += p
            ux += p * i
            uy += p * j
            auto += p * i * j
            contrast += p * (i - j) * (i - j)
            energy += p * p
            hxy -= p * math.log2(p + EPS)
            if p > pmax:
                pmax = p
    prom = 0.0
    shade = 0.0
    tend = 0.0
    sumsq = 0.0
    sumsqy = 0.0
    corm = 0.0
    hxy1 = 0.0
    for i in range(1, ng + 1):
        for j in range(1, ng + 1):
            c = P[i, j]
            if c == 0.0:
                continue
            p = c / total
            sij = i + j - (ux + uy)
            s2 = sij * sij
            prom += p * s2 * s2
            shade += p * s2 * sij
            tend += p * s2
            di = i - ux
            dj = j - uy
            sumsq += p * di * di
            sumsqy += p * dj * dj
            corm += p * di * dj
            hxy1 -= p * math.log2(px[i] * py[j] + EPS)
    sigx = sumsq**0.5
    sigy = sumsqy**0.5
    if sigx * sigy == 0.0:
        corr = 1.0
    else:
        corr = corm / (sigx * sigy + EPS)
    diffavg = 0.0
    for k in range(ng + 1):
        diffavg += k * pdiff[k]
    dent = 0.0
    dvar = 0.0
    idm = 0.0
    idmn = 0.0
    id_ = 0.0
    idn = 0.0
    invvar = 0.0
    ngf = float(ng)
    for k in range(ng + 1):
        q = pdiff[k]
        dent -= q * math.log2(q + EPS)
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
        q = psum[k]
        savg += k * q
        sent -= q * math.log2(q + EPS)
    hx = 0.0
    hy = 0.0
    lx = 0.0
    ly = 0.0
    sx = 0.0
    sy = 0.0
    kx = 0
    ky = 0
    for i in range(1, ng + 1):
        a = px[i]
        b = py[i]
        hx -= a * math.log2(a + EPS)
        hy -= b * math.log2(b + EPS)
        sx += a
        sy += b
        if a > 0.0:
            lx += a * math.log2(a)
            kx += 1
        if b > 0.0:
            ly += b * math.log2(b)
            ky += 1
    hxy2 = -(lx * sy + ly * sx + kx * ky * (EPS / LN2))
    if kx == 1 and ky == 1:
        hxy2 = hxy
    div = max(hx, hy)
    imc1 = (hxy - hxy1) / div if div != 0.0 else 0.0
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
        idx = np.empty(kx, np.int64)
        m = 0
        for i in range(1, ng + 1):
            if px[i] > 0.0:
                idx[m] = i
                m += 1
        M = np.zeros((kx, kx))
        for a in range(kx):
            ia = idx[a]
            for b in range(kx):
                c = P[ia, idx[b]]
                if c != 0.0:
                    M[a, b] = (c / total) / math.sqrt(px[ia] * px[idx[b]])
        mcc = _second_abs_eig(M, kx)
    out[0] = auto
    out[1] = ux
    out[2] = prom
    out[3] = shade
    out[4] = tend
    out[5] = contrast
    out[6] = corr
    out[7] = diffavg
    out[8] = dent
    out[9] = dvar
    out[10] = energy
    out[11] = hxy
    out[12] = imc1
    out[13] = imc2
    out[14] = idm
    out[15] = mcc
    out[16] = idmn
    out[17] = id_
    out[18] = idn
    out[19] = invvar
    out[20] = pmax
    out[21] = savg
    out[22] = sent
    out[23] = sumsq
    return True


@njit(cache=True, nogil=True, error_model="numpy")
def glcm_cells(starts, pix, level, levimg, lab, own0, width, ng, n_present, feats, valid):
    """GLCM features (C, 24) and valid angles (C, 4) of cells ``starts[c]..starts[c+1]``.

    ``lab[q] == own0 + c`` tests membership of cell c; angles (dy, dx) as ``_texture.ANGLES``.
    """
    offs = np.array([width + 1, width, width - 1, 1], np.int64)
    n_cells = starts.shape[0] - 1
    acc = np.empty(24)
    tmp = np.empty(24)
    for c in range(n_cells):
        g = ng[c]
        own = own0 + c
        P = np.zeros((4, g + 1, g + 1))
        for k in range(starts[c], starts[c + 1]):
            p = pix[k]
            li = level[k]
            for a in range(4):
                q = p + offs[a]
                if lab[q] == own:
                    lj = levimg[q]
                    P[a, li, lj] += 1.0
                    P[a, lj, li] += 1.0
        acc[:] = 0.0
        nv = 0
        for a in range(4):
            ok = _glcm_angle_feats(P[a], g, g, tmp)
            valid[c, a] = ok
            if ok:
                nv += 1
                for f in range(24):
                    acc[f] += tmp[f]
        for f in range(24):
            feats[c, f] = acc[f] / nv if nv > 0 else np.nan
        if n_present[c] < 2:
            feats[c, 15] = 1.0


@njit(cache=True, nogil=True, error_model="numpy")
def glrlm_cells(starts, pix, level, levimg, lab, own0, width, ng, valid, feats):
    """GLRLM features (C, 16) averaged over the valid angles of each cell."""
    offs = np.array([width + 1, width, width - 1, 1], np.int64)
    n_cells = starts.shape[0] - 1
    acc = np.empty(16)
    for c in range(n_cells):
        g = ng[c]
        own = own0 + c
        s0, s1 = starts[c], starts[c + 1]
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
        rmax = max(ymax - ymin, xmax - xmin) + 2
        J = np.zeros((g + 1, rmax))
        pg = np.zeros(g + 1)
        pr = np.zeros(rmax)
        acc[:] = 0.0
        nv = 0
        for a in range(4):
            if not valid[c, a]:
                continue
            nv += 1
            off = offs[a]
            J[:, :] = 0.0
            pg[:] = 0.0
            pr[:] = 0.0
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
                J[li, n] += 1.0
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
            ent = 0.0
            for i in range(1, g + 1):
                for j in range(1, rmax):
                    if J[i, j] > 0.0:
                        q = J[i, j] / nr
                        ent -= q * math.log2(q + EPS)
            acc[0] += sre / nr
            acc[1] += lre / nr
            acc[2] += pg2 / nr
            acc[3] += pg2 / nr**2
            acc[4] += pr2 / nr
            acc[5] += pr2 / nr**2
            acc[6] += nr / npx
            acc[7] += glv
            acc[8] += rv
            acc[9] += ent
            acc[10] += lgre / nr
            acc[11] += hgre / nr
            acc[12] += srlge / nr
            acc[13] += srhge / nr
            acc[14] += lrlge / nr
            acc[15] += lrhge / nr
        for f in range(16):
            feats[c, f] = acc[f] / nv if nv > 0 else np.nan


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


@njit(cache=True, nogil=True, error_model="numpy")
def shape_cells(starts, pix, lab, own0, width, sy, sx, area_lut, perim_lut, feats):
    """shape2D features (C, 9), as :func:`._shape.shape_features`."""
    n_cells = starts.shape[0] - 1
    corners = np.array([0, 1, width, width + 1], np.int64)
    dys = np.array([-1, 1, 0, 0], np.int64)
    dxs = np.array([0, 0, -1, 1], np.int64)
    for c in range(n_cells):
        own = own0 + c
        s0, s1 = starts[c], starts[c + 1]
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
        ymin = pix[s0] // width
        ymax = ymin
        xmin = pix[s0] % width
        xmax = xmin
        for t in range(s0, s1):
            yy = pix[t] // width
            xx = pix[t] % width
            my += yy * sy
            mx += xx * sx
            ymin = min(ymin, yy)
            ymax = max(ymax, yy)
            xmin = min(xmin, xx)
            xmax = max(xmax, xx)
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
        disc = np.sqrt(((cyy - cxx) / 2) ** 2 + cxy * cxy)
        major = half_tr + disc
        det = cyy * cxx - cxy * cxy
        minor = det / major if major > 0 else half_tr - disc
        if minor < 0 and minor > -1e-10:
            minor = 0.0
        # maximum diameter: boundary-edge midpoints (half-pixel units) extreme in their row
        # and in their column (the only possible hull vertices), then all pairs.
        hy = 2 * (ymax - ymin) + 3
        hx = 2 * (xmax - xmin) + 3
        rlo = np.full(hy, 1 << 40, np.int64)
        rhi = np.full(hy, -1, np.int64)
        clo = np.full(hx, 1 << 40, np.int64)
        chi = np.full(hx, -1, np.int64)
        vy = np.empty(4 * n, np.int64)
        vx = np.empty(4 * n, np.int64)
        nv = 0
        for t in range(s0, s1):
            p = pix[t]
            yy = 2 * (p // width - ymin) + 1
            xx = 2 * (p % width - xmin) + 1
            for d in range(4):
                if lab[p + dys[d] * width + dxs[d]] != own:
                    a = yy + dys[d]
                    b = xx + dxs[d]
                    vy[nv] = a
                    vx[nv] = b
                    nv += 1
                    rlo[a] = min(rlo[a], b)
                    rhi[a] = max(rhi[a], b)
                    clo[b] = min(clo[b], a)
                    chi[b] = max(chi[b], a)
        m = 0
        for v in range(nv):
            a = vy[v]
            b = vx[v]
            if (b == rlo[a] or b == rhi[a]) and (a == clo[b] or a == chi[b]):
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
        feats[c, 4] = 2 * np.sqrt(math.pi * area) / perim
        feats[c, 5] = np.sqrt(d2)
        feats[c, 6] = np.sqrt(major) * 4
        feats[c, 7] = np.sqrt(minor) * 4
        feats[c, 8] = np.sqrt(minor / major)


@njit(cache=True, nogil=True, error_model="numpy")
def first_order_cells(starts, values, level, n_levels, voxel_area, feats):
    """firstorder features (C, 18), as :func:`._texture.first_order`."""
    n_cells = starts.shape[0] - 1
    hist = np.zeros(256, np.int64)
    lh = np.zeros(n_levels)
    for c in range(n_cells):
        s0, s1 = starts[c], starts[c + 1]
        n_i = s1 - s0
        n = float(n_i)
        hist[:] = 0
        lh[:] = 0.0
        sm = 0.0
        energy = 0.0
        for t in range(s0, s1):
            v = values[t]
            hist[v] += 1
            lh[level[t]] += 1.0
            fv = float(v)
            sm += fv
            energy += fv * fv
        sv = np.empty(n_i)
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
        pct = np.empty(5)
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
        for l in range(n_levels):
            p = lh[l] / n
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
        feats[c, 13] = np.sqrt(energy / n)
        feats[c, 14] = m3 / m2s**1.5
        feats[c, 15] = m4 / m2s**2.0
        feats[c, 16] = m2
        feats[c, 17] = uni


@njit(cache=True, nogil=True, error_model="numpy")
def gldm_ngtdm_cells(starts, pix, level, levimg, lab, own0, width, ng, gldm, ngtdm):
    """gldm (C, 14) and ngtdm (C, 5) features, as :mod:`._texture`'s."""
    n_cells = starts.shape[0] - 1
    offs = np.array([-width - 1, -width, -width + 1, -1, 1, width - 1, width, width + 1], np.int64)
    for c in range(n_cells):
        g = ng[c]
        own = own0 + c
        s0, s1 = starts[c], starts[c + 1]
        nz = float(s1 - s0)
        P = np.zeros((g + 1, 9))
        n_i = np.zeros(g + 1)
        s_i = np.zeros(g + 1)
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
            P[li, same] += 1.0
            n_i[li] += 1.0
            if cnt > 0:
                s_i[li] += abs(li - tot / cnt)
        # GLDM
        pd = np.zeros(9)
        pg = np.zeros(g + 1)
        for i in range(g + 1):
            for d in range(9):
                pd[d] += P[i, d]
                pg[i] += P[i, d]
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
                x = P[i, d]
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
