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

A fine-tuned checkpoint keeps its base model's statistics and adds *anchors*: the descriptors
of the images it was fine-tuned on. An image's distance is then the smaller of its distance
to the base training mean and to the nearest anchor (same precision matrix, same threshold),
so an image like the annotated ones is in domain although the base training data never
held its stain. A checkpoint without statistics gets no verdict ("unknown"), never "in domain".
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


#: Cell-table columns of an image's stain estimate (the research cell tables use the same).
STAIN_COLUMNS = ["stain_h_r", "stain_h_g", "stain_h_b", "stain_e_r", "stain_e_g", "stain_e_b",
                 "stain_max_h", "stain_max_e"]  # fmt: skip


class OutOfDomainWarning(UserWarning):
    """The image lies outside the classifier's training data: treat its calls with caution."""


class UnknownDomainWarning(UserWarning):
    """The classifier carries no trust statistics: nobody can say whether the image is like its
    training data, so its calls are unchecked."""


@dataclass(frozen=True)
class DomainCheck:
    """Outcome of :meth:`DomainModel.score` for one image."""

    distance: float
    threshold: float
    n_cells: int
    #: What the distance was measured to: None for the base training data, else an anchor
    #: (a fine-tuning image) name; set only for checkpoints with anchors.
    nearest: "str | None" = None
    has_anchors: bool = False

    @property
    def in_domain(self) -> bool:
        return bool(np.isfinite(self.distance) and self.distance <= self.threshold)

    @property
    def status(self) -> str:
        """``"in domain"``, ``"out of domain"`` or ``"unknown"`` (too few cells to judge)."""
        if not np.isfinite(self.distance):
            return "unknown"
        return "in domain" if self.in_domain else "out of domain"

    def as_dict(self) -> dict:
        out = {
            "distance": round(float(self.distance), 3), "threshold": round(float(self.threshold), 3),
            "in_domain": self.in_domain, "n_cells": int(self.n_cells), "status": self.status,
        }  # fmt: skip
        if not np.isfinite(self.distance):
            out["reason"] = f"{self.n_cells} cells: at least {MIN_CELLS} are needed to judge the image"
        if self.has_anchors:
            out["nearest"] = "base training data" if self.nearest is None else f"fine-tuning image {self.nearest}"
        return out

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


def stain_from_values(values) -> dict | None:
    """The stain dict of the 8 :data:`STAIN_COLUMNS` values of a cell-table row (None: not finite)."""
    v = [float(x) for x in values]
    if len(v) != 8 or not np.all(np.isfinite(v)):
        return None
    return {"hematoxylin": v[0:3], "eosin": v[3:6], "max_conc": v[6:8]}


@dataclass
class DomainModel:
    """Training-data statistics of per-image descriptors (see the module docstring)."""

    feature_mean: np.ndarray  # (F,) mean of the per-image normalised feature means
    components: np.ndarray  # (N_COMPONENTS, F)
    mean: np.ndarray  # (8 + N_COMPONENTS,)
    precision: np.ndarray  # inverse shrunk covariance
    threshold: float
    anchors: np.ndarray | None = None  # (K, 8 + N_COMPONENTS) descriptors of fine-tuning images
    anchor_names: list | None = None

    def descriptor(self, stain: dict | None, x_norm: np.ndarray) -> np.ndarray:
        m = np.nanmean(x_norm, axis=0) if len(x_norm) else np.full(self.feature_mean.shape, np.nan)
        return self.descriptor_of_mean(stain, m)

    def descriptor_of_mean(self, stain: dict | None, feature_mean: np.ndarray) -> np.ndarray:
        """The descriptor from the image's mean normalised feature row (what a tiled run
        accumulates tile by tile instead of holding every cell)."""
        proj = (np.asarray(feature_mean, np.float64) - self.feature_mean) @ self.components.T
        return np.r_[stain_vector(stain), proj]

    def _mahalanobis(self, d: np.ndarray) -> float:
        if not np.all(np.isfinite(d)):
            return float("nan")
        return float(np.sqrt(max(d @ self.precision @ d, 0.0)))

    def nearest(self, descriptor: np.ndarray) -> tuple[float, "str | None"]:
        """(distance, anchor name or None for the base mean): the smallest of the distances to
        the base training mean and to every anchor."""
        best, name = self._mahalanobis(descriptor - self.mean), None
        if self.anchors is not None and np.isfinite(best):
            for a, n in zip(self.anchors, self.anchor_names or [None] * len(self.anchors)):
                d = self._mahalanobis(descriptor - a)
                if d < best:
                    best, name = d, str(n)
        return best, name

    def distance(self, descriptor: np.ndarray) -> float:
        return self.nearest(descriptor)[0]

    def score(self, stain: dict | None, x_norm: np.ndarray) -> DomainCheck:
        """Distance of one image (its stain estimate and (n, F) normalised features)."""
        has = self.anchors is not None and len(self.anchors) > 0
        if len(x_norm) < MIN_CELLS:
            return DomainCheck(float("nan"), self.threshold, len(x_norm), has_anchors=has)
        dist, name = self.nearest(self.descriptor(stain, x_norm))
        return DomainCheck(dist, self.threshold, len(x_norm), nearest=name, has_anchors=has)

    def score_mean(self, stain: dict | None, feature_mean: np.ndarray, n_cells: int) -> DomainCheck:
        """:meth:`score` from the mean normalised feature row of ``n_cells`` cells."""
        has = self.anchors is not None and len(self.anchors) > 0
        if n_cells < MIN_CELLS:
            return DomainCheck(float("nan"), self.threshold, int(n_cells), has_anchors=has)
        dist, name = self.nearest(self.descriptor_of_mean(stain, feature_mean))
        return DomainCheck(dist, self.threshold, int(n_cells), nearest=name, has_anchors=has)

    def with_anchors(self, descriptors: list, names: list) -> "DomainModel":
        """A copy with ``descriptors`` (of :meth:`descriptor`) added as anchors, after any the
        model has; the base statistics and the threshold are kept."""
        old = [] if self.anchors is None else list(self.anchors)
        old_names = [] if self.anchor_names is None else list(self.anchor_names)
        rows = old + [np.asarray(d, np.float64) for d in descriptors]
        return DomainModel(
            self.feature_mean,
            self.components,
            self.mean,
            self.precision,
            self.threshold,
            np.stack(rows) if rows else None,
            (old_names + [str(n) for n in names]) if rows else None,
        )

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
        out = {
            "feature_mean": self.feature_mean.tolist(), "components": self.components.tolist(),
            "mean": self.mean.tolist(), "precision": self.precision.tolist(), "threshold": float(self.threshold),
            "n_components": int(len(self.components)), "quantile": QUANTILE,
        }  # fmt: skip
        if self.anchors is not None and len(self.anchors):
            out["anchors"] = np.asarray(self.anchors).tolist()
            out["anchor_names"] = list(self.anchor_names or [])
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "DomainModel":
        anchors = np.asarray(d["anchors"], np.float64) if d.get("anchors") else None
        return cls(
            np.asarray(d["feature_mean"], np.float64), np.asarray(d["components"], np.float64),
            np.asarray(d["mean"], np.float64), np.asarray(d["precision"], np.float64), float(d["threshold"]),
            anchors, list(d.get("anchor_names") or []) if anchors is not None else None,
        )  # fmt: skip
