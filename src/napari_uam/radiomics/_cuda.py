"""CUDA kernels of the feature engine: one GPU thread per cell, the CPU kernels' own code.

Every kernel here runs, for its cell, the same per-cell function as the CPU loop of
:mod:`._numba` (``shape_cell``, ``first_order_cell``, ``glcm_cell``, ``glrlm_cell``,
``glszm_cell``, ``gldm_ngtdm_cell``), compiled for the GPU by numba-cuda: the formulas exist
once, so the CUDA and CPU engines cannot drift apart. Work arrays the CPU loop allocates once
are slices of one float64 and one int64 scratch buffer here, at per-cell offsets sized from
each cell's pixel count, grey levels and bounding box (prefix sums on the GPU). Threads take
cells largest first, so the cells of a warp have about the same work.

The preparation (padding and relabelling the batch, grouping the pixels by cell, grey levels)
is torch on the same device, see :func:`extract_cuda`. numba-cuda is optional (the ``gpu``
extra); without it, or with ``NAPARI_UAM_NO_NUMBA_CUDA=1``, the engine uses the pure torch path
of :mod:`.fast_backend`. An MCC that the iterative eigensolver cannot settle (never seen on
real cells) is recomputed for that cell on the CPU, with LAPACK, as the CPU loop does.
"""

from __future__ import annotations

import os
from functools import lru_cache


from . import _numba, _shape
from ._colours import _lut, _pack_rgb
from ._compat import _numpy_compat
from .schema import FeatureSchema

#: Threads per block: the kernels are register-heavy scalar code; 64 keeps several blocks
#: resident per multiprocessor.
_THREADS = 64


@lru_cache(maxsize=1)
def available() -> bool:
    """True when numba-cuda imports, sees a GPU, and is not disabled."""
    if os.environ.get("NAPARI_UAM_NO_NUMBA_CUDA") or not _numba.AVAILABLE:
        return False
    try:
        _numpy_compat()
        from numba import cuda

        return bool(cuda.is_available())
    except Exception:  # noqa: BLE001 - any import or driver problem means "use the torch path"
        return False


@lru_cache(maxsize=1)
def kernels():
    """The CUDA kernels: compiled on their first launch on a machine (~10-20 s), loaded from
    numba's disk cache in later processes (see ``_cuda_kernels._enable_disk_cache``)."""
    _numpy_compat()
    from ._cuda_kernels import KERNELS

    return KERNELS


