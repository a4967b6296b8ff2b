"""The "learned" segmentation backend: :class:`~.unet.NucleiUNet` + marker watershed.

The network was trained at :data:`NET_MPP` (CoNSeP, 40x). :func:`segment_learned` takes the
image at its own pixel size, resamples it to the network's, predicts the maps tile by tile,
post-processes the stitched maps in one piece and resizes the labels back, so callers never
resample themselves.

Tiling: the padded image is cut into tiles of ``tile_px`` pixels whose outer ``MARGIN_PX``
pixels only give context; the interiors of the *network outputs* are pasted side by side into
one map, and the post-processing runs once on that map. Tile origins are multiples of the
network's stride, so a tiled prediction equals a one-pass one up to the influence of zero
padding beyond the margin, which :data:`MARGIN_PX` keeps below 1e-5: no nucleus is cut at a
tile border and the labels are the same.

The weights file (:data:`WEIGHTS_PATH`) holds a dict: ``config`` (the architecture),
``net_mpp``, ``state_dict`` (fp16 tensors), and optionally ``postprocess`` (tuned
:class:`~.postprocess.PostParams` overrides) and ``meta`` (training summary).
"""

from __future__ import annotations

import math
import os
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Callable

import numpy as np

from ..classify.cache import weights_cache
from ..device import resolve_device
from ..errors import CancelledError, UAMError
from ..scale import rescale_image, resize_labels, scale_factor
from .postprocess import PostParams, instances

#: Pixel size the shipped network was trained at (CoNSeP is scanned at 40x).
NET_MPP = 0.25
#: The shipped weights.
WEIGHTS_PATH = Path(__file__).resolve().parents[1] / "weights" / "nuclei_unet.pt"
#: Context pixels around each tile's interior (a multiple of the network's stride). The
#: network's receptive field reaches about 134 px; with 128 px of context a tiled prediction
#: differs from a one-pass one by < 1e-5 (64 px left differences up to 0.18 near tile borders,
#: enough to move a watershed line).
MARGIN_PX = 128
#: Default tile side in network pixels (interior of up to 1024 px plus the margins): a
#: 1000x1000 patch at 0.25 um/px runs in one pass, and memory stays near 0.5 GB on the CPU
#: whatever the image size.
TILE_PX = 1280

#: Where "auto" may pick weights that do not record it (the v1 network, validated at 40x only).
DEFAULT_AUTO_MPP_RANGE = (0.2, 0.35)

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
                if not isinstance(ckpt, dict) or not {"config", "state_dict", "net_mpp"} <= set(ckpt):
                    raise UAMError(f"{path} is not a napari-uam nuclei U-Net checkpoint.")
            except UAMError as exc:
                ckpt = exc
            except Exception as exc:  # torch raises many types for truncated or corrupt files
                ckpt = UAMError(
                    f"Cannot read nuclei segmentation weights {path} (truncated or corrupt? "
                    f"reinstall napari-uam or point NAPARI_UAM_SEG_WEIGHTS at a good copy): {exc}"
                )
            _CACHE.clear()
            # A failure is cached too, so "auto" does not re-read a bad file on every call.
            _CACHE[key] = ckpt
        if isinstance(_CACHE[key], UAMError):
            raise _CACHE[key]
        return _CACHE[key]


def build_model(ckpt: dict, device: str = "cpu", for_inference: bool = True):
    """A :class:`~.unet.NucleiUNet` in eval mode with the checkpoint's weights (fp32).

    Args:
        ckpt: a dict from :func:`load_checkpoint`.
        device: torch device.
        for_inference: fold the BatchNorms into the convolutions and use the channels-last
            memory layout: together about 2x faster on a 2-core CPU (measured 3.5 s -> 1.8 s
            on a 1264x1264 tile), same outputs to 3e-5. False keeps the trainable layout.
    """
    import torch

    from .unet import NucleiUNet, UNetConfig, fold_batchnorm

    model = NucleiUNet(UNetConfig.from_dict(ckpt["config"]))
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    model = model.to(device).eval()
    if for_inference:
        # oneDNN's channels-last convolutions skip the layout reorders done around each
        # NCHW convolution; the input (an HWC image permuted) is channels-last already.
        model = fold_batchnorm(model).to(memory_format=torch.channels_last)
    return model


