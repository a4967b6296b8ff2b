"""Choosing the compute device: ``"auto"`` takes CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

import warnings

from .errors import DeviceError

DEVICES = ("auto", "cuda", "cpu")


def resolve_device(device: str = "auto") -> str:
    """Return ``"cuda"`` or ``"cpu"`` for a requested device, or raise :class:`DeviceError`."""
    if device not in DEVICES and not str(device).startswith("cuda:"):
        raise DeviceError(f"Unknown device {device!r}; choose one of {', '.join(DEVICES)}.")
    try:
        import torch
    except ImportError:  # the pipeline's numpy paths still work without torch
        if device == "cpu" or device == "auto":
            return "cpu"
        raise DeviceError("PyTorch is not installed, so CUDA cannot be used; choose device 'cpu'.")
    has_cuda = torch.cuda.is_available()
    if device == "auto":
        return "cuda" if has_cuda else "cpu"
    if str(device).startswith("cuda") and not has_cuda:
        raise DeviceError(
            "CUDA was requested but no GPU is visible to PyTorch on this machine; choose 'cpu' or 'auto'."
        )
    return str(device)


def retry_smaller_on_oom(run, size: int, min_size: int, retry_message, fallback):
    """``run(size)``, retried with 4-fold smaller sizes while the GPU runs out of memory.

    Shared by the feature engine (chunks of cell pixels) and the classifier (batches of
    cells): each retry issues a ``RuntimeWarning`` (``retry_message(new_size)``), which napari
    relays from its workers as a notification. When even ``min_size`` runs out of memory,
    ``fallback(size, error)`` decides: run elsewhere (the CPU) or re-raise.

    Args:
        run: ``run(size) -> result``.
        size: first size to try.
        min_size: smallest size tried before giving up on this device.
        retry_message: ``retry_message(size) -> str`` for the warning of each retry.
        fallback: ``fallback(size, error) -> result`` called after the last failure.
    """
    import torch

    while True:
        try:
            return run(size)
        except torch.cuda.OutOfMemoryError as err:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()  # give cached blocks back before trying smaller
            if size > min_size:
                size = max(min_size, size // 4)
                warnings.warn(retry_message(size), RuntimeWarning, stacklevel=3)
                continue
            return fallback(size, err)
