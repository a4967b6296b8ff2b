"""Low-level tensor operations of the models (selective scan and its CUDA-kernel dispatch)."""

from .selective_scan import (
    mamba_ssm_available,
    selective_scan_chunked,
    selective_scan_parallel,
    selective_scan_recurrent,
    selective_scan_cuda,
    selective_scan_sequential,
)

__all__ = [
    "mamba_ssm_available",
    "selective_scan_chunked",
    "selective_scan_parallel",
    "selective_scan_recurrent",
    "selective_scan_cuda",
    "selective_scan_sequential",
]
