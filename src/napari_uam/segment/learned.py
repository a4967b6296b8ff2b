"""The "learned" segmentation backend: :class:`~.unet.NucleiUNet` + marker watershed.

The network was trained at :data:`NET_MPP` (CoNSeP, 40x). :func:`segment_learned` takes the
image at its own pixel size, resamples it to the network's, predicts the maps tile by tile,
post-processes the stitched maps in one piece and resizes the labels back, so callers never
resample themselves.

Tiling: the padded image is cut into tiles of ``tile_px`` pixels whose outer ``MARGIN_PX``
pixels only give context; the interiors of the *network outputs* are pasted side by side into
one map, and the post-processing runs once on that map. Tile origins are multiples of the
network's stride, so a tiled prediction equals a one-pass one up to the (negligible) influence
of zero padding beyond the margin: no nucleus is cut at a tile border.

The weights file (:data:`WEIGHTS_PATH`) holds a dict: ``config`` (the architecture),
``net_mpp``, ``state_dict`` (fp16 tensors), and optionally ``postprocess`` (tuned
:class:`~.postprocess.PostParams` overrides) and ``meta`` (training summary).
"""

from __future__ import annotations

import math
import os
import threading
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import UAMError
from ..scale import rescale_image, resize_labels, scale_factor
from .postprocess import PostParams, instances

#: Pixel size the shipped network was trained at (CoNSeP is scanned at 40x).
NET_MPP = 0.25
#: The shipped weights.
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "nuclei_unet.pt"
#: Context pixels around each tile's interior (a multiple of the network's stride).
MARGIN_PX = 64
#: Default tile side in network pixels; images up to about this size run in one pass.
TILE_PX = 1024

_CACHE: dict = {}
_LOCK = threading.Lock()


def weights_path() -> Path:
    """The weights file used: ``$NAPARI_UAM_SEG_WEIGHTS`` when set, else :data:`WEIGHTS_PATH`."""
    return Path(os.environ.get("NAPARI_UAM_SEG_WEIGHTS", WEIGHTS_PATH))


def load_checkpoint(path: Path | str | None = None) -> dict:
    """Read a weights file (no model built), cached by path and modification time.

    Raises:
        UAMError: the file is missing or is not a nuclei U-Net checkpoint.
    """
    path = Path(path) if path is not None else weights_path()
    try:
        key = (str(path), path.stat().st_mtime_ns)
    except OSError:
        raise UAMError(f"Nuclei segmentation weights not found at {path}.") from None
    import torch  # after the cheap existence check: "auto" asks this on every call
    with _LOCK:
        if key not in _CACHE:
            try:
                ckpt = torch.load(path, map_location="cpu", weights_only=True)
            except Exception as exc:  # torch raises many types for corrupt files
                raise UAMError(f"Cannot read nuclei segmentation weights {path}: {exc}") from exc
            if not isinstance(ckpt, dict) or not {"config", "state_dict", "net_mpp"} <= set(ckpt):
                raise UAMError(f"{path} is not a napari-uam nuclei U-Net checkpoint.")
            _CACHE.clear()
            _CACHE[key] = ckpt
        return _CACHE[key]


def build_model(ckpt: dict, device: str = "cpu"):
    """A :class:`~.unet.NucleiUNet` in eval mode with the checkpoint's weights (fp32)."""
    from .unet import NucleiUNet, UNetConfig

    model = NucleiUNet(UNetConfig.from_dict(ckpt["config"]))
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    return model.to(device).eval()


def _model(device: str):
    ckpt = load_checkpoint()
    key = ("model", id(ckpt), device)
    with _LOCK:
        if key not in _CACHE:
            _CACHE[key] = build_model(ckpt, device)
        return _CACHE[key], ckpt


def is_available() -> bool:
    """True when torch imports and the weights file loads into the network."""
    try:
        _model("cpu")
    except Exception:  # any failure means "fall back to the watershed"
        return False
    return True


