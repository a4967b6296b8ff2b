"""The batched feature engine: all cells of one or many patches at once, NumPy or PyTorch.

Patches are stacked into one (B, H+2, W+2) label image padded with background, with cell ids
made unique across the batch. Cells are then a *pixel list* (flat indices into that image):
every neighbour lookup is ``lab[pix + offset]``, every per-cell matrix a ``bincount`` over
(cell, ...) keys, so there is no per-cell Python loop. The co-occurrence, run and zone
matrices are sparse (only their non-zero (cell, i, j) entries exist) and all cells are
processed at once; only inputs of more than ``_CHUNK_PIXELS`` cell pixels are split into a few
cell chunks, to bound memory. On NumPy, run lengths (GLRLM) are read off the (cell,
level)-keyed image line by line; MCC comes from one batched call per matrix size class.

The same code runs on NumPy (CPU) and on PyTorch (CPU for the parity tests, CUDA in
production) through :mod:`._ops`; everything is float64. Same-level zones (GLSZM) are
labelled with scikit-image on the NumPy path and with a hook-and-compress union-find on the
torch path; both give the same partition. The torch path avoids data-dependent sizes and host
syncs where it can, so that the number of kernel launches does not grow with the number of
patches or cells: GLRLM runs come from the pixel list (:func:`._texture.glrlm_pixels`), GLSZM
zones stay keyed by their union-find root (:func:`._texture.glszm_roots`), GLCM pairs are
masked instead of gathered, and the upload and download go through page-locked buffers.

When numba imports, the NumPy path runs the per-cell families as compiled, GIL-free loops over
the cells (:mod:`._numba`, see :func:`_numba_chunk`; GLSZM zones there come from a per-cell
flood fill instead of scikit-image); ``device="numpy-pure"`` keeps the pure
NumPy code, the fallback, which is parity tested as well. The compiled path measures the cells
in chunks sized to take about :data:`CHUNK_SECONDS` each, so that progress and a cancel
(``cancel`` callable) are acted on a few times a second; the array engines poll ``cancel``
between their chunks and channels.

On CUDA with numba-cuda installed, the same per-cell functions run as CUDA kernels, one GPU
thread per cell (:mod:`._cuda`, :func:`_extract_cuda`); the pure torch path above is the
fallback (``cuda_kernels=False`` or ``NAPARI_UAM_NO_NUMBA_CUDA=1``). Inputs may be torch tensors
already on the device (no upload).
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
from skimage.measure import label

from ..errors import raise_if_cancelled as check_cancel
from . import _cuda, _numba, _shape, _texture
from ._colours import _lut, _pack_rgb
from ._ops import NumpyOps, TorchOps
from .schema import FeatureSchema


#: Cell pixels per chunk of the per-cell families (memory bound on very large inputs; a
#: 1000x1000 patch at 0.5 um/px holds about 50,000, a batch of 64 such about 3 M).
_CHUNK_PIXELS = {"cpu": 1 << 20, "cuda": 1 << 24}
#: The compiled CPU path sizes its chunks by time: each takes about this many seconds, so that
#: progress is reported and a cancel is seen a few times a second on any machine (a chunk's
#: results do not depend on where the chunks are cut: tested).
CHUNK_SECONDS = 0.1
#: Cell pixels of the first timed chunk, and the smallest chunk the timing may ask for.
_FIRST_CHUNK_PIXELS, _MIN_CHUNK_PIXELS = 1 << 14, 1 << 11


def _timed_chunks(starts, n_cells, most, seconds=CHUNK_SECONDS):
    """(c0, c1) cell ranges whose size adapts to the time the previous one took.

    A generator: the caller runs chunk (c0, c1) before asking for the next, which is sized so
    that it takes about ``seconds`` at the pace measured so far, never above ``most`` cell
    pixels (the memory bound) and always at least one cell.
    """
    budget, c0 = min(most, _FIRST_CHUNK_PIXELS), 0
    while c0 < n_cells:
        c1 = int(np.searchsorted(starts, starts[c0] + budget, side="right")) - 1
        c1 = min(n_cells, max(c1, c0 + 1))
        t0 = time.perf_counter()
        yield c0, c1
        took = time.perf_counter() - t0
        done = int(starts[c1] - starts[c0])
        pace = done / max(took, 1e-4)  # cell pixels per second
        budget = int(min(most, max(_MIN_CHUNK_PIXELS, pace * seconds, budget // 4)))
        c0 = c1


def make_ops(device: str):
    """NumPy ops for ``"numpy"`` (with the compiled kernels of :mod:`._numba` when numba
    imports) and ``"numpy-pure"`` (NumPy only), torch ops for ``"cpu"``/``"cuda[:n]"``."""
    if device in ("numpy", "numpy-pure"):
        ops = NumpyOps()
        ops.numba = device == "numpy" and _numba.AVAILABLE
        return ops
    return TorchOps(device)


def _stack(xp, images, labels, pack: bool = True):
    """Pad patches to a common (H, W) + 1-pixel border and relabel cells 1..C across the batch.

    Only a copy into the padded host arrays happens in NumPy; packing the colours and the
    relabelling run on the engine's device (one upload of uint8 RGB + int32 labels; torch
    tensor inputs are padded on their device instead).

    Returns:
        rgb (B * Hp * Wp,) int64 packed colours (``pack=False``, torch only: the
        (B * Hp * Wp, 3) uint8 colours, left to the caller to pack where it needs them; from
        host arrays, a callable returning them, whose host copy is still running in the
        background until it is called),
        lab (B * Hp * Wp,) int64 compact ids,
        ids list of (n_b,) int64 host arrays (original label of each compact id, in order),
        (B, Hp, Wp).
    """
    h = max(im.shape[0] for im in images) + 2
    w = max(im.shape[1] for im in images) + 2
    nb = len(images)
    on_device = xp.name == "torch" and _is_tensor(images[0])
    staged = xp.name == "torch" and not on_device and all(_fits_int32(lb) for lb in labels)
    if staged:  # the largest label is read on the device after the upload
        top = None
    elif on_device:
        top = None  # read on the device after the padding
    else:
        top = max(int(lb.max()) if _numel(lb) else 0 for lb in labels) + 1
    if on_device:  # torch tensors (e.g. already on the GPU): pad on the engine's device
        torch = xp.torch
        rgb_d = torch.zeros((nb, h, w, 3), dtype=torch.uint8, device=xp.device)
        lab_d = torch.zeros((nb, h, w), dtype=torch.int64, device=xp.device)
        if all(tuple(im.shape) == tuple(images[0].shape) for im in images) and all(
            tuple(lb.shape) == tuple(images[0].shape[:2]) for lb in labels
        ):  # one copy each
            rgb_d[:, 1:-1, 1:-1] = torch.stack([im.to(xp.device) for im in images])
            lab_d[:, 1:-1, 1:-1] = torch.stack([lb.to(xp.device) for lb in labels])
        else:
            for b, (im, lb) in enumerate(zip(images, labels)):
                rgb_d[b, 1 : 1 + im.shape[0], 1 : 1 + im.shape[1]] = im.to(xp.device)
                lab_d[b, 1 : 1 + lb.shape[0], 1 : 1 + lb.shape[1]] = lb.to(xp.device)
        top = int(lab_d.max().item()) + 1
        packed = _pack_rgb(rgb_d.reshape(-1, 3)) if pack else rgb_d.reshape(-1, 3)
        del rgb_d
        t_lab = lab_d.reshape(-1)
    elif xp.name == "numpy":
        rgb = np.zeros((nb, h, w, 3), dtype=np.uint8)
        lab = np.zeros((nb, h, w), dtype=np.int32 if top < 2**31 else np.int64)
        for b, (im, lb) in enumerate(zip(images, labels)):
            rgb[b, 1 : 1 + im.shape[0], 1 : 1 + im.shape[1]] = im
            lab[b, 1 : 1 + lb.shape[0], 1 : 1 + lb.shape[1]] = lb
        rgb = rgb.reshape(-1, 3)
        packed = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
        del rgb
        t_lab = lab.reshape(-1)
    else:  # pad on the host (threaded), labels first; the colours follow in the background
        torch = xp.torch
        if not staged:  # labels wider than 32 bits: see the int64 path
            ldt = np.int32 if top < 2**31 else np.int64
        else:
            ldt = np.int32
        lab_h = _staging(xp, "lab", (nb, h, w), ldt)
        rgb_h = _staging(xp, "rgb", (nb, h, w, 3), np.uint8)
        # NumPy copies release the GIL: a batch of patches is copied by a few threads (the
        # single-threaded copy was most of the host time of a 64-patch call), one task per
        # thread (a task per patch cost ~1 ms more on 64 patches). The labels' tasks go first
        # and only they are waited for; the colours are copied while the GPU relabels and
        # groups the pixels, and uploaded where the caller first needs them (``pack=False``).
        # Uploads stay on this thread: per-patch uploads, or uploads queued by the copy
        # threads block by block, cost more than they overlapped on the H100 host.
        if nb >= 4:
            pool, n_threads = _copy_pool(), _POOL[1]
            parts = [range(k, nb, n_threads) for k in range(min(nb, n_threads))]
            lab_jobs = [pool.submit(_pad_all, lab_h, labels, part) for part in parts]
            copies = [pool.submit(_pad_all, rgb_h, images, part) for part in parts]
            for j in lab_jobs:
                j.result()
        else:
            _pad_all(lab_h, labels, range(nb))
            _pad_all(rgb_h, images, range(nb))
            copies = []
        t_lab = _upload(xp, lab_h.reshape(-1))
        _staging_done(xp, "lab")
        rgb_upload = _DeferredUpload(xp, rgb_h.reshape(-1, 3), "rgb", copies)
        if top is None:  # one read-back instead of a NumPy pass over every patch's labels
            top = int(t_lab.max().item()) + 1
        t_lab = t_lab.to(torch.int64)
        del lab_h, rgb_h
        packed = rgb_upload if not pack else _pack_rgb(rgb_upload())
    # (patch, label) keys: which are present, and each one's rank among them = compact id.
    key = t_lab if nb == 1 else (xp.arange(nb * h * w) // (h * w)) * top + t_lab
    if nb * top <= 8 * key.shape[0] + (1 << 20):
        if xp.name == "numpy":
            present = xp.bincount(key, minlength=nb * top) > 0
        else:  # a plain scatter of True: counting would pile atomic adds onto the background bins
            spread = nb * top + xp.arange(key.shape[0]) % 4096  # background: scratch slots
            present = xp.torch.zeros(nb * top + 4096, dtype=xp.torch.bool, device=xp.device)
            present[xp.torch.where(t_lab > 0, key, spread)] = True
            present = present[: nb * top]
        present[xp.arange(nb) * top] = False  # background of every patch
        rank = xp.i(xp.cumsum(xp.i(present), axis=0))
        rank[xp.arange(nb) * top] = 0  # every patch's background stays 0
        compact = _img(xp, rank)[key]
        keys = xp.to_numpy(xp.nonzero(present)).astype(np.int64)
    else:  # huge label values: sort-based unique instead of a table
        uk, inv = xp.unique_inverse(key)
        keys = xp.to_numpy(uk).astype(np.int64)
        is_bg = (keys % top) == 0
        bg_before = np.cumsum(is_bg)
        comp_of = xp.asarray(np.where(is_bg, 0, np.arange(1, len(keys) + 1) - bg_before), dtype="i64")
        compact = _img(xp, comp_of)[inv]
        keys = keys[~is_bg]
    # keys are sorted: each patch's ids are one slice (no per-patch pass over all keys)
    cuts = np.searchsorted(keys, np.arange(1, nb) * top)
    ids = np.split(keys - np.repeat(np.arange(nb) * top, np.diff(np.r_[0, cuts, len(keys)])), cuts)
    return packed, compact, ids, (nb, h, w)


_POOL = []


def _pad_into(buf, a, b):
    """Copy patch ``a`` into slot ``b`` of the padded staging array ``buf``, zeroing the border
    (the buffer is reused between calls)."""
    hb, wb = a.shape[0], a.shape[1]
    buf[b, 1 : 1 + hb, 1 : 1 + wb] = a
    buf[b, 0] = 0
    buf[b, 1 + hb :] = 0
    buf[b, 1 : 1 + hb, 0] = 0
    buf[b, 1 : 1 + hb, 1 + wb :] = 0


def _pad_all(buf, arrays, which):
    for b in which:
        _pad_into(buf, arrays[b], b)


class _DeferredUpload:
    """A staging array still being filled by the copy threads: calling it waits for the copies,
    queues the upload and returns the device tensor (once; later calls return the same)."""

    def __init__(self, xp, host, name, copies):
        self.xp, self.host, self.name, self.copies, self.tensor = xp, host, name, copies, None
        _STAGING_COPIES[name] = copies  # the next user of the staging buffer waits for them too

    def __call__(self):
        if self.tensor is None:
            for c in self.copies:
                c.result()
            self.tensor = _upload(self.xp, self.host)
            _staging_done(self.xp, self.name)
            self.host = None
        return self.tensor


def _copy_pool():
    """A small shared thread pool for the host-side batch copies (created on first use; its
    size is ``_POOL[1]``)."""
    if not _POOL:
        n = max(1, min(8, (os.cpu_count() or 2) // 2))
        _POOL.extend([ThreadPoolExecutor(max_workers=n), n])
    return _POOL[0]


def _fits_int32(a) -> bool:
    """Whether every value of the label array's dtype fits in int32 (no scan needed)."""
    dt = np.asarray(a).dtype
    return (dt.kind == "i" and dt.itemsize <= 4) or (dt.kind in "ub" and dt.itemsize <= 2)


