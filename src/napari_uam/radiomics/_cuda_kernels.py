"""The CUDA kernels of :mod:`._cuda` (imported only when numba-cuda is there).

One thread per cell (``order[i]``, largest cells first); each kernel slices its cell's work
arrays out of the shared scratch buffers and calls the per-cell function of :mod:`._numba`
that the CPU loop calls, compiled here as a CUDA device function.

The compiled kernels are cached on disk (numba's cache directory), so only the first process
on a machine pays the compile (~10-20 s); see :func:`_enable_disk_cache`.
"""

import hashlib
from pathlib import Path

from ._compat import _numpy_compat

_numpy_compat()  # before numba-cuda's array registries load (np.row_stack, see there)

from numba import cuda  # noqa: E402

from . import _numba  # noqa: E402


def _view2d_reshape(a, rows, cols):
    return a[: rows * cols].reshape((rows, cols))


def _view2d_intrinsic():
    """The :func:`view2d` intrinsic, or None where numba-cuda's internals it builds on moved."""
    try:
        from numba.cuda import types
        from numba.cuda.core.imputils import impl_ret_borrowed
        from numba.cuda.extending import intrinsic
        from numba.cuda.np.arrayobj import make_array, populate_array
    except ImportError:
        return None

    @intrinsic
    def view2d(typingctx, a, rows, cols):
        """(rows, cols) C-contiguous view of the start of 1-D contiguous ``a``.

        ``ndarray.reshape`` would do, but on CUDA it links numba-cuda's C reshape helper,
        and a kernel that links extra files cannot be cached on disk (it would compile in
        every new process, ~10 s for GLCM).
        """
        if not (isinstance(a, types.Array) and a.ndim == 1 and a.layout == "C"):
            return None
        ret = types.Array(a.dtype, 2, "C")

        def codegen(context, builder, sig, args):
            src = make_array(sig.args[0])(context, builder, args[0])
            out = make_array(ret)(context, builder)
            intp = types.intp
            r = context.cast(builder, args[1], sig.args[1], intp)
            c = context.cast(builder, args[2], sig.args[2], intp)
            item = context.get_constant(intp, context.get_abi_sizeof(context.get_data_type(a.dtype)))
            populate_array(
                out,
                data=src.data,
                shape=[r, c],
                strides=[builder.mul(c, item), item],
                itemsize=item,
                meminfo=src.meminfo,
                parent=src.parent,
            )
            return impl_ret_borrowed(context, builder, ret, out._getvalue())

        return ret(a, rows, cols), codegen

    return view2d


# The simulator runs the kernels as Python; a numba-cuda without the intrinsic's internals
# gets reshape (same results; the GLCM kernel then compiles in every process).
view2d = (None if cuda.config.ENABLE_CUDASIM else _view2d_intrinsic()) or _view2d_reshape


