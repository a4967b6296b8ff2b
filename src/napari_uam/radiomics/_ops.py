"""The few array primitives the batched engine needs, for NumPy and for PyTorch.

The engine is written once against this namespace so that the NumPy path, the torch-CPU path
(tested for parity) and the CUDA path run the same arithmetic in the same order.
"""

from __future__ import annotations

import numpy as np

F64 = "f64"
I64 = "i64"
#: Matrices per batched eigensolver call on torch.
_EIG_BATCH = 8192


class NumpyOps:
    """NumPy implementation (CPU)."""

    name = "numpy"

    def __init__(self):
        self.f64, self.i64 = np.float64, np.int64

    def asarray(self, a, dtype=None):
        return np.asarray(a, dtype={None: None, F64: np.float64, I64: np.int64}[dtype])

    def to_numpy(self, a):
        return np.asarray(a)

    def zeros(self, shape, dtype=F64):
        return np.zeros(shape, dtype=np.float64 if dtype == F64 else np.int64)

    def arange(self, n):
        return np.arange(n, dtype=np.int64)

    def f(self, a):
        return a.astype(np.float64, copy=False)

    def i(self, a):
        return a.astype(np.int64, copy=False)

    def bincount(self, x, weights=None, minlength=0):
        return np.bincount(x, weights=weights, minlength=minlength).astype(np.float64, copy=False)

    def nonzero(self, mask):
        return np.flatnonzero(mask)

    def sort(self, x):
        return np.sort(x, kind="stable")

    def argsort(self, x):
        return np.argsort(x, kind="stable")

    def unique_counts(self, x):
        return np.unique(x, return_counts=True)

    def unique_inverse(self, x):
        u, inv = np.unique(x, return_inverse=True)
        return u, inv.reshape(-1)

    def cumsum(self, x, axis=0):
        return np.cumsum(x, axis=axis)

    def where(self, c, a, b):
        return np.where(c, a, b)

    def eigvalsh(self, m):
        # (torch's CPU eigensolver is ~20% faster here, but calling it from forked worker
        # processes after torch was initialised can hang: the NumPy path stays torch-free.)
        return np.linalg.eigvalsh(m)

    def concat(self, arrs):
        return np.concatenate(arrs)

    def stack(self, arrs, axis=0):
        return np.stack(arrs, axis=axis)

    def segment_sums(self, seg, weights, n):
        """``[bincount(seg, w, n) for w in weights]`` (one scatter of all columns on torch)."""
        return [np.bincount(seg, weights=w, minlength=n) for w in weights]

    def scatter_max(self, n, index, values):
        out = np.zeros(n, dtype=values.dtype)
        np.maximum.at(out, index, values)
        return out

    def segment_max(self, n, seg, values):
        """Per segment maximum of ``values`` (``seg`` sorted, values >= 0); 0 for empty ones."""
        out = np.zeros(n, dtype=values.dtype)
        if seg.shape[0]:
            first = np.flatnonzero(np.concatenate([[True], seg[1:] != seg[:-1]]))
            out[seg[first]] = np.maximum.reduceat(values, first)
        return out

    def searchsorted(self, a, v, right=False):
        return np.searchsorted(a, v, side="right" if right else "left")

    def repeat(self, x, counts):
        return np.repeat(x, counts)

    def __getattr__(self, name):  # log2, sqrt, abs, maximum, minimum, floor, exp, ...
        return getattr(np, name)


