"""Selective state-space (Mamba) layer with a CUDA-kernel backend and an exact PyTorch backend.

:class:`Mamba` holds exactly the parameters of ``mamba_ssm.Mamba`` under the same names
(``in_proj.weight``, ``conv1d.weight``, ``conv1d.bias``, ``x_proj.weight``, ``dt_proj.weight``,
``dt_proj.bias``, ``A_log``, ``D``, ``out_proj.weight``), initialised the same way, so a
state_dict moves between this layer, ``mamba_ssm.Mamba`` and either backend unchanged.

Backends (the parameters are the same; only the selective scan differs):

* ``"mamba_ssm"``: ``mamba_ssm``'s fused CUDA selective-scan kernel (CUDA tensors only).
* ``"torch"``: the scans of :mod:`napari_uam.models.ops`, run anywhere: the streaming
  recurrent form on the CPU for short sequences (least memory traffic, fastest there for a
  cell's ~13 tokens), the chunked form on the CPU for long ones (the image encoder's rows of up
  to 4,096 tokens) and the log-depth parallel form on GPUs (fewest kernel launches);
  ``layer.torch_scan`` forces one.
* ``"auto"`` (default): ``"mamba_ssm"`` for CUDA inputs when the package imports, else ``"torch"``.

Set the backend per layer with ``layer.backend = ...`` or for a whole model with
:func:`set_ssm_backend`.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .ops import (
    mamba_ssm_available,
    selective_scan_chunked,
    selective_scan_cuda,
    selective_scan_parallel,
    selective_scan_recurrent,
)

BACKENDS = ("auto", "torch", "mamba_ssm")
#: Pure-PyTorch scan forms (identical results up to fp32 rounding): "auto" = recurrent (short) or chunked (long)
#: sequences on the CPU, parallel on GPUs.
#: Longest sequence the CPU streams step by step; longer ones take the chunked scan (measured:
#: the shipped tumor-mask encoder's 4096-token rows 0.55 -> 0.18 s per 1000x1000 patch on 2 cores).
CPU_STREAM_MAX_LEN = 64
TORCH_SCANS = {
    "parallel": selective_scan_parallel,
    "recurrent": selective_scan_recurrent,
    "chunked": selective_scan_chunked,
}


def resolve_backend(backend: str, x: torch.Tensor) -> str:
    """The concrete backend (``"torch"`` or ``"mamba_ssm"``) for input ``x``."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown SSM backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if backend == "torch":
        return "torch"
    if backend == "mamba_ssm":
        if not x.is_cuda:
            raise ValueError("The 'mamba_ssm' backend needs CUDA tensors; use 'torch' on the CPU.")
        if not mamba_ssm_available():
            raise ValueError("mamba_ssm is not installed (or not importable); use backend 'torch'.")
        return "mamba_ssm"
    return "mamba_ssm" if x.is_cuda and mamba_ssm_available() else "torch"