def _is_tensor(a) -> bool:
    return hasattr(a, "device") and hasattr(a, "numel")


def _numel(a) -> int:
    return a.numel() if _is_tensor(a) else a.size


#: Reused host buffers of the CUDA upload, per (name, dtype): page-locked, so that the upload
#: is one fast asynchronous DMA instead of a pageable copy, and no page faults per call.
_STAGING: dict = {}
#: Host copies (futures) still filling a staging buffer, per name.
_STAGING_COPIES: dict = {}
#: Held by every torch-engine call (threads of one process, e.g. a Dask worker with several
#: threads, would otherwise share the staging buffers above).
_TORCH_LOCK = __import__("threading").RLock()


def _staging(xp, name, shape, dtype):
    """A host array of ``shape`` for the upload (pinned and cached on CUDA; contents stale)."""
    for c in _STAGING_COPIES.pop(name, ()):  # copies of an earlier call that never uploaded
        c.result()
    if xp.device.type != "cuda":
        return np.empty(shape, dtype=dtype)
    torch = xp.torch
    key = (name, np.dtype(dtype).str, str(xp.device))
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    entry = _STAGING.get(key)
    if entry is None or entry[0].numel() < n:
        entry = [torch.empty(max(n, 1), dtype=torch.uint8, pin_memory=True), None]
        _STAGING[key] = entry
    if entry[1] is not None:  # the previous call's upload from this buffer must be finished
        entry[1].synchronize()
    return entry[0][:n].numpy().view(dtype).reshape(shape)


