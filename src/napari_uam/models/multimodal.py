"""Multimodal tumor-region model: SSMamba image tokens fused with UAM cell tokens.

After the UAM paper's multimodal framework (section 3.4, Fig. 3): the UAM embedding of every
cell is projected by an MLP into the image embedding space (LLaVA style, ``z^r = MLP(e^r)``),
concatenated with the image embeddings (``z^c = [z^r, z^m]``) and decoded into a tumor mask;
training uses the segmentation loss plus the cell classification loss.

Because image tokens live on a grid and cells are points, the projected cell tokens are
*placed at their positions*: averaged into the stride-8 token grid of the image encoder (plus
a cell-density channel), average-pooled to strides 16 and 32, and concatenated channel-wise
with the image tokens of those stages before a 1x1 fusion. Nothing about a cell's position is
lost at the scale where it is fused, and cells and image tokens stay aligned under any crop.

A cell head classifies each cell from its projected token and the decoder features sampled at
its centroid (the cell classification loss of the paper).

``use_cells=False`` gives the image-only model with the same encoder and decoder (the
ablation baseline).

Shapes (working resolution, H and W multiples of 32):
    image (B, 3, H, W); cell_pos (B, N, 2) (y, x) in working pixels; cell_feat (B, N, F_c);
    cell_valid (B, N) bool -> mask logits (B, 1, H, W) and cell logits (B, N).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .ssmamba import DEFAULT_ENCODER, SSMambaEncoder

#: Per-channel RGB statistics used to standardise images (typical H&E values).
RGB_MEAN = (0.70, 0.50, 0.70)
RGB_STD = (0.15, 0.18, 0.13)


def standardise(rgb_uint8: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) uint8 or [0, 255] float -> standardised float."""
    x = rgb_uint8.float() / 255.0
    mean = x.new_tensor(RGB_MEAN).view(1, 3, 1, 1)
    std = x.new_tensor(RGB_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def splat_cells(
    values: torch.Tensor, pos: torch.Tensor, valid: torch.Tensor, h: int, w: int, stride: int
) -> torch.Tensor:
    """Average cell vectors into a grid of cells of ``stride`` pixels.

    Args:
        values: (B, N, D) cell vectors.
        pos: (B, N, 2) (y, x) in pixels.
        valid: (B, N) bool.
        h, w: grid size.

    Returns:
        (B, D + 1, h, w): mean vector per grid cell (0 where empty) and log1p(cell count).
    """
    b, n, d = values.shape
    iy = (pos[..., 0] / stride).floor().long().clamp(0, h - 1)
    ix = (pos[..., 1] / stride).floor().long().clamp(0, w - 1)
    idx = (iy * w + ix).masked_fill(~valid, h * w)  # invalid cells go to a spare slot
    acc = values.new_zeros(b, h * w + 1, d)
    acc.scatter_add_(1, idx[..., None].expand(b, n, d), values * valid[..., None].to(values.dtype))
    cnt = values.new_zeros(b, h * w + 1)
    cnt.scatter_add_(1, idx, valid.to(values.dtype))
    mean = acc[:, : h * w] / cnt[:, : h * w, None].clamp(min=1.0)
    grid = torch.cat([mean, torch.log1p(cnt[:, : h * w, None])], dim=-1)
    return grid.transpose(1, 2).reshape(b, d + 1, h, w)


class TumorRegionNet(nn.Module):
    """SSMamba encoder + (optional) UAM cell tokens + FPN mask decoder + cell head.

    Args:
        encoder: :class:`SSMambaEncoder` config overrides.
        use_cells: fuse cell tokens (multimodal) or not (image-only).
        cell_features: width F_c of the cell input vectors (UAM embedding + UAM tumor prob).
        cell_dim: width of the projected cell tokens.
        decoder_dim: FPN width.
    """

    def __init__(
        self,
        encoder: dict | None = None,
        use_cells: bool = True,
        cell_features: int = 17,
        cell_dim: int = 32,
        decoder_dim: int = 48,
    ):
        super().__init__()
        enc_cfg = {**DEFAULT_ENCODER, **(encoder or {})}
        self.encoder = SSMambaEncoder(**enc_cfg)
        self.config = {
            "encoder": dict(self.encoder.config),
            "use_cells": bool(use_cells),
            "cell_features": int(cell_features),
            "cell_dim": int(cell_dim),
            "decoder_dim": int(decoder_dim),
        }
        widths = self.encoder.widths
        self.use_cells = bool(use_cells)
        if self.use_cells:
            # LLaVA-style projector: UAM embedding -> image embedding space.
            self.project = nn.Sequential(nn.Linear(cell_features, 64), nn.GELU(), nn.Linear(64, cell_dim))
            self.fuse = nn.ModuleList(nn.Conv2d(widths[k] + cell_dim + 1, widths[k], 1) for k in (1, 2, 3))
            self.cell_head = nn.Sequential(nn.Linear(cell_dim + decoder_dim, 32), nn.GELU(), nn.Linear(32, 1))
        d = decoder_dim
        self.lat = nn.ModuleList(nn.Conv2d(w, d, 1) for w in widths)
        self.refine = nn.Sequential(nn.Conv2d(d, d, 3, padding=1), nn.BatchNorm2d(d), nn.GELU())
        self.head = nn.Conv2d(d, 1, 1)

    def forward(self, image: torch.Tensor, cell_pos=None, cell_feat=None, cell_valid=None):
        """Mask logits (B, 1, H, W) and cell logits (B, N) (None for the image-only model)."""
        b, _, h, w = image.shape
        feats = self.encoder(image)
        cell_tok = None
        if self.use_cells:
            if cell_feat is None or cell_feat.shape[1] == 0:
                cell_tok = image.new_zeros(b, 0, self.config["cell_dim"])
                cell_pos = image.new_zeros(b, 0, 2)
                cell_valid = torch.zeros(b, 0, dtype=torch.bool, device=image.device)
            else:
                cell_tok = self.project(cell_feat)
            f1 = feats[1]
            grid = splat_cells(cell_tok, cell_pos, cell_valid, f1.shape[-2], f1.shape[-1], 8)
            feats = list(feats)
            for j, k in enumerate((1, 2, 3)):
                g = grid if k == 1 else F.adaptive_avg_pool2d(grid, feats[k].shape[-2:])
                feats[k] = feats[k] + self.fuse[j](torch.cat([feats[k], g], dim=1))
        y = self.lat[3](feats[3])
        for k in (2, 1, 0):
            y = F.interpolate(y, size=feats[k].shape[-2:], mode="bilinear", align_corners=False) + self.lat[k](feats[k])
        y = self.refine(y)  # stride 4
        logits = F.interpolate(self.head(y), size=(h, w), mode="bilinear", align_corners=False)
        cell_logits = None
        if self.use_cells and cell_tok.shape[1] > 0:
            # Decoder features at each centroid (grid_sample wants x, y in [-1, 1]).
            gy = (cell_pos[..., 0] + 0.5) / h * 2 - 1
            gx = (cell_pos[..., 1] + 0.5) / w * 2 - 1
            samp = F.grid_sample(y, torch.stack([gx, gy], -1)[:, :, None, :], align_corners=False)
            samp = samp[..., 0].transpose(1, 2)  # (B, N, d)
            cell_logits = self.cell_head(torch.cat([cell_tok, samp], -1))[..., 0]
        return logits, cell_logits


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """BCE + soft Dice of mask logits (B, 1, H, W) against targets in [0, 1]; ``weight``
    (B, 1, H, W) masks out padding."""
    if weight is None:
        weight = torch.ones_like(target)
    bce = (F.binary_cross_entropy_with_logits(logits, target, reduction="none") * weight).sum() / weight.sum().clamp(
        min=1
    )
    p = torch.sigmoid(logits) * weight
    t = target * weight
    dice = 1 - (2 * (p * t).sum() + 1) / (p.sum() + t.sum() + 1)
    return bce + dice


def joint_loss(
    mask_logits, mask_target, cell_logits=None, cell_target=None, cell_valid=None, weight=None, cell_weight: float = 0.5
) -> torch.Tensor:
    """Segmentation loss (BCE + Dice) plus ``cell_weight`` x the cell classification BCE."""
    loss = dice_bce_loss(mask_logits, mask_target, weight)
    if cell_logits is not None and cell_valid is not None and cell_valid.any():
        ce = F.binary_cross_entropy_with_logits(cell_logits[cell_valid], cell_target[cell_valid].float())
        loss = loss + cell_weight * ce
    return loss


def uam_cell_inputs(classifier, features) -> np.ndarray:
    """UAM cell vectors for the multimodal model: the pooled UAM embedding (the input of the
    classifier's linear head) and the UAM tumor probability.

    Args:
        classifier: a :class:`~napari_uam.classify.checkpoint.CellClassifier`.
        features: DataFrame with the classifier's feature columns.

    Returns:
        (n_cells, d_model + 1) float32.
    """
    x = classifier.normalizer.transform(classifier.check_features(features))
    model = classifier.model
    out = np.zeros((len(x), model.head.in_features + 1), dtype=np.float32)
    captured = {}
    hook = model.head.register_forward_hook(lambda m, inp, o: captured.__setitem__("e", inp[0]))
    try:
        with torch.no_grad():
            for lo in range(0, len(x), 4096):
                xb = torch.from_numpy(x[lo : lo + 4096]).to(classifier.device)
                prob = torch.softmax(model(xb).float(), -1)[:, classifier.tumor_class]
                out[lo : lo + 4096, :-1] = captured["e"].float().cpu().numpy()
                out[lo : lo + 4096, -1] = prob.cpu().numpy()
    finally:
        hook.remove()
    return out
