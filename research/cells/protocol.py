"""Evaluation protocol of the experiments: within-dataset splits and array preparation.

The split rule itself (by image / patient, never by cell) is the package's
(:mod:`napari_uam.training.splits`), shared with fine-tuning."""

from __future__ import annotations

import numpy as np
import pandas as pd

from napari_uam.classify.normalize import Normalizer
from napari_uam.training.splits import CLASS_NAMES, TUMOR_CLASS, group_split
from research.cells.datasets import feature_columns

__all__ = ["CLASS_NAMES", "TUMOR_CLASS", "arrays", "group_split", "subsample", "summary", "within_splits"]


def within_splits(table: pd.DataFrame, dataset: str) -> dict[str, pd.DataFrame]:
    """Train / val / test parts of one dataset for the within-dataset experiment.

    CoNSeP: 20 % of the images are the test set; 15 % of the remaining images validate early
    stopping. BRCA-M2C: the official (patient-disjoint) ``val`` split is the test set; 15 % of the
    training patients validate early stopping. The split is fixed (seed 0) for all model seeds.
    """
    if dataset == "consep":
        rest, test = group_split(table["image"], 0.2, seed=0)
        group = "image"
    elif dataset == "brca_m2c":
        test = (table["split"] == "val").to_numpy()
        rest = ~test
        group = "patient"
    else:
        raise ValueError(f"unknown dataset {dataset!r}")
    rest_t = table[rest]
    tr, va = group_split(rest_t[group], 0.15, seed=0)
    return {"train": rest_t[tr], "val": rest_t[va], "test": table[test]}


def arrays(parts: dict[str, pd.DataFrame], features: list[str] | None = None):
    """Fit the normaliser on the training part and return normalised arrays.

    Returns:
        (normalizer, {part: (x float32 (n, F), y int64 (n,))}, feature names).
    """
    features = features or feature_columns(parts["train"])
    norm = Normalizer.fit(parts["train"][features].to_numpy(np.float64))
    out = {
        k: (norm.transform(df[features].to_numpy(np.float64)), df["target"].to_numpy(np.int64))
        for k, df in parts.items()
    }
    return norm, out, features


def subsample(df: pd.DataFrame, n: int | None, seed: int = 0) -> pd.DataFrame:
    """At most ``n`` rows, drawn at random (for quick smoke runs)."""
    if n is None or len(df) <= n:
        return df
    return df.sample(n=n, random_state=seed)


def summary(df: pd.DataFrame) -> dict:
    """Counts for a model card: cells, images, patients, tumor cells, classes per dataset."""
    out = {}
    for ds, d in df.groupby("dataset"):
        out[str(ds)] = {
            "cells": int(len(d)), "images": int(d["image"].nunique()),
            "patients": int(d["patient"].nunique()), "tumor_cells": int(d["target"].sum()),
            "classes": {str(k): int(v) for k, v in d["cell_class"].value_counts().items()},
        }  # fmt: skip
    return out