def _upload(xp, arr):
    return xp.torch.from_numpy(arr).to(xp.device, non_blocking=xp.device.type == "cuda")


def _staging_done(xp, name):
    """Mark the staging buffer ``name`` as in use by the upload just queued."""
    _STAGING_COPIES.pop(name, None)
    if xp.device.type == "cuda":
        ev = xp.torch.cuda.Event()
        ev.record()
        for key, entry in _STAGING.items():
            if key[0] == name:
                entry[1] = ev


def _download(xp, a):
    """Device array -> NumPy; on CUDA through a page-locked buffer (a pageable copy of the
    (cells, features) float64 table ran at a few GB/s on the H100 host)."""
    if xp.name == "numpy" or xp.device.type != "cuda":
        return xp.to_numpy(a)
    torch = xp.torch
    host = torch.empty(a.shape, dtype=a.dtype, pin_memory=True)
    host.copy_(a)  # blocking: the table is complete when this returns
    return host.numpy()


def _img(xp, a):
    """Whole-image integer arrays are int32 on NumPy (memory on big patches), int64 on torch."""
    return a.astype(np.int32) if xp.name == "numpy" and a.dtype != np.int32 else a


def _zones_numpy(key_img):
    """8-connected components of equal non-zero keys, per patch; (B, Hp, Wp) ids from 1."""
    if key_img.shape[0] == 1:
        return label(key_img[0], connectivity=2, background=0)[None]
    out = np.zeros(key_img.shape, dtype=np.int64)
    base = 0
    for b in range(key_img.shape[0]):
        z = label(key_img[b], connectivity=2, background=0)
        out[b] = np.where(z > 0, z + base, 0)
        base += int(z.max())
    return out