class Mamba(nn.Module):
    """Mamba (S6) mixer: in_proj -> causal depthwise conv -> SiLU -> selective scan -> gate -> out_proj.

    Args:
        d_model: token width D.
        d_state: SSM state size N per channel.
        d_conv: causal convolution width.
        expand: inner width factor (d_inner = expand * d_model).
        dt_rank: rank of the step-size projection; ``"auto"`` = ceil(d_model / 16).
        dt_min, dt_max, dt_init_floor, dt_scale: step-size initialisation as in ``mamba_ssm``.
        conv_bias: bias of the depthwise convolution.
        bias: biases of in_proj / out_proj.
        backend: ``"auto"``, ``"torch"`` or ``"mamba_ssm"``.

    Shapes:
        forward: (batch, L, d_model) -> (batch, L, d_model).
    """

    def __init__(
        self,
        d_model: int,
        d_state: int = 16,
        d_conv: int = 4,
        expand: int = 2,
        dt_rank: int | str = "auto",
        dt_min: float = 0.001,
        dt_max: float = 0.1,
        dt_init_floor: float = 1e-4,
        dt_scale: float = 1.0,
        conv_bias: bool = True,
        bias: bool = False,
        backend: str = "auto",
    ):
        super().__init__()
        if backend not in BACKENDS:
            raise ValueError(f"Unknown SSM backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
        self.d_model, self.d_state, self.d_conv, self.expand = d_model, d_state, d_conv, expand
        self.d_inner = int(expand * d_model)
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.backend = backend
        self.torch_scan = "auto"  # "auto" | "parallel" | "recurrent" | "chunked" (not in the state_dict)

        self.in_proj = nn.Linear(d_model, self.d_inner * 2, bias=bias)
        self.conv1d = nn.Conv1d(
            self.d_inner,
            self.d_inner,
            kernel_size=d_conv,
            groups=self.d_inner,
            padding=d_conv - 1,
            bias=conv_bias,
        )
        self.x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * d_state, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)

        # Step-size init of mamba_ssm: softplus(dt_bias) log-uniform in [dt_min, dt_max].
        dt_std = self.dt_rank**-0.5 * dt_scale
        nn.init.uniform_(self.dt_proj.weight, -dt_std, dt_std)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min)).clamp(
            min=dt_init_floor
        )
        with torch.no_grad():
            self.dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus

        # S4D-real init: A = -(1..N) per channel, stored as log so that A stays negative.
        A = torch.arange(1, d_state + 1, dtype=torch.float32).repeat(self.d_inner, 1)
        self.A_log = nn.Parameter(torch.log(A))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=bias)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        """Mix along the sequence. (batch, L, d_model) -> (batch, L, d_model)."""
        _, seqlen, _ = hidden_states.shape
        xz = self.in_proj(hidden_states).transpose(1, 2)  # (b, 2*d_inner, L)
        x, z = xz.chunk(2, dim=1)
        # Causal depthwise conv: pad both sides (padding=d_conv-1) and keep the first L outputs.
        x = F.silu(self.conv1d(x)[..., :seqlen])
        x_dbl = self.x_proj(x.transpose(1, 2))  # (b, L, dt_rank + 2N)
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        dt = F.linear(dt, self.dt_proj.weight).transpose(1, 2)  # bias added inside the scan
        B = B.transpose(1, 2)  # (b, N, L)
        C = C.transpose(1, 2)
        A = -torch.exp(self.A_log.float())
        if resolve_backend(self.backend, hidden_states) == "mamba_ssm":
            scan = selective_scan_cuda
        elif self.torch_scan == "auto":
            # CUDA: the log-depth scan. CPU: streamed for the short sequences of a cell's tokens,
            # chunked for the image encoder's long ones (the per-step overhead would dominate).
            if hidden_states.is_cuda:
                scan = selective_scan_parallel
            else:
                scan = selective_scan_recurrent if seqlen <= CPU_STREAM_MAX_LEN else selective_scan_chunked
        else:
            scan = TORCH_SCANS[self.torch_scan]
        y = scan(
            x,
            dt,
            A,
            B,
            C,
            self.D.float(),
            z=z,
            delta_bias=self.dt_proj.bias.float(),
            delta_softplus=True,
        )
        return self.out_proj(y.transpose(1, 2))


def set_ssm_backend(model: nn.Module, backend: str, torch_scan: str | None = None) -> nn.Module:
    """Set the selective-scan backend (and optionally the torch scan form) of every
    :class:`Mamba` layer in ``model``; returns ``model``."""
    if backend not in BACKENDS:
        raise ValueError(f"Unknown SSM backend {backend!r}; choose one of {', '.join(BACKENDS)}.")
    if torch_scan is not None and torch_scan != "auto" and torch_scan not in TORCH_SCANS:
        raise ValueError(f"Unknown torch scan {torch_scan!r}; choose auto, {', '.join(TORCH_SCANS)}.")
    for module in model.modules():
        if isinstance(module, Mamba):
            module.backend = backend
            if torch_scan is not None:
                module.torch_scan = torch_scan
    return model
