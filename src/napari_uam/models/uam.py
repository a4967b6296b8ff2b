"""UAM, the Unified Attention-Mamba network (paper sections 3.1-3.3), and its ablations UAM-L / UAM-M.

A UAM block (Eq. 2-8) is ``x + Amamba(RMSNorm(x))`` followed by ``x + AmambaMoE(RMSNorm(x))``.
UAM-L keeps only the Amamba layer per block, UAM-M only the Amamba-MoE layer.
"""

from __future__ import annotations

import torch
from torch import nn

from .layers import Attention, CellClassifierNet, RadiomicsTokenizer, Residual
from .moe import MoE
from .ssm import Mamba


class Amamba(nn.Module):
    """Amamba layer (Eq. 4-6): Mamba output plus residual is the VALUE of an attention over the input.

    ``h = Mamba(x)``; ``V = W_v (h + x)``, ``Q = W_q x``, ``K = W_k x``;
    ``O = softmax(Q K^T / sqrt(d_k)) V`` (then the usual output projection). The SSM carries
    long-range context along the feature sequence; attention, keyed on the raw embeddings,
    decides which positions' SSM summaries each token reads.

    Shapes:
        forward: (batch, L, d_model) (already RMS-normalised) -> (batch, L, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, mamba_kwargs: dict):
        super().__init__()
        self.mamba = Mamba(d_model, **mamba_kwargs)
        self.attn = Attention(d_model, n_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.attn(x, value=self.mamba(x) + x)


class AmambaMoE(nn.Module):
    """Amamba-MoE layer (Eq. 7-8): MoE over fused self-attention and Mamba outputs, with residual.

    ``O' = W_p concat(SelfAttn(O), Mamba(O))`` (2d -> d projection so the residual and the
    experts keep width d), then ``MoE(O' + O)``.

    Shapes:
        forward: (batch, L, d_model) (already RMS-normalised) -> (batch, L, d_model).
    """

    def __init__(self, d_model: int, n_heads: int, mamba_kwargs: dict, moe_kwargs: dict):
        super().__init__()
        self.attn = Attention(d_model, n_heads)
        self.mamba = Mamba(d_model, **mamba_kwargs)
        self.fuse = nn.Linear(2 * d_model, d_model, bias=False)
        self.moe = MoE(d_model, **moe_kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fused = self.fuse(torch.cat([self.attn(x), self.mamba(x)], dim=-1))
        return self.moe(fused + x)


def split_config(cfg: dict) -> tuple[dict, dict]:
    """Mamba and MoE keyword arguments from a flat model config."""
    mamba = {
        "d_state": cfg["d_state"],
        "d_conv": cfg["d_conv"],
        "expand": cfg["expand"],
        "backend": cfg["backend"],
    }
    moe = {"n_experts": cfg["n_experts"], "top_k": cfg["top_k"], "hidden": cfg["expert_hidden"]}
    return mamba, moe


def build_uam(name: str, cfg: dict) -> CellClassifierNet:
    """UAM (``"uam"``), UAM-L (``"uam-l"``) or UAM-M (``"uam-m"``) from a full config dict."""
    d, heads = cfg["d_model"], cfg["n_heads"]
    mk, ek = split_config(cfg)
    blocks: list[nn.Module] = []
    for _ in range(cfg["n_blocks"]):
        if name in ("uam", "uam-l"):
            blocks.append(Residual(d, Amamba(d, heads, mk)))
        if name in ("uam", "uam-m"):
            blocks.append(Residual(d, AmambaMoE(d, heads, mk, ek)))
    tok = RadiomicsTokenizer(cfg["n_features"], cfg["token_size"], d)
    return CellClassifierNet(name, cfg, tok, blocks, d, cfg["n_classes"])