def _zones_torch(xp, key, pix, width):
    """Union-find over the pixel list: hook the larger root onto the smaller, then compress.

    Every pixel has its 4 forward 8-neighbours as edges, an edge to itself where that
    neighbour is not of the same key (a no-op hook), so no data-dependent filtering.

    Returns (N,) the pixel-list index of each pixel's zone root (its smallest pixel index).
    """
    torch = xp.torch
    n = pix.shape[0]
    ar = torch.arange(n, device=pix.device)
    where = torch.full((key.shape[0],), -1, dtype=torch.int64, device=pix.device)
    where[pix] = ar
    vs = []
    for off in (1, width - 1, width, width + 1):  # forward half of the 8-neighbourhood
        v = where[pix + off]
        vs.append(torch.where((v >= 0) & (key[pix + off] == key[pix]), v, ar))
    u, v = ar.repeat(4), torch.cat(vs)
    comp = ar
    # Rounds of hooking (every edge, no data-dependent filtering: an edge whose ends already
    # share a root hooks that root onto itself, a no-op) and pointer jumping (idempotent once
    # every pixel points at a root); convergence is read back once per 4 rounds, a single
    # host sync, instead of after every step.
    while True:
        for _ in range(4):
            cu, cv = comp[u], comp[v]
            comp = comp.scatter_reduce(
                0, torch.maximum(cu, cv), torch.minimum(cu, cv), reduce="amin", include_self=True
            )
            for _ in range(3):
                comp = comp[comp]
        nxt = comp[comp]
        if bool(((comp[u] == comp[v]).all() & (nxt == comp).all()).item()):
            break
        comp = nxt
    return comp


