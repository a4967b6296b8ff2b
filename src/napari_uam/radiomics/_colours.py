"""Colour lookups shared by the torch engine and the CUDA kernels: packed RGB -> channel value
tables (one per channel and device, built once) and the packing of uint8 colours."""

from __future__ import annotations

from .schema import channel_lut

_LUT_CACHE: dict = {}


def _lut(xp, channel):
    key = (xp.name, str(getattr(xp, "device", "")), channel)
    if key not in _LUT_CACHE:
        _LUT_CACHE[key] = xp.asarray(channel_lut(channel))
    return _LUT_CACHE[key]


def _pack_rgb(rgb):
    """(N, 3) uint8 torch colours -> (N,) int64 ``r << 16 | g << 8 | b`` (the lookup index)."""
    import torch

    t = rgb.to(torch.int32)
    return (t[:, 0] * 65536 + t[:, 1] * 256 + t[:, 2]).to(torch.int64)