@cuda.jit
def shape_k(order, starts, pix, lab, width, sy, sx, area_lut, perim_lut, corners, dys, dxs, ioff, iwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        _numba.shape_cell(
            c,
            c + 1,
            starts[c],
            starts[c + 1],
            pix,
            lab,
            width,
            sy,
            sx,
            area_lut,
            perim_lut,
            corners,
            dys,
            dxs,
            iwork[ioff[c] : ioff[c + 1]],
            feats,
        )


@cuda.jit
def first_order_k(order, starts, values, level, n_levels, voxel_area, ioff, iwork, foff, fwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        s0, s1 = starts[c], starts[c + 1]
        f0 = foff[c]
        _numba.first_order_cell(
            c,
            s0,
            s1,
            values,
            level,
            n_levels,
            voxel_area,
            iwork[ioff[c] : ioff[c] + 256],
            fwork[f0 : f0 + n_levels],
            fwork[f0 + n_levels : f0 + n_levels + (s1 - s0)],
            fwork[f0 + n_levels + (s1 - s0) : foff[c + 1]],
            feats,
        )


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
        Pa = view2d(f, G, G)
        o = G * G
        M = view2d(f[o:], g, g)
        o += g * g
        i0 = ioff[c] + a * G
        status[c, a] = _numba.glcm_angle(
            c + 1,
            starts[c],
            starts[c + 1],
            g,
            offs[a],
            pix,
            level,
            levimg,
            lab,
            lg,
            Pa,
            f[o : o + G],
            f[o + G : o + 3 * G],
            f[o + 3 * G : o + 4 * G],
            iwork[i0 : i0 + G],
            M,
            f[o + 4 * G : o + 5 * G],
            f[o + 5 * G : o + 6 * G],
            f[o + 6 * G : o + 7 * G],
            feats[c, a],
        )


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
            _numba.glrlm_angle(
                c + 1,
                starts[c],
                starts[c + 1],
                g,
                rm,
                offs[a],
                pix,
                level,
                levimg,
                lab,
                lg,
                f[:nj],
                f[nj : nj + rm],
                f[nj + rm :],
                feats[c, a],
            )


@cuda.jit
def glszm_k(order, starts, pix, level, levimg, lab, ng, offs, seen, lg, ioff, iwork, foff, fwork, feats):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        s0, s1 = starts[c], starts[c + 1]
        n = s1 - s0
        w = iwork[ioff[c] : ioff[c + 1]]
        f = fwork[foff[c] : foff[c + 1]]
        _numba.glszm_cell(
            c,
            c + 1,
            s0,
            s1,
            ng[c],
            pix,
            level,
            levimg,
            lab,
            offs,
            seen,
            lg,
            w[:n],
            w[n : 2 * n],
            w[2 * n : 3 * n],
            f[: n + 1],
            f[n + 1 :],
            feats,
        )


@cuda.jit
def gldm_ngtdm_k(order, starts, pix, level, levimg, lab, ng, offs, foff, fwork, gldm, ngtdm):
    i = cuda.grid(1)
    if i < order.shape[0]:
        c = order[i]
        g = ng[c]
        G = g + 1
        f = fwork[foff[c] : foff[c + 1]]
        _numba.gldm_ngtdm_cell(
            c,
            c + 1,
            starts[c],
            starts[c + 1],
            g,
            pix,
            level,
            levimg,
            lab,
            offs,
            f[: 9 * G],
            f[9 * G : 10 * G],
            f[10 * G : 11 * G],
            f[11 * G : 11 * G + 9],
            f[11 * G + 9 :],
            gldm,
            ngtdm,
        )


def _enable_disk_cache(kernels) -> bool:
    """Cache the kernels on disk, keyed on this file *and* :mod:`._numba`.

    numba keys a cached kernel on the timestamp of the file that defines it only; these
    kernels also compile the per-cell functions of ``_numba.py``, so a change there must not
    reuse a stale kernel: the cache's source stamp is replaced by a hash of both files.
    Returns False (kernels compile once per process) where numba-cuda's cache internals
    differ from the ones this relies on, or under the simulator.
    """
    if cuda.config.ENABLE_CUDASIM:
        return False
    stamp = hashlib.sha256(Path(_numba.__file__).read_bytes() + Path(__file__).read_bytes()).hexdigest()
    try:
        for k in kernels.values():
            k.enable_caching()
            cache_file = k._cache._cache_file
            if not hasattr(cache_file, "_source_stamp"):
                raise AttributeError("_source_stamp")
            cache_file._source_stamp = stamp
    except Exception:  # noqa: BLE001 - any mismatch: no disk cache rather than a stale one
        from numba.cuda.core.caching import NullCache

        for k in kernels.values():
            k._cache = NullCache()
        return False
    return True


KERNELS = {
    "shape": shape_k,
    "firstorder": first_order_k,
    "glcm": glcm_k,
    "glrlm": glrlm_k,
    "glszm": glszm_k,
    "gldm_ngtdm": gldm_ngtdm_k,
}
DISK_CACHE = _enable_disk_cache(KERNELS)