def _model(device: str):
    """The built network on ``device`` and its checkpoint, from the one weights cache
    (:data:`napari_uam.classify.cache.weights_cache`, keyed on the file's identity)."""
    ckpt = load_checkpoint()

    def build():
        try:
            return build_model(ckpt, device)
        except Exception as exc:  # wrong shapes or names: a checkpoint of another network
            # Returned, so cached: "auto" asks on every call and must not rebuild a bad file.
            return UAMError(f"Nuclei segmentation weights {weights_path()} do not fit the network: {exc}")

    model = weights_cache.get("nuclei-unet", weights_path(), device, build)
    if isinstance(model, UAMError):
        raise model
    return model, ckpt


def auto_mpp_range():
    """Pixel sizes where "auto" may pick the learned backend, as its weights file records.

    Returns:
        None (any pixel size), a (low, high) tuple in um/px, or "never"; the checkpoint's
        ``auto_mpp_range`` (set by ``research/segmentation/train_learned.py`` from its held-out numbers), else
        :data:`DEFAULT_AUTO_MPP_RANGE`. "never" too when the weights do not load (then the
        backend is unavailable anyway).
    """
    try:
        ckpt = load_checkpoint()
    except (UAMError, ImportError):
        return "never"
    rng = ckpt.get("auto_mpp_range", DEFAULT_AUTO_MPP_RANGE)
    if rng is None or rng == "never":
        return rng
    lo, hi = (float(v) for v in rng)
    return (lo, hi)


def unavailable_reason() -> str | None:
    """Why the learned backend cannot run here, or None when it can.

    Returns:
        None when torch imports and the weights file loads into the network; otherwise a
        one-line explanation (missing, truncated or mismatching weights, torch not installed).
    """
    try:
        _model("cpu")
    except ImportError as exc:
        return f"PyTorch is not installed ({exc})."
    except UAMError as exc:
        return str(exc)
    except Exception as exc:  # anything else also means "fall back to the watershed"
        return f"{type(exc).__name__}: {exc}"
    return None


def is_available() -> bool:
    """True when torch imports and the weights file loads into the network."""
    return unavailable_reason() is None