def _numba_chunk(schema, chan, put, lab, pix, c0, c1, starts, wp, spacing):
    """Every per-cell family of cells c0..c1 with the compiled kernels of :mod:`._numba`."""
    nb = _numba
    nc = c1 - c0
    k0, k1 = int(starts[c0]), int(starts[c1])
    st = starts[c0 : c1 + 1] - starts[c0]
    pix_c = pix[k0:k1]
    own0 = c0 + 1  # compact ids of the chunk's cells are own0 .. own0 + nc - 1
    sy, sx = spacing
    seg = ((sy * sy + sx * sx) ** 0.5) / 2
    perim_lut = np.array([d * seg + h * sx + v * sy for d, h, v in zip(_shape._DIAG, _shape._HORIZ, _shape._VERT)])
    sf = np.empty((nc, len(nb.SHAPE_NAMES)))
    nb.shape_cells(st, pix_c, lab, own0, wp, float(sy), float(sx), np.array(_shape._AREA), perim_lut, sf)
    put(("", "shape2D"), c0, c1, dict(zip(nb.SHAPE_NAMES, sf.T)))
    fams = schema.families
    for ch in schema.channels:
        values, level, levimg, ng_all, np_all = chan[ch]
        v_c, l_c = values[k0:k1], level[k0:k1]
        ng, n_present = ng_all[c0:c1], np_all[c0:c1]
        if "firstorder" in fams:
            ff = np.empty((nc, len(nb.FIRSTORDER_NAMES)))
            nb.first_order_cells(st, v_c, l_c, int(ng.max()) + 1, schema.mpp * schema.mpp * 1.0, ff)
            put((ch, "firstorder"), c0, c1, dict(zip(nb.FIRSTORDER_NAMES, ff.T)))
        gf = np.empty((nc, len(nb.GLCM_NAMES)))
        valid = np.empty((nc, 4), dtype=bool)
        nb.glcm_cells(st, pix_c, l_c, levimg, lab, own0, wp, ng, n_present, gf, valid)
        if "glcm" in fams:
            put((ch, "glcm"), c0, c1, dict(zip(nb.GLCM_NAMES, gf.T)))
        if "glrlm" in fams:
            rf = np.empty((nc, len(nb.GLRLM_NAMES)))
            nb.glrlm_cells(st, pix_c, l_c, levimg, lab, own0, wp, ng, valid, rf)
            put((ch, "glrlm"), c0, c1, dict(zip(nb.GLRLM_NAMES, rf.T)))
        if "glszm" in fams:
            zf = np.empty((nc, len(nb.GLSZM_NAMES)))
            nb.glszm_cells(st, pix_c, l_c, levimg, lab, own0, wp, ng, zf)
            put((ch, "glszm"), c0, c1, dict(zip(nb.GLSZM_NAMES, zf.T)))
        if "gldm" in fams or "ngtdm" in fams:
            df = np.empty((nc, len(nb.GLDM_NAMES)))
            tf = np.empty((nc, len(nb.NGTDM_NAMES)))
            nb.gldm_ngtdm_cells(st, pix_c, l_c, levimg, lab, own0, wp, ng, df, tf)
            if "gldm" in fams:
                put((ch, "gldm"), c0, c1, dict(zip(nb.GLDM_NAMES, df.T)))
            if "ngtdm" in fams:
                put((ch, "ngtdm"), c0, c1, dict(zip(nb.NGTDM_NAMES, tf.T)))


def _column_layout(schema: FeatureSchema):
    """Output column of the first feature of every (channel, family): shape first, then per
    channel its families in schema order ("" is the channel of shape2D)."""
    fams = schema.family_features
    col_of, k = {}, 0
    for fam_key in [("", "shape2D")] + [(ch, fam) for ch in schema.channels for fam in schema.families]:
        col_of[fam_key] = k
        k += len(fams[fam_key[1]])
    return col_of, fams, k


def _chunk_bounds(starts, n_cells, budget):
    """(c0, c1) cell ranges of at most ``budget`` pixels each (at least one cell)."""
    bounds, c0 = [], 0
    while c0 < n_cells:
        c1 = int(np.searchsorted(starts, starts[c0] + budget, side="right")) - 1
        c1 = min(n_cells, max(c1, c0 + 1))
        bounds.append((c0, c1))
        c0 = c1
    return bounds


def _stack_numba(xp, images, labels):
    """:func:`_stack` for the compiled path: one kernel per patch pads, packs the colours and
    numbers the cells 1..C in (patch, label) order, with no pass of NumPy temporaries.

    Returns rgb (B * Hp * Wp,) int32, lab (B * Hp * Wp,) int32, ids (list of (n_b,) int64), Wp.
    """
    h = max(im.shape[0] for im in images) + 2
    w = max(im.shape[1] for im in images) + 2
    tops = [int(lb.max()) + 1 if lb.size else 1 for lb in labels]
    negative = any(lb.size and lb.min() < 0 for lb in labels)
    if negative or max(tops) > 8 * h * w + (1 << 20) or sum(lb.size for lb in labels) >= 2**31:
        # huge label values (a table per label value would not fit), ids beyond int32, or
        # negative labels (the kernel indexes a table by label: _stack reports them instead)
        rgb, lab, ids, (_, _, wp) = _stack(xp, images, labels)
        return rgb, lab, ids, wp
    rgb = np.zeros(len(images) * h * w, np.int32)
    lab = np.zeros(len(images) * h * w, np.int32)
    ids, base = [], 0
    for b, (im, lb) in enumerate(zip(images, labels)):
        im8, lb_c = np.ascontiguousarray(im, dtype=np.uint8), np.ascontiguousarray(lb)
        i = _numba.pad_patch(im8, lb_c, tops[b], rgb, lab, b * h * w, w, base)
        ids.append(i)
        base += len(i)
    return rgb, lab, ids, w


