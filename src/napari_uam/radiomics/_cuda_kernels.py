"""The CUDA kernels of :mod:`._cuda` (imported only when numba-cuda is there).

One thread per cell (``order[i]``, largest cells first); each kernel slices its cell's work
arrays out of the shared scratch buffers and calls the per-cell function of :mod:`._numba`
that the CPU loop calls, compiled here as a CUDA device function.
"""

from numba import cuda

from . import _numba

@cuda.jit
def shape_k(order, starts, pix, lab, width, sy, sx, area_lut, perim_lut, corners, dys, dxs, ioff, iwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        _numba.shape_cell(c, c + 1, starts[c], starts[c + 1], pix, lab, width, sy, sx, area_lut, perim_lut, corners,
                      dys, dxs, iwork[ioff[c] : ioff[c + 1]], feats)

@cuda.jit
def first_order_k(order, starts, values, level, n_levels, voxel_area, ioff, iwork, foff, fwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        s0, s1 = starts[c], starts[c + 1]
        f0 = foff[c]
        _numba.first_order_cell(c, s0, s1, values, level, n_levels, voxel_area, iwork[ioff[c] : ioff[c] + 256],
                            fwork[f0 : f0 + n_levels], fwork[f0 + n_levels : f0 + n_levels + (s1 - s0)],
                            fwork[f0 + n_levels + (s1 - s0) : foff[c + 1]], feats)

@cuda.jit
def glcm_k(order, starts, pix, level, levimg, lab, ng, offs, lg, ioff, iwork, foff, fwork, feats, status):
    """One thread per (cell, angle): thread t runs angle t % 4 of cell order[t // 4]."""
    t = cuda.grid(1)
    if t < 4 * order.shape[0]:
        c = order[t // 4]
        a = t % 4
        g = ng[c]
        G = g + 1
        f0 = foff[c] + a * (foff[c + 1] - foff[c]) // 4
        f = fwork[f0 : f0 + (foff[c + 1] - foff[c]) // 4]
        Pa = f[: G * G].reshape((G, G))
        o = G * G
        M = f[o : o + g * g].reshape((g, g))
        o += g * g
        i0 = ioff[c] + a * G
        status[c, a] = _numba.glcm_angle(c + 1, starts[c], starts[c + 1], g, offs[a], pix, level, levimg, lab, lg, Pa,
                                         f[o : o + G], f[o + G : o + 3 * G], f[o + 3 * G : o + 4 * G],
                                         iwork[i0 : i0 + G], M, f[o + 4 * G : o + 5 * G], f[o + 5 * G : o + 6 * G],
                                         f[o + 6 * G : o + 7 * G], feats[c, a])


@cuda.jit
def glrlm_k(order, starts, pix, level, levimg, lab, ng, rmax, offs, valid, lg, foff, fwork, feats):
    """One thread per (cell, angle), as :func:`glcm_k`; invalid angles are skipped."""
    t = cuda.grid(1)
    if t < 4 * order.shape[0]:
        c = order[t // 4]
        a = t % 4
        if valid[c, a]:
            g = ng[c]
            rm = rmax[c]
            f0 = foff[c] + a * (foff[c + 1] - foff[c]) // 4
            nj = (g + 1) * rm
            f = fwork[f0 : f0 + nj + rm + g + 1]
            _numba.glrlm_angle(c + 1, starts[c], starts[c + 1], g, rm, offs[a], pix, level, levimg, lab, lg, f[:nj],
                               f[nj : nj + rm], f[nj + rm :], feats[c, a])


@cuda.jit
def glszm_k(order, starts, pix, level, levimg, lab, ng, offs, seen, lg, ioff, iwork, foff, fwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        s0, s1 = starts[c], starts[c + 1]
        n = s1 - s0
        w = iwork[ioff[c] : ioff[c + 1]]
        f = fwork[foff[c] : foff[c + 1]]
        _numba.glszm_cell(c, c + 1, s0, s1, ng[c], pix, level, levimg, lab, offs, seen, lg, w[:n], w[n : 2 * n],
                      w[2 * n : 3 * n], f[: n + 1], f[n + 1 :], feats)

@cuda.jit
def gldm_ngtdm_k(order, starts, pix, level, levimg, lab, ng, offs, foff, fwork, gldm, ngtdm):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        g = ng[c]
        G = g + 1
        f = fwork[foff[c] : foff[c + 1]]
        _numba.gldm_ngtdm_cell(c, c + 1, starts[c], starts[c + 1], g, pix, level, levimg, lab, offs, f[: 9 * G],
                           f[9 * G : 10 * G], f[10 * G : 11 * G], f[11 * G : 11 * G + 9], f[11 * G + 9 :], gldm,
                           ngtdm)


KERNELS = {"shape": shape_k, "firstorder": first_order_k, "glcm": glcm_k, "glrlm": glrlm_k, "glszm": glszm_k,
        "gldm_ngtdm": gldm_ngtdm_k}