def predict_maps(
    model,
    image: np.ndarray,
    device: str = "cpu",
    tile_px: int = TILE_PX,
    margin_px: int = MARGIN_PX,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> np.ndarray:
    """Run the network over an image in overlapping tiles and stitch the outputs.

    Args:
        model: a :class:`~.unet.NucleiUNet` in eval mode on ``device``.
        image: (H, W, 3) uint8 RGB at the network's pixel size.
        device: torch device of ``model``.
        tile_px: largest tile side including the margins (interiors are multiples of the
            network's stride, at least one stride).
        margin_px: context kept around each tile interior and discarded after the network.
        progress: optional ``progress(fraction, message)``.
        cancel: optional ``cancel() -> bool``, polled before each tile and before each
            convolution inside the network, so a cancel acts within a fraction of a second
            even when one tile takes seconds on a small CPU.

    Returns:
        (4, H, W) float32 activated maps (see :func:`~.unet.activate`).

    Raises:
        CancelledError: ``cancel()`` returned True.
    """
    import torch

    from .unet import activate

    s = model.config.stride
    m = int(math.ceil(margin_px / s) * s)
    core = max(s, (int(tile_px) - 2 * m) // s * s)
    h, w = image.shape[:2]
    ny, nx = max(1, math.ceil(h / core)), max(1, math.ceil(w / core))
    # Balanced tiles: the fewest tiles of at most ``core`` pixels, each only as large as needed
    # (a 1000 px side is one 1008 px interior, 2000 px two of 1008, not 896 + 896 + 896 of
    # which most is padding); an image that fits runs in one pass of just the size it needs.
    cy = math.ceil(h / ny / s) * s
    cx = math.ceil(w / nx / s) * s
    pad = ((m, ny * cy + m - h), (m, nx * cx + m - w), (0, 0))
    # Reflection gives the network tissue-like context at the image border; the same padded
    # canvas is cut for every tiling, so the border context does not depend on the tile size.
    canvas = np.pad(image, pad, mode="reflect") if min(h, w) > 1 else np.pad(image, pad, mode="edge")
    out = np.empty((4, ny * cy, nx * cx), np.float32)
    use_amp = str(device).startswith("cuda")
    with torch.inference_mode(), _cancel_inside(model, cancel):
        for k, (iy, ix) in enumerate((a, b) for a in range(ny) for b in range(nx)):
            check_cancel(cancel)
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


def check_cancel(cancel: Callable[[], bool] | None) -> None:
    """Raise :class:`CancelledError` when ``cancel`` is given and returns True."""
    if cancel is not None and cancel():
        raise CancelledError("Segmentation cancelled; no result was produced.")


@contextmanager
def _cancel_inside(model, cancel: Callable[[], bool] | None):
    """Poll ``cancel`` before every convolution of ``model`` run by this thread.

    The model is cached and may be shared by several threads; the hook only acts in the
    thread that installed it, and is removed on exit.
    """
    if cancel is None:
        yield
        return
    import torch

    me = threading.get_ident()

    def hook(_module, _inputs):
        if threading.get_ident() == me:
            check_cancel(cancel)

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def segment_learned(
    image: np.ndarray,
    mpp: float,
    progress: Callable[[float, str], None] | None = None,
    device: str = "cpu",
    tile_px: int = TILE_PX,
    cancel: Callable[[], bool] | None = None,
    **params,
) -> np.ndarray:
    """Segment nuclei with the shipped network (the "learned" backend).

    Args:
        image: (H, W, 3) uint8 RGB at pixel size ``mpp`` (already validated).
        mpp: microns per pixel of ``image``.
        progress: optional ``progress(fraction, message)``.
        device: "cpu", "cuda" or "auto".
        tile_px: largest tile side in network pixels; memory for the network stays bounded
            (about 0.5 GB at the default 1280) whatever the image size.
        cancel: optional ``cancel() -> bool``, polled per tile and inside the network.
        **params: :class:`~.postprocess.PostParams` overrides, e.g. ``min_area_um2=5``.

    Returns:
        (H, W) int32 labels at the input's resolution, 0 background, ids 1..N.
    """
    device = resolve_device(device)
    model, ckpt = _model(device)
    post = PostParams.from_kwargs(PostParams.from_kwargs(**ckpt.get("postprocess", {})), **params)
    return segment_with_model(model, image, mpp, float(ckpt["net_mpp"]), device, post, tile_px, progress, cancel)


def segment_with_model(
    model,
    image: np.ndarray,
    mpp: float,
    net_mpp: float,
    device: str = "cpu",
    post: PostParams | None = None,
    tile_px: int = TILE_PX,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
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
        cancel: optional ``cancel() -> bool`` (see :func:`predict_maps`); also polled
            between resampling, prediction, post-processing and resizing.

    Returns:
        (H, W) int32 labels, ids 1..N.

    Raises:
        CancelledError: ``cancel()`` returned True.
    """
    report = progress or (lambda f, msg: None)
    f = scale_factor(mpp, net_mpp)
    report(0.0, f"resampling to {net_mpp:g} um/px" if f != 1.0 else "network")
    check_cancel(cancel)
    img = rescale_image(image, f)
    maps = predict_maps(
        model, img, device, tile_px, progress=lambda q, msg: report(0.05 + 0.75 * q, msg), cancel=cancel
    )
    check_cancel(cancel)
    report(0.8, "marker watershed")
    labels = instances(maps, net_mpp, post, cancel=cancel)
    check_cancel(cancel)
    labels = resize_labels(labels, image.shape[:2])
    report(1.0, f"{int(labels.max())} nuclei")
    return labels