def _extract_numba(images, labels, schema: FeatureSchema, progress=None, chunk_pixels=None, cancel=None):
    """:func:`_extract_batch` with the compiled kernels: no NumPy pass over the pixels at all.

    The compact ids of :func:`_stack` are used as they are (no renumbering by grey levels:
    that only serves the batched eigensolver of the array path); a counting sort groups the
    pixels by cell and one kernel per channel discretises them. Cells are measured in chunks
    of about :data:`CHUNK_SECONDS` each (at most ``chunk_pixels`` cell pixels, when given, as
    the chunks of the other engines); ``progress`` and ``cancel`` are called between chunks.
    """
    xp = make_ops("numpy")
    rgb, lab, ids, wp = _stack_numba(xp, images, labels)
    n_cells = sum(len(i) for i in ids)
    col_of, fams, n_feat = _column_layout(schema)
    if n_cells == 0:
        return [(i, np.empty((0, n_feat))) for i in ids]
    starts, pix = _numba.group_pixels(lab, n_cells)
    chan = {
        ch: _numba.discretise(starts, pix, rgb, _lut(xp, ch), schema.bin_width, lab.shape[0]) for ch in schema.channels
    }
    del rgb
    out = np.empty((n_cells, n_feat), dtype=np.float64)

    def put(fam_key, c0, c1, feats):
        k0 = col_of[fam_key]
        for j, f in enumerate(fams[fam_key[1]]):
            out[c0:c1, k0 + j] = feats[f]

    spacing = (schema.mpp, schema.mpp)
    check_cancel(cancel)
    chunks = (_chunk_bounds(starts, n_cells, chunk_pixels) if chunk_pixels
              else _timed_chunks(starts, n_cells, _CHUNK_PIXELS["cpu"]))  # fmt: skip
    for c0, c1 in chunks:
        _numba_chunk(schema, chan, put, lab, pix, c0, c1, starts, wp, spacing)
        if progress is not None:
            progress(0.9 * c1 / n_cells)
        check_cancel(cancel)
    results, k = [], 0
    for i in ids:
        results.append((i, out[k : k + len(i)]))
        k += len(i)
    return results


def _extract_cuda(xp, images, labels, schema: FeatureSchema, progress=None, cancel=None):
    """:func:`_extract_batch` with the per-cell CUDA kernels of :mod:`._cuda` (one pass: the
    GPU measures a whole image in well under a second; ``cancel`` is polled before and after)."""
    check_cancel(cancel)
    rgb, lab, ids, stack_shape = _stack(xp, images, labels, pack=False)
    n_cells = sum(len(i) for i in ids)
    col_of, fams, n_feat = _column_layout(schema)
    if n_cells == 0:
        return [(i, np.empty((0, n_feat))) for i in ids]
    out, unsettled = _cuda.extract_cuda(xp, rgb, lab, ids, stack_shape, schema, col_of, fams, n_feat)
    del rgb, lab
    check_cancel(cancel)
    values = _download(xp, out)
    flags = xp.to_numpy(unsettled).astype(bool)
    results, k = [], 0
    for b, i in enumerate(ids):
        v = values[k : k + len(i)]
        if flags[k : k + len(i)].any():  # MCC the iterative eigensolver left: LAPACK on the CPU
            img, lb = (a.detach().cpu().numpy() if _is_tensor(a) else a for a in (images[b], labels[b]))
            [(_, ref)] = _extract_numba([img], [lb], schema)
            rows = flags[k : k + len(i)]
            for ch in schema.channels:
                if (ch, "glcm") in col_of:
                    col = col_of[(ch, "glcm")] + _numba.GLCM_NAMES.index("MCC")
                    v[rows, col] = ref[rows, col]
        results.append((i, v))
        k += len(i)
    if progress is not None:
        progress(0.9)
    return results


def extract_batch(
    images,
    labels,
    schema: FeatureSchema,
    device: str = "numpy",
    progress=None,
    chunk_pixels=None,
    cuda_kernels: bool | None = None,
    cancel=None,
):
    """Features of every cell of every patch (see :func:`_extract_batch`)."""
    # The engine computes a schema's plain radiomics (shape + its channels); the views of a v2
    # schema (stain-normalised image, ring, context) are assembled by radiomics.extract.
    schema = schema.base
    # Degenerate cells divide 0 by 0 on purpose (pyradiomics' NaNs); keep NumPy quiet about it.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _extract_batch(images, labels, schema, device, progress, chunk_pixels, cuda_kernels, cancel)


