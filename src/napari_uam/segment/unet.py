"""A compact U-Net that predicts, per pixel, what the nuclei post-processing needs.

Output channels (see :data:`OUTPUTS`):

* ``fg``: logit of "this pixel belongs to a nucleus".
* ``h``, ``v``: horizontal and vertical offset of the pixel from its nucleus' centroid,
  scaled to [-1, 1] per nucleus (HoVer-Net's maps, Graham et al. 2019). Their gradients are
  sharp exactly where two touching nuclei meet, which is what splits them.
* ``dist``: distance of the pixel to its nucleus' border divided by the largest one in that
  nucleus (0 at the border, 1 at the centre); its peaks are the watershed markers.

The network is deliberately small (about 0.54 M parameters, ~1 MB in fp16) so it ships inside
the package and runs on a laptop CPU: nuclei are simple shapes and the hard part, separating
touching ones, is solved by the HoVer/distance maps rather than by capacity.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Names of the output channels, in order.
OUTPUTS = ("fg", "h", "v", "dist")


@dataclass(frozen=True)
class UNetConfig:
    """Architecture hyper-parameters (stored with the weights so they reload exactly).

    Attributes:
        widths: channels of each encoder level, finest first. The finest level already works
            at half the input resolution (after a 2x2 pixel unshuffle) and every further level
            halves it again, so the input side must be a multiple of ``2 ** len(widths)``.
        in_channels: 3 (RGB).
        out_channels: ``len(OUTPUTS)``.
    """

    widths: tuple[int, ...] = (24, 48, 72, 104)
    in_channels: int = 3
    out_channels: int = len(OUTPUTS)

    @property
    def stride(self) -> int:
        """Total down-sampling factor (2 for the pixel unshuffle, then 2 per deeper level);
        inputs must be padded to a multiple of it."""
        return 2 ** len(self.widths)

    def to_dict(self) -> dict:
        """Plain-python form (lists and ints) for saving next to the weights."""
        d = asdict(self)
        d["widths"] = list(self.widths)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "UNetConfig":
        """Inverse of :meth:`to_dict`."""
        return cls(
            widths=tuple(int(w) for w in d["widths"]),
            in_channels=int(d.get("in_channels", 3)),
            out_channels=int(d.get("out_channels", len(OUTPUTS))),
        )


class ConvBlock(nn.Module):
    """Two 3x3 conv + BatchNorm + ReLU layers with a 1x1 residual shortcut.

    Shapes: (B, cin, H, W) -> (B, cout, H, W).
    """

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        # The shortcut keeps gradients flowing in a net trained for only a few minutes.
        self.skip = nn.Conv2d(cin, cout, 1, bias=False) if cin != cout else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)), inplace=True)
        y = self.bn2(self.conv2(y))
        return F.relu(y + self.skip(x), inplace=True)


class NucleiUNet(nn.Module):
    """U-Net encoder-decoder with bilinear up-sampling and concatenated skips.

    Why half resolution inside: on a CPU every U-Net level costs about the same per input pixel,
    and the full-resolution level is the most expensive. A 2x2 pixel unshuffle (lossless: 3
    channels at H x W become 12 at H/2 x W/2) feeds the encoder, and a sub-pixel convolution
    (pixel shuffle) gives the outputs back at full resolution, so the boundaries keep the
    input's precision at a quarter of the cost.

    Shapes: (B, 3, H, W) float RGB scaled to [0, 1] -> (B, 4, H, W) raw outputs (channel 0 a
    logit, 1-2 the HoVer maps, 3 the normalised distance; see :func:`activate`). H and W must be
    multiples of ``config.stride``.
    """

    def __init__(self, config: UNetConfig | None = None):
        super().__init__()
        self.config = config or UNetConfig()
        w = self.config.widths
        self.enc = nn.ModuleList(
            [ConvBlock(4 * self.config.in_channels, w[0])] + [ConvBlock(a, b) for a, b in zip(w[:-1], w[1:])]
        )
        # Decoder level i fuses the up-sampled level i+1 with the skip of level i.
        self.dec = nn.ModuleList([ConvBlock(w[i + 1] + w[i], w[i]) for i in range(len(w) - 1)])
        # 3x3 so each of the 2x2 sub-pixels sees its neighbourhood.
        self.head = nn.Conv2d(w[0], 4 * self.config.out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Centre the input: stain intensities around 0 speed up the first layers' training.
        x = F.pixel_unshuffle(x - 0.5, 2)
        skips = []
        for i, block in enumerate(self.enc):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        x = skips.pop()
        for i in range(len(self.dec) - 1, -1, -1):
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
            x = self.dec[i](torch.cat([x, skips.pop()], dim=1))
        return F.pixel_shuffle(self.head(x), 2)


def fold_batchnorm(model: NucleiUNet) -> NucleiUNet:
    """Fold every BatchNorm of an eval-mode model into the convolution before it, in place.

    Inference then skips the normalisation passes over the activations (about a tenth of the
    CPU time); outputs agree with the unfolded model to float rounding. Only for inference:
    the folded model cannot be trained or saved as a checkpoint of the original layout.

    Returns:
        The same model, with each ``ConvBlock.bn*`` replaced by ``nn.Identity``.
    """
    for block in model.modules():
        if isinstance(block, ConvBlock) and isinstance(block.bn1, nn.BatchNorm2d):
            block.conv1 = fuse_conv_bn_eval(block.conv1, block.bn1)
            block.conv2 = fuse_conv_bn_eval(block.conv2, block.bn2)
            block.bn1, block.bn2 = nn.Identity(), nn.Identity()
    return model


def activate(raw: torch.Tensor) -> torch.Tensor:
    """Map raw network outputs to the ranges the post-processing expects.

    Args:
        raw: (B, 4, H, W) output of :class:`NucleiUNet`.

    Returns:
        (B, 4, H, W): foreground probability in [0, 1], h and v in [-1, 1], distance in [0, 1].
    """
    fg = torch.sigmoid(raw[:, 0:1])
    hv = torch.tanh(raw[:, 1:3])
    dist = torch.sigmoid(raw[:, 3:4])
    return torch.cat([fg, hv, dist], dim=1)


def n_parameters(model: nn.Module) -> int:
    """Number of trainable parameters."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