def predict_maps(
    model,
    image: np.ndarray,
    device: str = "cpu",
    tile_px: int = TILE_PX,
    margin_px: int = MARGIN_PX,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """Run the network over an image in overlapping tiles and stitch the outputs.

    Args:
        model: a :class:`~.unet.NucleiUNet` in eval mode on ``device``.
        image: (H, W, 3) uint8 RGB at the network's pixel size.
        device: torch device of ``model``.
        tile_px: tile side including the margins (rounded to the network's stride; at least
            ``2 * margin_px + stride``).
        margin_px: context kept around each tile interior and discarded after the network.
        progress: optional ``progress(fraction, message)``.

    Returns:
        (4, H, W) float32 activated maps (see :func:`~.unet.activate`).
    """
    import torch

    from .unet import activate

    s = model.config.stride
    m = int(math.ceil(margin_px / s) * s)
    core = max(s, (int(tile_px) - 2 * m) // s * s)
    h, w = image.shape[:2]
    ny, nx = max(1, math.ceil(h / core)), max(1, math.ceil(w / core))
    # An image that fits in one tile runs in one pass of just the size it needs.
    cy = core if ny > 1 else math.ceil(h / s) * s
    cx = core if nx > 1 else math.ceil(w / s) * s
    pad = ((m, ny * cy + m - h), (m, nx * cx + m - w), (0, 0))
    # Reflection gives the network tissue-like context at the image border; the same padded
    # canvas is cut for every tiling, so the border context does not depend on the tile size.
    canvas = np.pad(image, pad, mode="reflect") if min(h, w) > 1 else np.pad(image, pad, mode="edge")
    out = np.empty((4, ny * cy, nx * cx), np.float32)
    use_amp = str(device).startswith("cuda")
    with torch.inference_mode():
        for k, (iy, ix) in enumerate((a, b) for a in range(ny) for b in range(nx)):
            y0, x0 = iy * cy, ix * cx
            tile = canvas[y0 : y0 + cy + 2 * m, x0 : x0 + cx + 2 * m]
            x = torch.from_numpy(np.ascontiguousarray(tile)).to(device)
            x = x.permute(2, 0, 1)[None].float().div_(255.0)
            with torch.autocast("cuda", dtype=torch.bfloat16, enabled=use_amp):
                y = activate(model(x).float())
            out[:, y0 : y0 + cy, x0 : x0 + cx] = y[0, :, m : m + cy, m : m + cx].float().cpu().numpy()
            if progress:
                progress((k + 1) / (ny * nx), f"network tile {k + 1}/{ny * nx}")
    return out[:, :h, :w]


def segment_learned(
    image: np.ndarray,
    mpp: float,
    progress: Callable[[float, str], None] | None = None,
    device: str = "cpu",
    tile_px: int = TILE_PX,
    **params,
) -> np.ndarray:
    """Segment nuclei with the shipped network (the "learned" backend).

    Args:
        image: (H, W, 3) uint8 RGB at pixel size ``mpp`` (already validated).
        mpp: microns per pixel of ``image``.
        progress: optional ``progress(fraction, message)``.
        device: "cpu", "cuda" or "auto".
        tile_px: tile side in network pixels (memory stays bounded by about 1 GB at 1024
            on the CPU whatever the image size).
        **params: :class:`~.postprocess.PostParams` overrides, e.g. ``min_area_um2=5``.

    Returns:
        (H, W) int32 labels at the input's resolution, 0 background, ids 1..N.
    """
    from ..device import resolve_device

    device = resolve_device(device)
    model, ckpt = _model(device)
    post = PostParams.from_kwargs(PostParams.from_kwargs(**ckpt.get("postprocess", {})), **params)
    return segment_with_model(
        model, image, mpp, float(ckpt["net_mpp"]), device, post, tile_px, progress
    )


def segment_with_model(
    model,
    image: np.ndarray,
    mpp: float,
    net_mpp: float,
    device: str = "cpu",
    post: PostParams | None = None,
    tile_px: int = TILE_PX,
    progress: Callable[[float, str], None] | None = None,
) -> np.ndarray:
    """Resample, predict, post-process and resize back with a given model.

    Shared by the backend and the training script's validation, so the numbers reported at
    training time come from the code path users run.

    Args:
        model: :class:`~.unet.NucleiUNet` in eval mode on ``device``.
        image: (H, W, 3) uint8 RGB at ``mpp`` microns per pixel.
        mpp: pixel size of ``image``.
        net_mpp: pixel size the model was trained at.
        device: torch device of ``model``.
        post: post-processing parameters (defaults when None).
        tile_px: tile side in network pixels.
        progress: optional ``progress(fraction, message)``.

    Returns:
        (H, W) int32 labels, ids 1..N.
    """
    report = progress or (lambda f, msg: None)
    f = scale_factor(mpp, net_mpp)
    report(0.0, f"resampling to {net_mpp:g} um/px" if f != 1.0 else "network")
    img = rescale_image(image, f)
    maps = predict_maps(
        model, img, device, tile_px, progress=lambda q, msg: report(0.05 + 0.75 * q, msg)
    )
    report(0.8, "marker watershed")
    labels = instances(maps, net_mpp, post)
    labels = resize_labels(labels, image.shape[:2])
    report(1.0, f"{int(labels.max())} nuclei")
    return labels