class _Launcher:
    """Launches on torch's current stream, passing tensors without copies or syncs."""

    def __init__(self, torch, device):
        from numba import cuda

        self.cuda = cuda
        # CPU tensors only under numba's CUDA simulator (NUMBA_ENABLE_CUDASIM=1, the tests'
        # check of the kernels' bookkeeping on machines without a GPU): NumPy views, stream 0.
        self.sim = device.type != "cuda"
        self.stream = 0 if self.sim else cuda.external_stream(torch.cuda.current_stream(device).cuda_stream)

    def arr(self, t):
        if not hasattr(t, "data_ptr"):
            return t
        return t.detach().numpy() if self.sim else self.cuda.as_cuda_array(t.detach(), sync=False)

    def __call__(self, kernel, n_threads, *args):
        blocks = max(1, (n_threads + _THREADS - 1) // _THREADS)
        kernel[blocks, _THREADS, self.stream](*[self.arr(a) for a in args])


#: Small constant device arrays per (device, padded width, pixel size), and the log2 table.
_CONST: dict = {}


def _constants(torch, dev, wp, mpp):
    key = (str(dev), wp, mpp)
    if key not in _CONST:
        sy = sx = float(mpp)
        seg = ((sy * sy + sx * sx) ** 0.5) / 2
        perim = [d * seg + h * sx + v * sy for d, h, v in zip(_shape._DIAG, _shape._HORIZ, _shape._VERT)]
        f64, i64 = torch.float64, torch.int64
        _CONST[key] = {
            "area": torch.tensor(list(_shape._AREA), dtype=f64, device=dev),
            "perim": torch.tensor(perim, dtype=f64, device=dev),
            "corners": torch.tensor([0, 1, wp, wp + 1], dtype=i64, device=dev),
            "dys": torch.tensor([-1, 1, 0, 0], dtype=i64, device=dev),
            "dxs": torch.tensor([0, 0, -1, 1], dtype=i64, device=dev),
            "offs4": torch.tensor([wp + 1, wp, wp - 1, 1], dtype=i64, device=dev),
            "offs8": torch.tensor([-wp - 1, -wp, -wp + 1, -1, 1, wp - 1, wp, wp + 1], dtype=i64, device=dev),
        }
    return _CONST[key]


def _log2_table(torch, dev, n):
    """log2(k), k < n, computed by the CPU kernels' own routine (so both engines read the same
    table), uploaded once and grown on demand."""
    key = ("lg", str(dev))
    have = _CONST.get(key)
    if have is None or have.shape[0] < n:
        have = torch.from_numpy(_numba._log2_table(max(n, 1 << 16))).to(dev)
        _CONST[key] = have
    return have


def _angle_mean(torch, per_angle, valid):
    """(C, 4, F) per-angle values -> (C, F) mean over the valid angles (NaN where none)."""
    v = valid.unsqueeze(-1)
    total = torch.where(v, per_angle, torch.zeros((), dtype=per_angle.dtype, device=per_angle.device)).sum(dim=1)
    return total / v.sum(dim=1)


def extract_cuda(xp, rgb, lab, ids, stack_shape, schema: FeatureSchema, col_of, fams, n_feat):
    """Every feature of every cell on the GPU (see the module docstring).

    Args:
        xp: the engine's :class:`._ops.TorchOps` on a CUDA device.
        rgb: (N, 3) uint8 colours of the padded batch (or a callable returning them: called
            once the labels' work is queued, so that a host copy can overlap it); lab: (N,)
            int64 compact cell ids
            1..C (0 = background), as :func:`.fast_backend._stack` (``pack=False``) returns them.
        ids, stack_shape: the other outputs of ``_stack``.
        col_of, fams, n_feat: the column layout (:func:`.fast_backend._column_layout`).

    Returns:
        (C, n_feat) float64 device tensor, rows in compact-id order; (C,) int8 device tensor,
        1 for cells whose GLCM MCC still needs LAPACK (their MCC column is NaN).
    """

    torch = xp.torch
    dev = xp.device
    ks = kernels()
    n_cells = sum(len(i) for i in ids)
    _, hp, wp = stack_shape
    i64, f64 = torch.int64, torch.float64
    fam_set = schema.families
    const = _constants(torch, dev, wp, schema.mpp)
    launch = _Launcher(torch, dev)

    # Pixels grouped by cell (raster order within a cell, as the CPU's counting sort gives).
    lab32 = lab.to(torch.int32)
    pix = torch.nonzero(lab > 0).reshape(-1)
    cell = lab[pix] - 1
    cell, perm = torch.sort(cell, stable=True)
    pix = pix[perm]
    counts = torch.bincount(cell, minlength=n_cells)
    starts = torch.zeros(n_cells + 1, dtype=i64, device=dev)
    torch.cumsum(counts, 0, out=starts[1:])

    # Bounding boxes: the run-length bound of GLRLM and the shape work size.
    y, x = pix // wp, pix % wp
    big = torch.full((n_cells,), 1 << 40, dtype=i64, device=dev)
    zero = torch.zeros(n_cells, dtype=i64, device=dev)
    dy = zero.scatter_reduce(0, cell, y, "amax") - big.scatter_reduce(0, cell, y, "amin")
    dx = zero.scatter_reduce(0, cell, x, "amax") - big.scatter_reduce(0, cell, x, "amin")
    rmax = torch.maximum(dy, dx) + 2
    del y, x
    order = torch.argsort(counts, descending=True)  # largest cells first: balanced warps
    out = torch.empty((n_cells, n_feat), dtype=f64, device=dev)
    unsettled = torch.zeros(n_cells, dtype=torch.int8, device=dev)

    def put(key, block):
        k = col_of[key]
        out[:, k : k + block.shape[1]] = block

    level_of = {}
    lut_cache = {}
    if callable(rgb):  # colours still being copied on the host (see fast_backend._stack)
        rgb = rgb()
    packed = _pack_rgb(rgb[pix])  # only the cells' pixels: the lookup index of the channels
    for ch in schema.channels:
        if ch not in lut_cache:
            lut_cache[ch] = _lut(xp, ch)
        values = lut_cache[ch][packed].to(i64)
        vmin = torch.full((n_cells,), 255, dtype=i64, device=dev).scatter_reduce(0, cell, values, "amin")
        low = vmin - vmin % schema.bin_width
        level = (values - low[cell]) // schema.bin_width + 1
        ng = zero.scatter_reduce(0, cell, level, "amax")
        n_levels = 256 // schema.bin_width + 2  # every level is below this
        present = torch.zeros(n_cells * n_levels, dtype=torch.bool, device=dev)
        present[cell * n_levels + level] = True
        n_present = present.reshape(n_cells, n_levels).sum(dim=1)
        levimg = torch.zeros(lab.shape[0], dtype=torch.int32, device=dev)
        levimg[pix] = level.to(torch.int32)
        level_of[ch] = (values, level, ng, n_present, levimg)

    # Every work buffer's per-cell sizes; their prefix sums and totals in one read-back.
    G = {ch: v[2] + 1 for ch, v in level_of.items()}
    sizes = {"shape_i": 6 * ((2 * dy + 3) + (2 * dx + 3))}  # _numba.shape_scratch, for all cells
    for ch, g1 in G.items():
        g = g1 - 1
        sizes[ch, "glcm_f"] = 4 * (g1 * g1 + g * g + 7 * g1)
        sizes[ch, "glcm_i"] = 4 * g1
        sizes[ch, "glrlm_f"] = 4 * (g1 * rmax + rmax + g1)
        sizes[ch, "glszm_i"] = 3 * counts
        sizes[ch, "glszm_f"] = counts + 1 + g1
        sizes[ch, "gldm_f"] = 12 * g1 + 9
        sizes[ch, "first_f"] = counts + 64  # n_levels (<= 256 // bin_width + 2) + 5 fit in 64 for bin_width >= 5
    names = list(sizes)
    offs = torch.zeros((len(names), n_cells + 1), dtype=i64, device=dev)
    torch.cumsum(torch.stack([sizes[k] for k in names]), dim=1, out=offs[:, 1:])
    scalars = torch.cat([offs[:, -1], counts.max().reshape(1)] + [v[2].max().reshape(1) for v in level_of.values()])
    scalars = scalars.tolist()  # the one host sync of the kernels' bookkeeping
    total = dict(zip(names, scalars[: len(names)]))
    nmax = scalars[len(names)]
    ng_max = dict(zip(level_of, scalars[len(names) + 1 :]))
    off = {k: offs[i] for i, k in enumerate(names)}
    lg = _log2_table(torch, dev, 2 * nmax + 2)

    sf = torch.empty((n_cells, len(_numba.SHAPE_NAMES)), dtype=f64, device=dev)
    iwork = torch.empty(total["shape_i"], dtype=i64, device=dev)
    launch(
        ks["shape"],
        n_cells,
        order,
        starts,
        pix,
        lab32,
        wp,
        float(schema.mpp),
        float(schema.mpp),
        const["area"],
        const["perim"],
        const["corners"],
        const["dys"],
        const["dxs"],
        off["shape_i"],
        iwork,
        sf,
    )
    put(("", "shape2D"), sf)

    for ch in schema.channels:
        values, level, ng, n_present, levimg = level_of[ch]
        if "firstorder" in fam_set:
            n_lv = ng_max[ch] + 1
            if n_lv + 5 > 64:
                raise ValueError("the CUDA first-order kernel needs bin_width >= 5")
            fwork = torch.empty(total[ch, "first_f"], dtype=f64, device=dev)
            iw = torch.empty(n_cells * 256, dtype=i64, device=dev)
            io = torch.arange(0, (n_cells + 1) * 256, 256, dtype=i64, device=dev)
            ff = torch.empty((n_cells, len(_numba.FIRSTORDER_NAMES)), dtype=f64, device=dev)
            launch(
                ks["firstorder"],
                n_cells,
                order,
                starts,
                values,
                level,
                n_lv,
                schema.mpp * schema.mpp * 1.0,
                io,
                iw,
                off[ch, "first_f"],
                fwork,
                ff,
            )
            put((ch, "firstorder"), ff)
        # GLCM, one thread per (cell, angle); its valid angles also select GLRLM's.
        fwork = torch.empty(total[ch, "glcm_f"], dtype=f64, device=dev)
        iwork = torch.empty(total[ch, "glcm_i"], dtype=i64, device=dev)
        g4 = torch.empty((n_cells, 4, len(_numba.GLCM_NAMES)), dtype=f64, device=dev)
        status = torch.empty((n_cells, 4), dtype=torch.int8, device=dev)
        launch(
            ks["glcm"],
            4 * n_cells,
            order,
            starts,
            pix,
            level,
            levimg,
            lab32,
            ng,
            const["offs4"],
            lg,
            off[ch, "glcm_i"],
            iwork,
            off[ch, "glcm_f"],
            fwork,
            g4,
            status,
        )
        valid = status > 0
        if "glcm" in fam_set:
            gf = _angle_mean(torch, g4, valid)
            mcc = _numba.GLCM_NAMES.index("MCC")
            open_mcc = (status == 2).any(dim=1) & (n_present >= 2)
            gf[:, mcc] = torch.where(n_present < 2, 1.0, torch.where(open_mcc, float("nan"), gf[:, mcc]))
            unsettled |= open_mcc.to(torch.int8)
            put((ch, "glcm"), gf)
        if "glrlm" in fam_set:
            fwork = torch.empty(total[ch, "glrlm_f"], dtype=f64, device=dev)
            r4 = torch.empty((n_cells, 4, len(_numba.GLRLM_NAMES)), dtype=f64, device=dev)
            launch(
                ks["glrlm"],
                4 * n_cells,
                order,
                starts,
                pix,
                level,
                levimg,
                lab32,
                ng,
                rmax,
                const["offs4"],
                valid,
                lg,
                off[ch, "glrlm_f"],
                fwork,
                r4,
            )
            put((ch, "glrlm"), _angle_mean(torch, r4, valid))
        if "glszm" in fam_set:
            seen = torch.zeros(lab.shape[0], dtype=torch.bool, device=dev)
            iwork = torch.empty(total[ch, "glszm_i"], dtype=i64, device=dev)
            fwork = torch.zeros(total[ch, "glszm_f"], dtype=f64, device=dev)  # hist: zero on entry
            zf = torch.empty((n_cells, len(_numba.GLSZM_NAMES)), dtype=f64, device=dev)
            launch(
                ks["glszm"],
                n_cells,
                order,
                starts,
                pix,
                level,
                levimg,
                lab32,
                ng,
                const["offs8"],
                seen,
                lg,
                off[ch, "glszm_i"],
                iwork,
                off[ch, "glszm_f"],
                fwork,
                zf,
            )
            put((ch, "glszm"), zf)
        if "gldm" in fam_set or "ngtdm" in fam_set:
            fwork = torch.empty(total[ch, "gldm_f"], dtype=f64, device=dev)
            df = torch.empty((n_cells, len(_numba.GLDM_NAMES)), dtype=f64, device=dev)
            tf = torch.empty((n_cells, len(_numba.NGTDM_NAMES)), dtype=f64, device=dev)
            launch(
                ks["gldm_ngtdm"],
                n_cells,
                order,
                starts,
                pix,
                level,
                levimg,
                lab32,
                ng,
                const["offs8"],
                off[ch, "gldm_f"],
                fwork,
                df,
                tf,
            )
            if "gldm" in fam_set:
                put((ch, "gldm"), df)
            if "ngtdm" in fam_set:
                put((ch, "ngtdm"), tf)
    return out, unsettled
