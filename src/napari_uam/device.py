"""Choosing the compute device: ``"auto"`` takes CUDA when torch sees a GPU, else the CPU."""

from __future__ import annotations

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
