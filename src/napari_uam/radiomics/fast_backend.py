"""The batched feature engine: all cells of one or many patches at once, NumPy or PyTorch.

Patches are stacked into one (B, H+2, W+2) label image padded with background, with cell ids
made unique across the batch. Cells are then a *pixel list* (flat indices into that image):
every neighbour lookup is ``lab[pix + offset]``, every per-cell matrix a ``bincount`` over
(cell, ...) keys, so there is no per-cell Python loop. The co-occurrence, run and zone
matrices are sparse (only their non-zero (cell, i, j) entries exist) and all cells are
processed at once; only inputs of more than ``_CHUNK_PIXELS`` cell pixels are split into a few
cell chunks, to bound memory. Run lengths (GLRLM) are read off the (cell, level)-keyed image
line by line, and MCC's eigenvalues come from one batched solver call per matrix size.

The same code runs on NumPy (CPU) and on PyTorch (CPU for the parity tests, CUDA in
production) through :mod:`._ops`; everything is float64. Same-level zones (GLSZM) are
labelled with scikit-image on the NumPy path and with a hook-and-compress union-find on the
torch path; both give the same partition.

When numba imports, the NumPy path runs the per-cell families as compiled, GIL-free loops over
the cells (:mod:`._numba`, see :func:`_numba_chunk`); ``device="numpy-pure"`` keeps the pure
NumPy code, the fallback, which is parity tested as well.
"""

from __future__ import annotations

import numpy as np

from . import _numba, _shape, _texture
from ._ops import NumpyOps, TorchOps
from .schema import FeatureSchema, channel_lut

_LUT_CACHE: dict = {}

#: Cell pixels per chunk of the per-cell families (memory bound on very large inputs; a
#: 1000x1000 patch at 0.5 um/px holds about 50,000, a batch of 64 such about 3 M).
_CHUNK_PIXELS = {"cpu": 1 << 20, "cuda": 1 << 24}


def make_ops(device: str):
    """NumPy ops for ``"numpy"`` (with the compiled kernels of :mod:`._numba` when numba
    imports) and ``"numpy-pure"`` (NumPy only), torch ops for ``"cpu"``/``"cuda[:n]"``."""
    if device in ("numpy", "numpy-pure"):
        ops = NumpyOps()
        ops.numba = device == "numpy" and _numba.AVAILABLE
        return ops
    return TorchOps(device)


def _lut(xp, channel):
    key = (xp.name, str(getattr(xp, "device", "")), channel)
    if key not in _LUT_CACHE:
        _LUT_CACHE[key] = xp.asarray(channel_lut(channel))
    return _LUT_CACHE[key]