class TorchOps:
    """PyTorch implementation (CPU or CUDA), float64 throughout for parity."""

    name = "torch"

    def __init__(self, device: str = "cpu"):
        import torch

        self.torch = torch
        self.device = torch.device(device)
        self.f64, self.i64 = torch.float64, torch.int64

    def asarray(self, a, dtype=None):
        t = self.torch
        dt = {None: None, F64: t.float64, I64: t.int64}[dtype]
        if isinstance(a, t.Tensor):
            return a.to(device=self.device, dtype=dt) if dt is not None else a.to(self.device)
        arr = np.ascontiguousarray(a)
        if not arr.flags.writeable:  # torch warns on read-only buffers (the cached LUTs)
            arr = arr.copy()
        if arr.dtype == np.uint16 or arr.dtype == np.uint32:
            arr = arr.astype(np.int64)
        return t.as_tensor(arr, device=self.device, dtype=dt)

    def to_numpy(self, a):
        return a.detach().cpu().numpy()

    def zeros(self, shape, dtype=F64):
        return self.torch.zeros(shape, dtype=self.torch.float64 if dtype == F64 else self.torch.int64,
                                device=self.device)  # fmt: skip

    def arange(self, n):
        return self.torch.arange(n, dtype=self.torch.int64, device=self.device)

    def f(self, a):
        return a.to(self.torch.float64)

    def i(self, a):
        return a.to(self.torch.int64)

    def bincount(self, x, weights=None, minlength=0):
        # A scatter-add into a table of the known size: torch.bincount would read max(x) back
        # to the host (a device sync per call). Every caller passes a minlength > max(x).
        t = self.torch
        if weights is None:
            weights = t.ones(x.shape[0], dtype=t.float64, device=x.device)
        out = t.zeros(int(minlength), dtype=t.float64, device=x.device)
        return out.index_add_(0, x, weights.to(t.float64))

    def nonzero(self, mask):
        return self.torch.nonzero(mask.reshape(-1), as_tuple=True)[0]

    def sort(self, x):
        return self.torch.sort(x, stable=True).values

    def argsort(self, x):
        return self.torch.argsort(x, stable=True)

    def unique_counts(self, x):
        return self.torch.unique(x, sorted=True, return_counts=True)

    def unique_inverse(self, x):
        return self.torch.unique(x, sorted=True, return_inverse=True)

    def cumsum(self, x, axis=0):
        return self.torch.cumsum(x, dim=axis)

    def where(self, c, a, b):
        t = self.torch
        if not isinstance(a, t.Tensor) and not isinstance(b, t.Tensor):
            a = t.full(c.shape, a, dtype=t.float64, device=c.device)
        return t.where(c, a, b)  # a Python scalar needs no host-to-device copy here

    def eigvalsh(self, m):
        # cuSOLVER's batched symmetric eigensolver fails (CUSOLVER_STATUS_INTERNAL_ERROR) on
        # very large batches: feed it slices of at most _EIG_BATCH matrices.
        n = m.shape[0]
        if n <= _EIG_BATCH:
            return self.torch.linalg.eigvalsh(m)
        return self.torch.cat([self.torch.linalg.eigvalsh(m[k : k + _EIG_BATCH]) for k in range(0, n, _EIG_BATCH)])

    def concat(self, arrs):
        return self.torch.cat(arrs)

    def stack(self, arrs, axis=0):
        return self.torch.stack(arrs, dim=axis)

    def segment_sums(self, seg, weights, n):
        """``[bincount(seg, w, n) for w in weights]``, one 1-D scatter-add each: on an H100 a
        single (n, K) ``index_add_`` (plus stacking the K weight columns) took ~2x longer
        in total than the K separate 1-D scatters (torch.profiler, 64 CoNSeP patches)."""
        return [self.bincount(seg, weights=w, minlength=n) for w in weights]

    def scatter_max(self, n, index, values):
        out = self.torch.zeros(n, dtype=values.dtype, device=self.device)
        return out.scatter_reduce(0, index, values, reduce="amax", include_self=True)

    def segment_max(self, n, seg, values):
        return self.scatter_max(n, seg, values)

    def searchsorted(self, a, v, right=False):
        return self.torch.searchsorted(a, v, right=right)

    def repeat(self, x, counts):
        return self.torch.repeat_interleave(x, counts)

    def __getattr__(self, name):
        return getattr(self.torch, name)