def _extract_batch(
    images,
    labels,
    schema: FeatureSchema,
    device: str = "numpy",
    progress=None,
    chunk_pixels=None,
    cuda_kernels: bool | None = None,
    cancel=None,
):
    """Features of every cell of every patch.

    Args:
        images: list of (H_b, W_b, 3) uint8 RGB patches at ``schema.mpp`` (NumPy arrays, or
            torch tensors for the torch engines, e.g. already on the GPU).
        labels: list of (H_b, W_b) int instance maps (0 = background).
        schema: the feature schema.
        device: ``"numpy"`` (NumPy CPU, numba kernels when available), ``"numpy-pure"``
            (NumPy only), ``"cpu"`` (torch CPU) or ``"cuda[:n]"`` (GPU).
        progress: optional callable(fraction), called after every chunk of cells.
        chunk_pixels: most cell pixels per chunk of the per-cell families; None = the
            device's default (:data:`_CHUNK_PIXELS`; the compiled CPU path then sizes its
            chunks to take about :data:`CHUNK_SECONDS` each). Smaller chunks need less memory.
        cuda_kernels: on CUDA, run the per-cell CUDA kernels of :mod:`._cuda` (True) or the
            pure torch engine (False); None = the kernels when numba-cuda is available and
            ``chunk_pixels`` is not below the CUDA default.
        cancel: optional ``cancel() -> bool``, polled between chunks and channels; True
            raises :class:`~napari_uam.errors.CancelledError`.

    Returns:
        list over patches of (ids, values): (n_b,) int64 sorted label ids, (n_b, F) float64.
    """
    xp = make_ops(device)
    if getattr(xp, "numba", False):
        return _extract_numba(images, labels, schema, progress, chunk_pixels, cancel)
    if xp.name == "torch":  # the page-locked staging buffers are shared: one torch call at a time
        with _TORCH_LOCK:
            return _extract_arrays(xp, images, labels, schema, device, progress, chunk_pixels, cuda_kernels, cancel)
    return _extract_arrays(xp, images, labels, schema, device, progress, chunk_pixels, cuda_kernels, cancel)


