"""How far an image lies from the classifier's training data: the trust signal of a result.

A classifier trained on some hospitals answers confidently on any image; whether the answer
means anything depends on whether the image looks like what it learned from. Each image is
summarised by a *descriptor*:

- its Macenko stain estimate (hematoxylin and eosin OD vectors and maxima, 8 numbers,
  :mod:`napari_uam.radiomics.stain_norm`), and
- the mean of its cells' normalised model features, projected on the first
  :data:`N_COMPONENTS` principal directions of the training images' means.

The checkpoint stores the training images' descriptor mean and (shrunk) covariance and the
distance below which :data:`QUANTILE` of the training images lie. An image whose Mahalanobis
distance exceeds that threshold is *out of domain*: the pipeline records the distance in the
provenance and warns (:class:`OutOfDomainWarning`); the calls are still returned, marked.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Principal directions of the per-image feature means kept in the descriptor.
N_COMPONENTS = 8
#: Share of training images inside the threshold.
QUANTILE = 0.99
#: Ledoit-Wolf-like shrinkage of the covariance towards its diagonal (few images, many dims).
SHRINKAGE = 0.2
#: Fewest cells for an image's feature mean to say anything.
MIN_CELLS = 10


class OutOfDomainWarning(UserWarning):
    """The image lies outside the classifier's training data: treat its calls with caution."""


@dataclass(frozen=True)
class DomainCheck:
    """Outcome of :meth:`DomainModel.score` for one image."""

    distance: float
    threshold: float
    n_cells: int

    @property
    def in_domain(self) -> bool:
        return bool(np.isfinite(self.distance) and self.distance <= self.threshold)

    def as_dict(self) -> dict:
        return {
            "distance": round(float(self.distance), 3), "threshold": round(float(self.threshold), 3),
            "in_domain": self.in_domain, "n_cells": int(self.n_cells),
        }  # fmt: skip

    def message(self) -> str:
        return (
            f"This image lies outside the classifier's training data (distance {self.distance:.1f}, "
            f"training images reach {self.threshold:.1f}): its stain or its cells differ from every "
            "hospital the model learned from, so the tumor calls may be wrong. Check them, or "
            "fine-tune the model on corrected cells of such images."
        )


def stain_vector(stain: dict | None) -> np.ndarray:
    """The 8 stain numbers of a :meth:`StainEstimate.as_dict` (NaN when absent)."""
    if not stain:
        return np.full(8, np.nan)
    return np.asarray([*stain["hematoxylin"], *stain["eosin"], *stain["max_conc"]], dtype=np.float64)


@dataclass
class DomainModel:
    """Training-data statistics of per-image descriptors (see the module docstring)."""

    feature_mean: np.ndarray  # (F,) mean of the per-image normalised feature means
    components: np.ndarray  # (N_COMPONENTS, F)
    mean: np.ndarray  # (8 + N_COMPONENTS,)
    precision: np.ndarray  # inverse shrunk covariance
    threshold: float

    def descriptor(self, stain: dict | None, x_norm: np.ndarray) -> np.ndarray:
        m = np.nanmean(x_norm, axis=0) if len(x_norm) else np.full(self.feature_mean.shape, np.nan)
        proj = (m - self.feature_mean) @ self.components.T
        return np.r_[stain_vector(stain), proj]

    def distance(self, descriptor: np.ndarray) -> float:
        d = descriptor - self.mean
        if not np.all(np.isfinite(d)):
            return float("nan")
        return float(np.sqrt(max(d @ self.precision @ d, 0.0)))

    def score(self, stain: dict | None, x_norm: np.ndarray) -> DomainCheck:
        """Distance of one image (its stain estimate and (n, F) normalised features)."""
        if len(x_norm) < MIN_CELLS:
            return DomainCheck(float("nan"), self.threshold, len(x_norm))
        return DomainCheck(self.distance(self.descriptor(stain, x_norm)), self.threshold, len(x_norm))

    @classmethod
    def fit(cls, stains: list[dict], features: list[np.ndarray]) -> "DomainModel":
        """Fit on training images: their stain estimates and (n_i, F) normalised features."""
        means = np.stack([np.nanmean(x, axis=0) for x in features])
        means = np.where(np.isfinite(means), means, 0.0)
        fmean = means.mean(axis=0)
        _, _, vt = np.linalg.svd(means - fmean, full_matrices=False)
        comps = vt[:N_COMPONENTS]
        desc = np.stack([np.r_[stain_vector(s), (m - fmean) @ comps.T] for s, m in zip(stains, means)])
        mu = desc.mean(axis=0)
        cov = np.cov(desc - mu, rowvar=False)
        cov = (1 - SHRINKAGE) * cov + SHRINKAGE * np.diag(np.diag(cov)) + 1e-9 * np.eye(len(mu))
        prec = np.linalg.inv(cov)
        model = cls(fmean, comps, mu, prec, 0.0)
        dists = np.array([model.distance(d) for d in desc])
        model.threshold = float(np.quantile(dists, QUANTILE))
        return model

    def to_dict(self) -> dict:
        return {
            "feature_mean": self.feature_mean.tolist(), "components": self.components.tolist(),
            "mean": self.mean.tolist(), "precision": self.precision.tolist(), "threshold": float(self.threshold),
            "n_components": int(len(self.components)), "quantile": QUANTILE,
        }  # fmt: skip

    @classmethod
    def from_dict(cls, d: dict) -> "DomainModel":
        return cls(
            np.asarray(d["feature_mean"], np.float64), np.asarray(d["components"], np.float64),
            np.asarray(d["mean"], np.float64), np.asarray(d["precision"], np.float64), float(d["threshold"]),
        )  # fmt: skip
