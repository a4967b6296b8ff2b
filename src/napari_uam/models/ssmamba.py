"""SSMamba image encoder for H&E (LPR + DMS blocks, 4 stages) and its MAMIM pretraining.

After SSMamba (the project's seed paper 002): each stage k applies a Local Perception Residual
(LPR) module, then Directional Multi-scale (DMS) blocks, ``F_{k+1} = DMS(LPR(F_k))``; stages
downsample 2x and widen the channels. DMS mixes tokens in two parallel half-width paths:

* SSM path: Linear C -> C/2, bidirectional depthwise-separable Conv1D (centred kernel), SiLU,
  then a *bidirectional* selective scan: the shared :class:`~napari_uam.models.ssm.Mamba`
  layer run over the raster sequence and, with its own weights, over the reversed sequence
  (so ``mamba_ssm``'s CUDA kernel on GPUs and the exact PyTorch scan on CPUs, one state_dict).
* Conv path: Linear C -> C/2, regular Conv1D, SiLU.

Both halves are concatenated and projected back to C (channel-split design).

MAMIM (masked image modelling): 75 % of square patches of the input are replaced, at the stem
output, by a learnable mask token; a decoder with a DMS block reconstructs the pixels
(per-patch normalised, MAE style) and the loss is the MSE on masked patches only.

Sizes are small on purpose (a few 10^5 weights): the encoder runs at 2 um/px where a
1000x1000 patch at 0.5 um/px is 250x250 pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .ssm import Mamba

#: Default encoder configuration (enough to rebuild it: ``SSMambaEncoder(**config)``).
DEFAULT_ENCODER = {
    "widths": (24, 48, 72, 96),
    "depths": (1, 1, 2, 1),
    "d_state": 8,
    "conv_kernel": 5,
    "backend": "auto",
}


class LPR(nn.Module):
    """Local Perception Residual: 1x1 conv C->C/2 + BN + ReLU, depthwise kxk + BN, ReLU,
    1x1 conv C/2->C, plus the input (SSMamba eqs. 6-8).

    Shapes: (B, C, H, W) -> (B, C, H, W).
    """

    def __init__(self, channels: int, kernel: int = 3):
        super().__init__()
        half = max(channels // 2, 1)
        self.reduce = nn.Sequential(nn.Conv2d(channels, half, 1, bias=False), nn.BatchNorm2d(half), nn.ReLU())
        self.dw = nn.Sequential(
            nn.Conv2d(half, half, kernel, padding=kernel // 2, groups=half, bias=False), nn.BatchNorm2d(half)
        )
        self.expand = nn.Conv2d(half, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.expand(F.relu(self.dw(self.reduce(x)))) + x


class DMS(nn.Module):
    """Directional Multi-scale block (pre-norm residual) on a (B, L, C) token sequence.

    Args:
        d_model: token width C (even).
        d_state: SSM state per channel.
        conv_kernel: width of the centred depthwise (SSM path) and regular (conv path) Conv1D.
        backend: SSM backend of the two :class:`Mamba` layers.

    Shapes: (B, L, C) -> (B, L, C).
    """

    def __init__(self, d_model: int, d_state: int = 8, conv_kernel: int = 5, backend: str = "auto"):
        super().__init__()
        half = d_model // 2
        self.norm = nn.LayerNorm(d_model)
        self.ssm_in = nn.Linear(d_model, half)
        # Bidirectional depthwise-separable conv: centred depthwise + pointwise (SSMamba eq. 3).
        self.sep_dw = nn.Conv1d(half, half, conv_kernel, padding=conv_kernel // 2, groups=half)
        self.sep_pw = nn.Conv1d(half, half, 1)
        self.fwd = Mamba(half, d_state=d_state, d_conv=4, expand=1, backend=backend)
        self.bwd = Mamba(half, d_state=d_state, d_conv=4, expand=1, backend=backend)
        self.conv_in = nn.Linear(d_model, half)
        self.conv = nn.Conv1d(half, half, conv_kernel, padding=conv_kernel // 2)
        self.out = nn.Linear(2 * half, d_model)
        self.ffn_norm = nn.LayerNorm(d_model)
        self.ffn = nn.Sequential(nn.Linear(d_model, 2 * d_model), nn.GELU(), nn.Linear(2 * d_model, d_model))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        s = self.ssm_in(h).transpose(1, 2)
        s = F.silu(self.sep_pw(self.sep_dw(s))).transpose(1, 2)
        # Non-causal scan: forward sequence plus the reversed sequence (own weights).
        s = self.fwd(s) + self.bwd(s.flip(1)).flip(1)
        c = F.silu(self.conv(self.conv_in(h).transpose(1, 2))).transpose(1, 2)
        x = x + self.out(torch.cat([s, c], dim=-1))
        return x + self.ffn(self.ffn_norm(x))


def _tokens(x: torch.Tensor) -> torch.Tensor:
    return x.flatten(2).transpose(1, 2)  # (B, C, H, W) -> (B, H*W, C) raster order


def _grid(t: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return t.transpose(1, 2).reshape(t.shape[0], t.shape[2], h, w)


class Stage(nn.Module):
    """One hierarchy level: optional 2x downsampling (strided conv), LPR, DMS blocks."""

    def __init__(
        self, c_in: int, c_out: int, depth: int, downsample: bool, d_state: int, conv_kernel: int, backend: str
    ):
        super().__init__()
        self.down = (
            nn.Sequential(nn.Conv2d(c_in, c_out, 2, stride=2), nn.BatchNorm2d(c_out))
            if downsample
            else nn.Conv2d(c_in, c_out, 1)
        )
        self.lpr = LPR(c_out)
        self.blocks = nn.ModuleList(DMS(c_out, d_state, conv_kernel, backend) for _ in range(depth))
        self.norm = nn.LayerNorm(c_out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.lpr(self.down(x))
        h, w = x.shape[-2:]
        t = _tokens(x)
        for blk in self.blocks:
            t = blk(t)
        return _grid(self.norm(t), h, w)


class SSMambaEncoder(nn.Module):
    """Four-stage SSMamba encoder.

    Args:
        widths: channels of stages 1-4.
        depths: DMS blocks per stage.
        d_state, conv_kernel, backend: DMS settings.

    Shapes:
        forward: (B, 3, H, W) with H, W multiples of :attr:`stride` -> list of 4 maps
        (B, widths[k], H / 4 / 2^k, W / 4 / 2^k), k = 0..3.
    """

    #: Total downsampling of the last stage.
    stride = 32

    def __init__(
        self,
        widths=DEFAULT_ENCODER["widths"],
        depths=DEFAULT_ENCODER["depths"],
        d_state: int = 8,
        conv_kernel: int = 5,
        backend: str = "auto",
    ):
        super().__init__()
        widths, depths = tuple(int(w) for w in widths), tuple(int(d) for d in depths)
        self.config = {
            "widths": widths,
            "depths": depths,
            "d_state": d_state,
            "conv_kernel": conv_kernel,
            "backend": backend,
        }
        self.widths = widths
        c0 = widths[0]
        # Stem: two stride-2 convs to the stage-1 token grid (stride 4).
        self.stem = nn.Sequential(
            nn.Conv2d(3, c0 // 2, 3, stride=2, padding=1),
            nn.BatchNorm2d(c0 // 2),
            nn.GELU(),
            nn.Conv2d(c0 // 2, c0, 3, stride=2, padding=1),
            nn.BatchNorm2d(c0),
        )
        self.mask_token = nn.Parameter(torch.zeros(1, c0, 1, 1))
        self.stages = nn.ModuleList(
            Stage(widths[max(k - 1, 0)], widths[k], depths[k], k > 0, d_state, conv_kernel, backend) for k in range(4)
        )

    def forward(self, x: torch.Tensor, token_mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        """Multi-scale features; ``token_mask`` (B, 1, H/4, W/4) bool replaces those stem
        tokens by the mask token (MAMIM)."""
        f = self.stem(x)
        if token_mask is not None:
            f = torch.where(token_mask, self.mask_token.to(f.dtype), f)
        feats = []
        for stage in self.stages:
            f = stage(f)
            feats.append(f)
        return feats


class MAMIMDecoder(nn.Module):
    """Reconstruction decoder of MAMIM: top-down fusion of the 4 stages to stride 8, a DMS
    block there, then upsampling to stride 4 and a linear head predicting the 4x4x3 pixels of
    every stride-4 token.

    Shapes: 4 encoder maps -> (B, 3, H, W).
    """

    def __init__(self, widths, d: int = 48, d_state: int = 8, backend: str = "auto"):
        super().__init__()
        self.lat = nn.ModuleList(nn.Conv2d(w, d, 1) for w in widths)
        self.dms = DMS(d, d_state, 5, backend)
        self.head = nn.Conv2d(d, 3 * 16, 1)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        y = self.lat[3](feats[3])
        for k in (2, 1):
            y = F.interpolate(y, size=feats[k].shape[-2:], mode="nearest") + self.lat[k](feats[k])
        h, w = y.shape[-2:]
        y = _grid(self.dms(_tokens(y)), h, w)
        y = F.interpolate(y, size=feats[0].shape[-2:], mode="nearest") + self.lat[0](feats[0])
        return F.pixel_shuffle(self.head(y), 4)


def random_patch_mask(
    batch: int,
    h4: int,
    w4: int,
    patch_tokens: int = 4,
    ratio: float = 0.75,
    generator: torch.Generator | None = None,
    device="cpu",
) -> torch.Tensor:
    """(B, 1, h4, w4) bool token mask hiding ``ratio`` of square patches of
    ``patch_tokens`` x ``patch_tokens`` stride-4 tokens (16x16 pixels by default)."""
    gh, gw = -(-h4 // patch_tokens), -(-w4 // patch_tokens)
    n = gh * gw
    k = int(round(ratio * n))
    noise = torch.rand(batch, n, generator=generator)
    idx = noise.argsort(dim=1)[:, :k]
    m = torch.zeros(batch, n, dtype=torch.bool)
    m.scatter_(1, idx, True)
    m = m.view(batch, 1, gh, gw).repeat_interleave(patch_tokens, 2).repeat_interleave(patch_tokens, 3)
    return m[..., :h4, :w4].to(device)


def mamim_loss(
    encoder: SSMambaEncoder,
    decoder: MAMIMDecoder,
    x: torch.Tensor,
    ratio: float = 0.75,
    patch_tokens: int = 4,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """MAMIM loss of a (B, 3, H, W) batch (H, W multiples of 32): MSE of the reconstruction
    against per-patch normalised pixels, on masked patches only."""
    b, _, h, w = x.shape
    tm = random_patch_mask(b, h // 4, w // 4, patch_tokens, ratio, generator, x.device)
    rec = decoder(encoder(x, tm))
    p = 4 * patch_tokens
    # Per-patch normalised targets (MAE's norm_pix_loss): texture, not stain offsets.
    t = x.unfold(2, p, p).unfold(3, p, p)  # (B, 3, gh, gw, p, p)
    mu = t.mean(dim=(1, 4, 5), keepdim=True)
    sd = t.std(dim=(1, 4, 5), keepdim=True) + 1e-3
    r = rec.unfold(2, p, p).unfold(3, p, p)
    err = ((r - (t - mu) / sd) ** 2).mean(dim=(1, 4, 5))  # (B, gh, gw)
    pm = tm[:, 0, ::patch_tokens, ::patch_tokens][:, : err.shape[1], : err.shape[2]].float()
    return (err * pm).sum() / pm.sum().clamp(min=1.0)
