"""Building blocks shared by UAM and the baselines: tokeniser, attention, feed-forward, classifier shell.

Every model in the zoo is ``RadiomicsTokenizer -> blocks -> RMSNorm -> mean over tokens -> Linear``;
only the blocks differ, so comparisons between architectures isolate the sequence mixer.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .moe import MoE


class RadiomicsTokenizer(nn.Module):
    """Eq. 1 of the UAM paper: a cell's F features as a sequence of l tokens, linearly embedded.

    The (normalised) feature vector is zero-padded to ``l * token_size`` and reshaped into
    ``l = ceil(F / token_size)`` consecutive groups of ``token_size`` features (schema order keeps
    related features, e.g. one GLCM family, in the same or neighbouring tokens). One shared linear
    map embeds every group; a learned position embedding tells the mixers which group a token
    holds (the same weights see different features at different positions, and attention alone
    is order-blind).

    Args:
        n_features: F, features per cell.
        token_size: features per token.
        d_model: embedding width.

    Shapes:
        forward: (batch, F) -> (batch, l, d_model).
    """

    def __init__(self, n_features: int, token_size: int, d_model: int):
        super().__init__()
        self.n_features, self.token_size = n_features, token_size
        self.n_tokens = math.ceil(n_features / token_size)
        self.pad = self.n_tokens * token_size - n_features
        self.embed = nn.Linear(token_size, d_model)
        self.pos = nn.Parameter(torch.zeros(self.n_tokens, d_model))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.n_features:
            raise ValueError(f"expected {self.n_features} features per cell, got {x.shape[-1]}")
        if self.pad:
            x = F.pad(x, (0, self.pad))
        tokens = x.reshape(x.shape[0], self.n_tokens, self.token_size)
        return self.embed(tokens) + self.pos


class Attention(nn.Module):
    """Multi-head scaled dot-product attention; the value may come from another sequence.

    ``forward(x)`` is self-attention. ``forward(x, value=v)`` is the cross-attention of Amamba
    (Eq. 5-6): query and key from ``x``, value from ``v`` (same length).

    Shapes:
        x, value: (batch, L, d_model) -> (batch, L, d_model).
    """

    def __init__(self, d_model: int, n_heads: int = 2):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model={d_model} is not divisible by n_heads={n_heads}")
        self.n_heads = n_heads
        self.q_proj = nn.Linear(d_model, d_model, bias=False)
        self.k_proj = nn.Linear(d_model, d_model, bias=False)
        self.v_proj = nn.Linear(d_model, d_model, bias=False)
        self.o_proj = nn.Linear(d_model, d_model, bias=False)

    def _heads(self, t: torch.Tensor) -> torch.Tensor:
        b, l, d = t.shape
        return t.view(b, l, self.n_heads, d // self.n_heads).transpose(1, 2)

    def forward(self, x: torch.Tensor, value: torch.Tensor | None = None) -> torch.Tensor:
        q, k = self._heads(self.q_proj(x)), self._heads(self.k_proj(x))
        v = self._heads(self.v_proj(x if value is None else value))
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(QK^T / sqrt(d_k)) V
        b, _, l, _ = out.shape
        return self.o_proj(out.transpose(1, 2).reshape(b, l, -1))


class FeedForward(nn.Module):
    """Two-layer MLP with SiLU. (batch, L, d_model) -> (batch, L, d_model)."""

    def __init__(self, d_model: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(d_model, hidden)
        self.fc2 = nn.Linear(hidden, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(x)))


class Residual(nn.Module):
    """Pre-norm residual wrapper ``x + f(RMSNorm(x))`` (Eq. 2: RMSNorm at the start of each block)."""

    def __init__(self, d_model: int, fn: nn.Module):
        super().__init__()
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fn(self.norm(x))


class CellClassifierNet(nn.Module):
    """Tokeniser, a stack of residual blocks, final RMSNorm, mean pooling over tokens, linear head.

    Args:
        name: registry name of the architecture (kept for checkpoints).
        config: the full config the model was built from (kept for checkpoints).
        tokenizer: the :class:`RadiomicsTokenizer`.
        blocks: residual blocks, each (batch, l, d) -> (batch, l, d).
        d_model: embedding width.
        n_classes: outputs of the head.

    Attributes:
        aux_loss: after each forward, the summed load-balancing loss of all MoE layers
            (a 0-dim tensor; zero for models without MoE).

    Shapes:
        forward: (batch, F) -> logits (batch, n_classes).
    """

    def __init__(self, name, config, tokenizer, blocks, d_model, n_classes):
        super().__init__()
        self.name, self.config = name, dict(config)
        self.tokenizer = tokenizer
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.RMSNorm(d_model, eps=1e-5)
        self.head = nn.Linear(d_model, n_classes)
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.tokenizer(x)
        for block in self.blocks:
            h = block(h)
        aux = [m.aux_loss for m in self.modules() if isinstance(m, MoE)]
        self.aux_loss = torch.stack(aux).sum() if aux else h.new_zeros(())
        return self.head(self.norm(h).mean(dim=1))
