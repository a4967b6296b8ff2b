"""Baselines of the UAM paper's Tables 1-2, with UAM's tokeniser and head: only the blocks differ.

* ``trans``: Transformer blocks (self-attention + MLP).
* ``trans-moe``: Transformer with the MLP replaced by a top-k MoE.
* ``mamba``: Mamba blocks (``x + Mamba(norm x)``, no MLP, as in the Mamba paper).
* ``mamba-moe``: Mamba followed by a MoE in every block (MoE-Mamba, the Jamba paper's Mamba-MoE).
* ``jamba``: the Jamba layout scaled to ``n_blocks`` layers: one attention layer per
  ``attn_every`` layers (1:3 attention:Mamba for 4 layers, attention in the second half as in
  Jamba), each mixer followed by an MLP that is a MoE on every other layer (Jamba's e=2).
"""

from __future__ import annotations

from torch import nn

from .layers import Attention, CellClassifierNet, FeedForward, RadiomicsTokenizer, Residual
from .moe import MoE
from .ssm import Mamba
from .uam import split_config


def build_baseline(name: str, cfg: dict) -> CellClassifierNet:
    """Build baseline ``name`` (see module docstring) from a full config dict."""
    d, heads, n = cfg["d_model"], cfg["n_heads"], cfg["n_blocks"]
    mk, ek = split_config(cfg)

    def ffn():
        return FeedForward(d, cfg["ffn_hidden"])

    blocks: list[nn.Module] = []
    for i in range(n):
        if name == "trans":
            blocks += [Residual(d, Attention(d, heads)), Residual(d, ffn())]
        elif name == "trans-moe":
            blocks += [Residual(d, Attention(d, heads)), Residual(d, MoE(d, **ek))]
        elif name == "mamba":
            blocks += [Residual(d, Mamba(d, **mk))]
        elif name == "mamba-moe":
            blocks += [Residual(d, Mamba(d, **mk)), Residual(d, MoE(d, **ek))]
        elif name == "jamba":
            k = cfg["attn_every"]
            # Jamba puts its attention layer in the middle of each group (index 4 of 8): here
            # index k//2 of each group of k layers (layer 2 of 0..3 for k=4).
            mixer = Attention(d, heads) if i % k == k // 2 else Mamba(d, **mk)
            mlp = MoE(d, **ek) if i % 2 == 1 else ffn()
            blocks += [Residual(d, mixer), Residual(d, mlp)]
        else:
            raise ValueError(f"not a baseline: {name!r}")
    tok = RadiomicsTokenizer(cfg["n_features"], cfg["token_size"], d)
    return CellClassifierNet(name, cfg, tok, blocks, d, cfg["n_classes"])