def _extract_arrays(xp, images, labels, schema, device, progress, chunk_pixels, cuda_kernels, cancel=None):
    """The array engines of :func:`_extract_batch` (NumPy, torch CPU / CUDA, CUDA kernels)."""
    # The per-cell CUDA kernels take the batch whole; a caller asking for chunks smaller than
    # the default (the retry after a GPU out-of-memory error) gets the chunked torch engine.
    whole = chunk_pixels is None or chunk_pixels >= _CHUNK_PIXELS["cuda"]
    auto_kernels = cuda_kernels is None and whole and _cuda.available()
    if xp.name == "torch" and xp.device.type == "cuda" and (cuda_kernels or auto_kernels):
        return _extract_cuda(xp, images, labels, schema, progress, cancel)
    check_cancel(cancel)
    rgb, lab, ids, stack_shape = _stack(xp, images, labels)
    n_cells = sum(len(i) for i in ids)
    n_feat = schema.n_features
    if n_cells == 0:
        return [(i, np.empty((0, n_feat))) for i in ids]
    _, hp, wp = stack_shape
    pix = xp.nonzero(lab > 0)
    cell_all = xp.i(lab[pix]) - 1
    spacing = (schema.mpp, schema.mpp)
    fams = schema.family_features

    # Per channel: value and discretised level (pyradiomics' fixed bin width anchored at the
    # cell's minimum: level = (v - (vmin - vmin % w)) // w + 1) of every cell pixel.
    raw = {}
    ng_all = xp.zeros(n_cells, dtype="i64")
    for ch in schema.channels:
        values = xp.i(_lut(xp, ch)[rgb[pix]])
        vmin = 255 - xp.scatter_max(n_cells, cell_all, 255 - values)  # scatter_max starts at 0
        low = vmin - vmin % schema.bin_width
        level = (values - low[cell_all]) // schema.bin_width + 1
        raw[ch] = (values, level)
        ng_all = xp.maximum(ng_all, xp.scatter_max(n_cells, cell_all, level))

    # Renumber cells by their number of grey levels (keeps the MCC batches of one matrix size
    # contiguous), then group the pixels by cell.
    by_ng = xp.argsort(ng_all)
    rank = xp.zeros(n_cells, dtype="i64")
    rank[by_ng] = xp.arange(n_cells)
    lookup = xp.zeros(n_cells + 1, dtype="i64")
    lookup[1:] = rank + 1
    lab = _img(xp, lookup)[lab]
    cell_all = rank[cell_all]
    order = xp.argsort(cell_all)  # pixels grouped by cell: a chunk is a contiguous slice
    pix, cell_all = pix[order], cell_all[order]

    chan = {}
    for ch in schema.channels:
        values, level = raw[ch][0][order], raw[ch][1][order]
        n_levels = int(level.max()) + 1
        levimg = _img(xp, xp.zeros(lab.shape[0], dtype="i64"))
        levimg[pix] = _img(xp, level)
        zone = None
        if "glszm" in schema.families:  # 8-connected same-level zones, labelled once
            key = lab * n_levels + levimg
            if xp.name == "numpy":
                z = _zones_numpy(xp.to_numpy(key).reshape(stack_shape)).reshape(-1)
                zone = z[xp.to_numpy(pix)].astype(np.int64) - 1  # consecutive labels from 1
            else:
                zone = _zones_torch(xp, key, pix, wp)
        chan[ch] = (values, level, n_levels, levimg, zone)
        check_cancel(cancel)

    glszm_vals = {}
    for ch in schema.channels:
        values, level, n_levels, levimg, zone = chan[ch]
        if zone is not None and xp.name == "numpy":
            glszm_vals[ch] = _texture.glszm(xp, zone, cell_all, level, n_cells, n_levels)
        elif zone is not None:  # torch: zones keyed by their root pixel, no relabelling
            glszm_vals[ch] = _texture.glszm_roots(xp, zone, cell_all, level, n_cells, n_levels)
        check_cancel(cancel)

    # Column layout of the output: shape, then per channel its families in schema order.
    col_of, k = {}, 0
    for fam_key in [("", "shape2D")] + [(ch, fam) for ch in schema.channels for fam in schema.families]:
        col_of[fam_key] = k
        k += len(fams[fam_key[1]])
    out = xp.zeros((n_cells, n_feat))  # on the engine's device: one download at the end

    def put(fam_key, c0, c1, feats):
        k0 = col_of[fam_key]
        block = xp.stack([feats[f] for f in fams[fam_key[1]]], axis=1)
        out[c0:c1, k0 : k0 + block.shape[1]] = block

    # The per-cell families run on all cells at once (their matrices are sparse or small dense
    # (cells, levels) arrays); only on very large inputs are the cells split into a few chunks
    # of at most _CHUNK_PIXELS pixels, to bound memory.
    counts = xp.to_numpy(xp.bincount(cell_all, minlength=n_cells)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    budget = chunk_pixels or _CHUNK_PIXELS["cuda" if str(device).startswith("cuda") else "cpu"]
    bounds = _chunk_bounds(starts, n_cells, budget)
    valid_all = {ch: [] for ch in schema.channels}
    for c0, c1 in bounds:
        nc = c1 - c0
        sl = slice(int(starts[c0]), int(starts[c1]))
        pix_c = pix[sl]
        cell_c = cell_all[sl] - c0
        lab_c = lab if c0 == 0 else lab - c0  # cells of the chunk are 1..nc (equality tests only)
        put(("", "shape2D"), c0, c1, _shape.shape_features(xp, lab_c, pix_c, cell_c, nc, wp, spacing))
        pairs = _texture.angle_pairs(xp, lab_c, pix_c, cell_c, wp)
        for ch in schema.channels:
            values, level, n_levels, levimg, _ = chan[ch]
            v_c, l_c = values[sl], level[sl]
            ng = xp.scatter_max(nc, cell_c, l_c)
            present = xp.bincount(cell_c * n_levels + l_c, minlength=nc * n_levels).reshape(nc, n_levels) > 0
            n_present = xp.f(present).sum(axis=1)
            lrank = (xp.cumsum(xp.i(present), axis=1) - 1).reshape(-1)  # level -> rank among present
            if "firstorder" in schema.families:
                area = schema.mpp * schema.mpp * 1.0
                put((ch, "firstorder"), c0, c1, _texture.first_order(xp, cell_c, v_c, l_c, nc, n_levels, area))
            glcm, valid = _texture.glcm(xp, cell_c, l_c, levimg, pairs, nc, n_levels, ng, n_present, lrank)
            valid_all[ch].append(valid)
            if "glcm" in schema.families:
                put((ch, "glcm"), c0, c1, glcm)
            if "glrlm" in schema.families and xp.name == "torch":  # runs from the pixel list
                runs = _texture.glrlm_pixels(
                    xp, lab_c, pix_c, cell_c, l_c, levimg, wp, nc, n_levels, valid, max(hp, wp)
                )
                put((ch, "glrlm"), c0, c1, runs)
            if "gldm" in schema.families or "ngtdm" in schema.families:
                same, cnt, tot = _texture.neighbour_stats(xp, lab_c, pix_c, cell_c, l_c, levimg, wp)
                if "gldm" in schema.families:
                    put((ch, "gldm"), c0, c1, _texture.gldm(xp, cell_c, l_c, same, nc, n_levels))
                if "ngtdm" in schema.families:
                    put((ch, "ngtdm"), c0, c1, _texture.ngtdm(xp, cell_c, l_c, cnt, tot, nc, n_levels))
            check_cancel(cancel)
        del pairs, lab_c
        if progress is not None:
            progress(0.9 * c1 / n_cells)
    for ch in schema.channels:  # whole-image families: all cells at once
        _, _, n_levels, levimg, _ = chan[ch]
        if "glrlm" in schema.families and xp.name == "numpy":
            key_img = (lab * n_levels + levimg).reshape(stack_shape)
            valid = valid_all[ch][0] if len(bounds) == 1 else xp.concat(valid_all[ch])
            put((ch, "glrlm"), 0, n_cells, _texture.glrlm(xp, key_img, n_levels, n_cells, n_levels, valid))
            del key_img
        if "glszm" in schema.families:
            put((ch, "glszm"), 0, n_cells, glszm_vals[ch])
        check_cancel(cancel)

    out = _download(xp, out[rank])  # back to the original (patch, label) order
    results, k = [], 0
    for i in ids:
        results.append((i, out[k : k + len(i)]))
        k += len(i)
    return results
