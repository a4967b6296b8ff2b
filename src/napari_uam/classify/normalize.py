"""Per-feature normalisation of radiomics tables, stored in checkpoints as plain numbers.

Radiomics features span many decades (areas in um^2, energies ~1e6, ratios ~1e-3) and have
heavy tails, so each feature is first compressed with a signed log, ``sign(x) * log1p(|x|)``,
then centred on its median and divided by a robust spread (IQR / 1.349, the standard deviation
of a normal with that IQR), and finally clipped. Missing or non-finite values are imputed with
the training median, i.e. 0 after normalisation. The same statistics are applied at inference.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Normalised values are clipped to +-CLIP so that one wild feature cannot dominate a token.
CLIP = 8.0


def signed_log(x: np.ndarray) -> np.ndarray:
    """``sign(x) * log1p(|x|)``, elementwise (NaN stays NaN)."""
    return np.sign(x) * np.log1p(np.abs(x))


@dataclass
class Normalizer:
    """Signed-log + median/IQR scaling with median imputation.

    Attributes:
        center: (F,) median of the signed-log features.
        scale: (F,) robust spread of the signed-log features (never 0).
        clip: bound of the normalised values.
    """

    center: np.ndarray
    scale: np.ndarray
    clip: float = CLIP
    method: str = "signed_log_robust"

    @classmethod
    def fit(cls, x: np.ndarray) -> "Normalizer":
        """Fit on an (n_cells, F) float array (NaN/inf ignored)."""
        t = signed_log(np.asarray(x, dtype=np.float64))
        t[~np.isfinite(t)] = np.nan
        with np.errstate(all="ignore"):
            center = np.nanmedian(t, axis=0)
            q75, q25 = np.nanpercentile(t, [75, 25], axis=0)
            scale = (q75 - q25) / 1.349
            std = np.nanstd(t, axis=0)
        # Near-constant features (IQR 0) fall back to the std, then to 1.
        scale = np.where(scale > 1e-8, scale, np.where(std > 1e-8, std, 1.0))
        center = np.where(np.isfinite(center), center, 0.0)
        return cls(center=center, scale=scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        """(n, F) raw features -> (n, F) float32 normalised features."""
        t = signed_log(np.asarray(x, dtype=np.float64))
        z = (t - self.center) / self.scale
        z[~np.isfinite(z)] = 0.0  # imputes the training median
        return np.clip(z, -self.clip, self.clip).astype(np.float32)

    def to_dict(self) -> dict:
        """Plain-type representation for checkpoints."""
        return {
            "method": self.method,
            "center": [float(v) for v in self.center],
            "scale": [float(v) for v in self.scale],
            "clip": float(self.clip),
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Normalizer":
        if d.get("method") != "signed_log_robust":
            raise ValueError(f"unknown normalisation method {d.get('method')!r}")
        return cls(
            center=np.asarray(d["center"], dtype=np.float64),
            scale=np.asarray(d["scale"], dtype=np.float64),
            clip=float(d["clip"]),
        )