def _stack(xp, images, labels):
    """Pad patches to a common (H, W) + 1-pixel border and relabel cells 1..C across the batch.

    Only a copy into the padded host arrays happens in NumPy; packing the colours and the
    relabelling run on the engine's device (one upload of uint8 RGB + int32 labels).

    Returns:
        rgb (B * Hp * Wp,) int64 packed colours, lab (B * Hp * Wp,) int64 compact ids,
        ids list of (n_b,) int64 host arrays (original label of each compact id, in order),
        (B, Hp, Wp).
    """
    h = max(im.shape[0] for im in images) + 2
    w = max(im.shape[1] for im in images) + 2
    nb = len(images)
    top = max(int(lb.max()) if lb.size else 0 for lb in labels) + 1
    if xp.name == "numpy":
        rgb = np.zeros((nb, h, w, 3), dtype=np.uint8)
        lab = np.zeros((nb, h, w), dtype=np.int32 if top < 2**31 else np.int64)
        for b, (im, lb) in enumerate(zip(images, labels)):
            rgb[b, 1 : 1 + im.shape[0], 1 : 1 + im.shape[1]] = im
            lab[b, 1 : 1 + lb.shape[0], 1 : 1 + lb.shape[1]] = lb
        rgb = rgb.reshape(-1, 3)
        packed = (rgb[:, 0].astype(np.int32) << 16) | (rgb[:, 1].astype(np.int32) << 8) | rgb[:, 2]
        del rgb
        t_lab = lab.reshape(-1)
    else:  # upload each patch in its smallest dtype and pad on the device
        torch = xp.torch
        ldt = np.uint16 if top <= 65536 else np.int32 if top < 2**31 else np.int64
        rgb = torch.zeros((nb, h, w, 3), dtype=torch.uint8, device=xp.device)
        lab = torch.zeros((nb, h, w), dtype=torch.int64, device=xp.device)
        for b, (im, lb) in enumerate(zip(images, labels)):
            rgb[b, 1 : 1 + im.shape[0], 1 : 1 + im.shape[1]] = xp.asarray(np.ascontiguousarray(im, dtype=np.uint8))
            t = torch.from_numpy(np.ascontiguousarray(lb, dtype=ldt).view(np.int16 if ldt == np.uint16 else ldt))
            t = t.to(xp.device, non_blocking=False)
            if ldt == np.uint16:  # torch has no uint16 arithmetic everywhere: reinterpret int16
                t = t.to(torch.int64) & 0xFFFF
            lab[b, 1 : 1 + lb.shape[0], 1 : 1 + lb.shape[1]] = t
        t_rgb = xp.i(rgb.reshape(-1, 3))
        t_lab = lab.reshape(-1)
        packed = t_rgb[:, 0] * 65536 + t_rgb[:, 1] * 256 + t_rgb[:, 2]
        del t_rgb
    # (patch, label) keys: which are present, and each one's rank among them = compact id.
    key = t_lab if nb == 1 else (xp.arange(nb * h * w) // (h * w)) * top + t_lab
    if nb * top <= 8 * key.shape[0] + (1 << 20):
        present = xp.bincount(key, minlength=nb * top) > 0
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
    patch_of = keys // top
    ids = [keys[patch_of == b] % top for b in range(nb)]
    return packed, compact, ids, (nb, h, w)


def _img(xp, a):
    """Whole-image integer arrays are int32 on NumPy (memory on big patches), int64 on torch."""
    return a.astype(np.int32) if xp.name == "numpy" and a.dtype != np.int32 else a


def _zones_numpy(key_img):
    """8-connected components of equal non-zero keys, per patch; (B, Hp, Wp) ids from 1."""
    from skimage.measure import label

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

    Returns (N,) zone ids 0..Z-1.
    """
    torch = xp.torch
    n = pix.shape[0]
    where = torch.full((int(pix.max()) + width + 2,), -1, dtype=torch.int64, device=pix.device)
    where[pix] = torch.arange(n, device=pix.device)
    us, vs = [], []
    for off in (1, width - 1, width, width + 1):  # forward half of the 8-neighbourhood
        v = where[pix + off]
        ok = v >= 0
        ok &= key[pix + off] == key[pix]
        us.append(torch.nonzero(ok, as_tuple=True)[0])
        vs.append(v[ok])
    u, v = torch.cat(us), torch.cat(vs)
    comp = torch.arange(n, device=pix.device)
    while True:
        cu, cv = comp[u], comp[v]
        diff = cu != cv
        if not bool(diff.any()):
            break
        lo, hi = torch.minimum(cu[diff], cv[diff]), torch.maximum(cu[diff], cv[diff])
        comp = comp.scatter_reduce(0, hi, lo, reduce="amin", include_self=True)
        while True:  # pointer jumping until every pixel points at a root
            nxt = comp[comp]
            if bool((nxt == comp).all()):
                break
            comp = nxt
    return torch.unique(comp, return_inverse=True)[1]


def _numba_chunk(schema, chan, put, lab, pix_c, cell_c, c0, c1, starts, wp, spacing, valid_all):
    """Every per-cell family of cells c0..c1 with the compiled kernels of :mod:`._numba`."""
    nb = _numba
    nc = c1 - c0
    st = starts[c0 : c1 + 1] - starts[c0]
    sy, sx = spacing
    seg = ((sy * sy + sx * sx) ** 0.5) / 2
    perim_lut = np.array([d * seg + h * sx + v * sy for d, h, v in zip(_shape._DIAG, _shape._HORIZ, _shape._VERT)])
    sf = np.empty((nc, len(nb.SHAPE_NAMES)))
    nb.shape_cells(st, pix_c, lab, c0 + 1, wp, float(sy), float(sx), np.array(_shape._AREA), perim_lut, sf)
    put(("", "shape2D"), c0, c1, dict(zip(nb.SHAPE_NAMES, sf.T)))
    fams = schema.families
    for ch in schema.channels:
        values, level, n_levels, levimg, _ = chan[ch]
        v_c, l_c = values[starts[c0] : starts[c1]], level[starts[c0] : starts[c1]]
        ng = np.zeros(nc, dtype=np.int64)
        np.maximum.at(ng, cell_c, l_c)
        present = np.bincount(cell_c * n_levels + l_c, minlength=nc * n_levels).reshape(nc, n_levels) > 0
        n_present = present.sum(axis=1).astype(np.int64)
        if "firstorder" in fams:
            ff = np.empty((nc, len(nb.FIRSTORDER_NAMES)))
            nb.first_order_cells(st, v_c, l_c, n_levels, schema.mpp * schema.mpp * 1.0, ff)
            put((ch, "firstorder"), c0, c1, dict(zip(nb.FIRSTORDER_NAMES, ff.T)))
        gf = np.empty((nc, len(nb.GLCM_NAMES)))
        valid = np.empty((nc, 4), dtype=bool)
        nb.glcm_cells(st, pix_c, l_c, levimg, lab, c0 + 1, wp, ng, n_present, gf, valid)
        valid_all[ch].append(valid)
        if "glcm" in fams:
            put((ch, "glcm"), c0, c1, dict(zip(nb.GLCM_NAMES, gf.T)))
        if "glrlm" in fams:
            rf = np.empty((nc, len(nb.GLRLM_NAMES)))
            nb.glrlm_cells(st, pix_c, l_c, levimg, lab, c0 + 1, wp, ng, valid, rf)
            put((ch, "glrlm"), c0, c1, dict(zip(nb.GLRLM_NAMES, rf.T)))
        if "gldm" in fams or "ngtdm" in fams:
            df = np.empty((nc, len(nb.GLDM_NAMES)))
            tf = np.empty((nc, len(nb.NGTDM_NAMES)))
            nb.gldm_ngtdm_cells(st, pix_c, l_c, levimg, lab, c0 + 1, wp, ng, df, tf)
            if "gldm" in fams:
                put((ch, "gldm"), c0, c1, dict(zip(nb.GLDM_NAMES, df.T)))
            if "ngtdm" in fams:
                put((ch, "ngtdm"), c0, c1, dict(zip(nb.NGTDM_NAMES, tf.T)))


def extract_batch(images, labels, schema: FeatureSchema, device: str = "numpy", progress=None, chunk_pixels=None):
    """Features of every cell of every patch (see :func:`_extract_batch`)."""
    # Degenerate cells divide 0 by 0 on purpose (pyradiomics' NaNs); keep NumPy quiet about it.
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        return _extract_batch(images, labels, schema, device, progress, chunk_pixels)


def _extract_batch(images, labels, schema: FeatureSchema, device: str = "numpy", progress=None, chunk_pixels=None):
    """Features of every cell of every patch.

    Args:
        images: list of (H_b, W_b, 3) uint8 RGB patches at ``schema.mpp``.
        labels: list of (H_b, W_b) int instance maps (0 = background).
        schema: the feature schema.
        device: ``"numpy"`` (NumPy CPU, numba kernels when available), ``"numpy-pure"``
            (NumPy only), ``"cpu"`` (torch CPU) or ``"cuda[:n]"`` (torch GPU).
        progress: optional callable(fraction).
        chunk_pixels: most cell pixels per chunk of the per-cell families; None = the
            device's default (:data:`_CHUNK_PIXELS`). Smaller chunks need less memory.

    Returns:
        list over patches of (ids, values): (n_b,) int64 sorted label ids, (n_b, F) float64.
    """
    xp = make_ops(device)
    use_nb = getattr(xp, "numba", False)
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

    glszm_vals = {}
    for ch in schema.channels:
        values, level, n_levels, levimg, zone = chan[ch]
        if zone is not None:
            glszm_vals[ch] = _texture.glszm(xp, zone, cell_all, level, n_cells, n_levels)

    # Column layout of the output: shape, then per channel its families in schema order.
    col_of, k = {}, 0
    for fam_key in [("", "shape2D")] + [(ch, fam) for ch in schema.channels for fam in schema.families]:
        col_of[fam_key] = k
        k += len(fams[fam_key[1]])
    out = np.empty((n_cells, n_feat), dtype=np.float64)

    def put(fam_key, c0, c1, feats):
        k0 = col_of[fam_key]
        block = xp.stack([feats[f] for f in fams[fam_key[1]]], axis=1)
        out[c0:c1, k0 : k0 + block.shape[1]] = xp.to_numpy(block)

    # The per-cell families run on all cells at once (their matrices are sparse or small dense
    # (cells, levels) arrays); only on very large inputs are the cells split into a few chunks
    # of at most _CHUNK_PIXELS pixels, to bound memory.
    counts = xp.to_numpy(xp.bincount(cell_all, minlength=n_cells)).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(counts)])
    budget = chunk_pixels or _CHUNK_PIXELS["cuda" if str(device).startswith("cuda") else "cpu"]
    bounds, c0 = [], 0
    while c0 < n_cells:
        c1 = int(np.searchsorted(starts, starts[c0] + budget, side="right")) - 1
        c1 = min(n_cells, max(c1, c0 + 1))
        bounds.append((c0, c1))
        c0 = c1
    valid_all = {ch: [] for ch in schema.channels}
    for c0, c1 in bounds:
        nc = c1 - c0
        sl = slice(int(starts[c0]), int(starts[c1]))
        pix_c = pix[sl]
        cell_c = cell_all[sl] - c0
        if use_nb:  # compiled kernels: one loop over the chunk's cells per family
            _numba_chunk(schema, chan, put, lab, pix_c, cell_c, c0, c1, starts, wp, spacing, valid_all)
            if progress is not None:
                progress(0.9 * c1 / n_cells)
            continue
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
            if "gldm" in schema.families or "ngtdm" in schema.families:
                same, cnt, tot = _texture.neighbour_stats(xp, lab_c, pix_c, cell_c, l_c, levimg, wp)
                if "gldm" in schema.families:
                    put((ch, "gldm"), c0, c1, _texture.gldm(xp, cell_c, l_c, same, nc, n_levels))
                if "ngtdm" in schema.families:
                    put((ch, "ngtdm"), c0, c1, _texture.ngtdm(xp, cell_c, l_c, cnt, tot, nc, n_levels))
        del pairs, lab_c
        if progress is not None:
            progress(0.9 * c1 / n_cells)
    for ch in schema.channels:  # whole-image families: all cells at once
        _, _, n_levels, levimg, _ = chan[ch]
        if "glrlm" in schema.families and not use_nb:
            key_img = (lab * n_levels + levimg).reshape(stack_shape)
            valid = valid_all[ch][0] if len(bounds) == 1 else xp.concat(valid_all[ch])
            put((ch, "glrlm"), 0, n_cells, _texture.glrlm(xp, key_img, n_levels, n_cells, n_levels, valid))
            del key_img
        if "glszm" in schema.families:
            put((ch, "glszm"), 0, n_cells, glszm_vals[ch])

    out = out[xp.to_numpy(rank)]  # back to the original (patch, label) order
    results, k = [], 0
    for i in ids:
        results.append((i, out[k : k + len(i)]))
        k += len(i)
    return results
