"""Mixture-of-Experts feed-forward with top-k routing and a load-balancing loss."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class MoE(nn.Module):
    """Top-k routed mixture of SiLU MLP experts (Switch/Mixtral routing, Jamba-style layer).

    Each token's router softmax picks its ``top_k`` experts; their outputs are mixed with the
    router probabilities renormalised over the chosen experts. The experts are tiny here (a few
    hundred weights), so all of them are evaluated densely with batched einsums and the
    unchosen ones get weight 0: the result is identical to sparse dispatch, and gathering tokens
    per expert would cost more than the arithmetic it saves.

    The load-balancing loss (Switch Transformer) ``E * sum_e f_e * P_e`` (f_e: fraction of
    routing slots sent to expert e, P_e: mean router probability of e) is 1 when balanced and is
    stored in :attr:`aux_loss` after each forward.

    Args:
        d_model: token width.
        n_experts: number of experts E.
        top_k: experts per token.
        hidden: hidden width of each expert.

    Shapes:
        forward: (batch, L, d_model) -> (batch, L, d_model).
    """

    def __init__(self, d_model: int, n_experts: int = 4, top_k: int = 2, hidden: int = 16):
        super().__init__()
        if not 1 <= top_k <= n_experts:
            raise ValueError(f"top_k={top_k} must be in 1..n_experts={n_experts}")
        self.n_experts, self.top_k = n_experts, top_k
        self.router = nn.Linear(d_model, n_experts, bias=False)
        self.w1 = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, hidden, d_model))
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_model))
        # Same init as nn.Linear for each expert.
        nn.init.uniform_(self.w1, -1 / math.sqrt(d_model), 1 / math.sqrt(d_model))
        nn.init.uniform_(self.w2, -1 / math.sqrt(hidden), 1 / math.sqrt(hidden))
        self.aux_loss = torch.zeros(())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = F.softmax(self.router(x).float(), dim=-1)  # (b, l, E)
        top_p, top_i = probs.topk(self.top_k, dim=-1)
        gates = torch.zeros_like(probs).scatter(-1, top_i, top_p / top_p.sum(-1, keepdim=True))
        hidden = F.silu(torch.einsum("bld,edh->bleh", x, self.w1) + self.b1)
        out = torch.einsum("bleh,ehd->bled", hidden, self.w2) + self.b2  # (b, l, E, d)
        y = (out * gates.to(out.dtype)[..., None]).sum(dim=2)
        # Load balance: fraction of top-k slots per expert times mean router probability.
        frac = F.one_hot(top_i, self.n_experts).float().mean(dim=(0, 1, 2))
        self.aux_loss = self.n_experts * (frac * probs.mean(dim=(0, 1))).sum()
        return y
