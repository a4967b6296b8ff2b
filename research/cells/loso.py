"""Leave-one-source-out (LOSO) validation of the cell classifier: features, recipe, architecture.

    # feature groups x stain augmentation, gradient-boosted trees (CPU)
    python -m research.cells.loso gbt --tables .gpu_data/cells --out runs/cells/gbt.json
    # architectures x seeds on one feature group (GPU: parallel worker processes)
    python -m research.cells.loso nn --tables .gpu_data/cells --group G --archs uam uam-l ... \
        --seeds 0 1 2 --jobs 16 --device cuda --out runs/cells/nn.json

For each source, a model is trained on every other source and tested on this one (its
original images only, never the augmented copies). Each training source contributes at most
:data:`CAP` labelled nuclei (with their stain-augmented copies when ``--aug``), so that the
large sources do not decide alone what "tumor" looks like. Metrics per held-out source:
accuracy, tumor F1, AUC, expected calibration error (ECE, 10 bins) and the lowest per-image
accuracy (fields with at least :data:`MIN_FIELD_CELLS` cells).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .sources import SOURCES

#: Most labelled nuclei (original images) a training source contributes.
CAP = 6000
#: Smallest field counted in the per-image minimum accuracy.
MIN_FIELD_CELLS = 30
#: Share of training images that validate early stopping (NN) / nothing (GBT).
VAL_FRACTION = 0.1

#: Relative training cost of the architectures (queue order).
COST = {"uam": 8, "uam-m": 7, "mamba-moe": 6, "jamba": 5, "uam-l": 4, "mamba": 3, "trans-moe": 2, "trans": 1}

META = ["dataset", "split", "image", "patient", "label", "y", "x", "area_um2", "target", "cell_class", "aug", "mpp"]


def feature_groups(columns) -> dict[str, list[str]]:
    """The candidate feature sets, by column prefix."""
    cols = [c for c in columns if c not in META and not c.startswith("stain_")]
    shape = [c for c in cols if c.startswith("shape2D_")]
    raw_h = [c for c in cols if c.startswith("hematoxylin_")]
    raw_e = [c for c in cols if c.startswith("eosin_")]
    norm = [c for c in cols if c.startswith("norm_")]
    ring = [c for c in cols if c.startswith("ring_")]
    ctx = [c for c in cols if c.startswith("ctx_")]
    groups = {
        "v1": shape + raw_h,
        "raw": shape + raw_h + raw_e,
        "norm": shape + norm,
        "norm_ring": shape + norm + ring,
        "norm_ring_ctx": shape + norm + ring + ctx,
        "all": shape + raw_h + raw_e + norm + ring + ctx,
    }
    rel = [c for c in cols if c.startswith(REL)]
    if rel:  # present only when the table was loaded with relative features (``with_relative``)
        groups["v1_rel"] = groups["v1"] + [REL + c for c in groups["v1"] if REL + c in rel]
        groups["norm_ring_ctx_rel"] = groups["norm_ring_ctx"] + [REL + c for c in shape + norm if REL + c in rel]
    return groups


#: Prefix of a feature taken relative to its image (see :func:`with_relative`).
REL = "rel_"


def relative_columns(columns) -> list[str]:
    """The columns that get a relative copy: shape, hematoxylin and stain-normalised radiomics."""
    return [c for c in columns if c.startswith(("shape2D_", "hematoxylin_", "norm_"))]


def with_relative(table: pd.DataFrame) -> pd.DataFrame:
    """Add ``rel_<feature>`` = (feature - its image's median) / its image's IQR, per image and
    stain copy: a nucleus described against the other nuclei of its own field, which a
    scanner, stain or magnification shifts far less than the absolute value."""
    cols = relative_columns(table.columns)
    x = table[cols].to_numpy(np.float32)
    out = np.full_like(x, np.nan)
    keys = table["dataset"].astype(str) + "/" + table["image"].astype(str) + "/" + table["aug"].astype(str)
    for idx in pd.Series(np.arange(len(table))).groupby(keys.to_numpy()).indices.values():
        v = x[idx]
        q25, med, q75 = np.nanpercentile(v, [25, 50, 75], axis=0)
        out[idx] = (v - med) / np.maximum(q75 - q25, 1e-6)
    rel = pd.DataFrame(out, columns=[REL + c for c in cols], index=table.index)
    return pd.concat([table, rel], axis=1)


def load_tables(folder: Path, sources=None) -> pd.DataFrame:
    parts = []
    for s in sources or SOURCES:
        p = Path(folder) / f"{s}.parquet"
        if p.is_file():
            parts.append(pd.read_parquet(p))
    return pd.concat(parts, ignore_index=True)


def capped(table: pd.DataFrame, seed: int = 0, cap: int = CAP) -> pd.DataFrame:
    """At most ``cap`` nuclei per source (all copies of a kept nucleus are kept)."""
    keep = []
    for _, d in table[table["aug"] == 0].groupby("dataset"):
        keys = d[["image", "label"]]
        if len(keys) > cap:
            keys = keys.sample(n=cap, random_state=seed)
        keep.append(keys)
    keys = pd.concat(keep)
    return table.merge(keys, on=["image", "label"], how="inner")


#: Prefix of a within-dataset fold: ``within:<source>`` trains on 75 % of that source's images
#: (fixed split) and tests on the rest, like the UAM paper's Table 1.
WITHIN = "within:"


def fold_parts(table: pd.DataFrame, held: str, aug: bool, seed: int = 0, cap: int = CAP):
    """(train, val, test) frames of the fold that holds out source ``held`` (or, for
    ``within:<source>``, a quarter of that source's images)."""
    if held.startswith(WITHIN):
        src = table[table["dataset"] == held[len(WITHIN) :]]
        imgs = np.unique(src["image"].astype(str))
        test_imgs = np.random.default_rng(0).permutation(imgs)[: max(1, len(imgs) // 4)]
        in_test = src["image"].astype(str).isin(test_imgs)
        test = src[in_test & (src["aug"] == 0)]
        rest = src[~in_test]
    else:
        test = table[(table["dataset"] == held) & (table["aug"] == 0)]
        rest = capped(table[table["dataset"] != held], seed, cap)
    if not aug:
        rest = rest[rest["aug"] == 0]
    images = rest["image"].astype(str) + "@" + rest["dataset"]
    uniq = np.unique(images)
    rng = np.random.default_rng(seed)
    val_imgs = rng.permutation(uniq)[: max(1, int(round(VAL_FRACTION * len(uniq))))]
    is_val = images.isin(val_imgs).to_numpy()
    val = rest[is_val & (rest["aug"] == 0).to_numpy()]
    return rest[~is_val], val, test


def ece(y: np.ndarray, p: np.ndarray, bins: int = 10) -> float:
    """Expected calibration error of the tumor probability (equal-width bins)."""
    edges = np.linspace(0, 1, bins + 1)
    idx = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
    total = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            total += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(total)


def fold_metrics(test: pd.DataFrame, p_tumor: np.ndarray) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    y = test["target"].to_numpy()
    pred = (p_tumor > 0.5).astype(int)
    per_image = (
        pd.DataFrame({"image": test["image"].to_numpy(), "ok": pred == y}).groupby("image")["ok"].agg(["mean", "size"])
    )
    fields = per_image[per_image["size"] >= MIN_FIELD_CELLS]["mean"]
    return {
        "n": int(len(y)), "tumor_share": float(y.mean()),
        "accuracy": float((pred == y).mean()),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "auc": float(roc_auc_score(y, p_tumor)) if 0 < y.mean() < 1 else float("nan"),
        "ece": ece(y, p_tumor),
        "min_field_accuracy": float(fields.min()) if len(fields) else float("nan"),
        "fields_below_070": int((fields < 0.70).sum()), "n_fields": int(len(fields)),
    }  # fmt: skip


def _logit(p):
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def fit_temperature(p: np.ndarray, y: np.ndarray) -> float:
    """Temperature T minimising the log-loss of sigmoid(logit(p) / T) (grid, then refine)."""
    z = _logit(p)
    best, best_t = np.inf, 1.0
    for t in np.exp(np.linspace(np.log(0.25), np.log(8.0), 81)):
        q = np.clip(1 / (1 + np.exp(-z / t)), 1e-7, 1 - 1e-7)
        loss = -np.mean(y * np.log(q) + (1 - y) * np.log(1 - q))
        if loss < best:
            best, best_t = loss, float(t)
    return best_t


def apply_temperature(p: np.ndarray, t: float) -> np.ndarray:
    return 1 / (1 + np.exp(-_logit(p) / t))


# --------------------------------------------------------------------------------------------
# gradient-boosted trees


@dataclass
class GbtJob:
    tables: str
    group: str
    aug: bool
    held: str
    seed: int = 0
    cap: int = CAP


def run_gbt(job: GbtJob) -> dict:
    from sklearn.ensemble import HistGradientBoostingClassifier

    table = _table(job.tables, job.group.endswith("_rel"))
    feats = feature_groups(table.columns)[job.group]
    train, _, test = fold_parts(table, job.held, job.aug, job.seed, job.cap)
    t0 = time.perf_counter()
    clf = HistGradientBoostingClassifier(
        max_iter=150, learning_rate=0.1, max_leaf_nodes=31, l2_regularization=1.0, class_weight="balanced",
        early_stopping=False, random_state=job.seed,
    )  # fmt: skip
    clf.fit(train[feats].to_numpy(np.float32), train["target"].to_numpy())
    p = clf.predict_proba(test[feats].to_numpy(np.float32))[:, 1]
    return {**asdict(job), "model": "gbt", "metrics": fold_metrics(test, p), "seconds": time.perf_counter() - t0,
            "n_train": int(len(train)), "p": p.astype(np.float32).tolist(), "y": test["target"].tolist(),
            "image": test["image"].astype(str).tolist()}  # fmt: skip


# --------------------------------------------------------------------------------------------
# neural networks (the model registry)


@dataclass
class NnJob:
    tables: str
    group: str
    aug: bool
    held: str
    arch: str
    seed: int
    device: str
    budget: float
    lr: float = 1e-3
    batch_size: int = 256
    cap: int = CAP


def run_nn(job: NnJob) -> dict:
    import torch

    from napari_uam.classify.normalize import Normalizer
    from research.cells.trainer import TrainConfig, predict_proba, train_model

    torch.set_num_threads(1)
    table = _table(job.tables, job.group.endswith("_rel"))
    feats = feature_groups(table.columns)[job.group]
    train, val, test = fold_parts(table, job.held, job.aug, job.seed, job.cap)
    norm = Normalizer.fit(train[feats].to_numpy(np.float64))
    x = {k: norm.transform(d[feats].to_numpy(np.float64)) for k, d in (("train", train), ("val", val), ("test", test))}
    cfg = TrainConfig(arch=job.arch, lr=job.lr, batch_size=job.batch_size, max_epochs=40, patience=5, seed=job.seed,
                      device=job.device, max_seconds=job.budget)  # fmt: skip
    res = train_model(x["train"], train["target"].to_numpy(), x["val"], val["target"].to_numpy(), 2, cfg)
    p = predict_proba(res.model, x["test"], res.model.parameters().__next__().device.type)[:, 1]
    return {**asdict(job), "model": job.arch, "metrics": fold_metrics(test, p), "seconds": res.seconds,
            "best_epoch": res.best_epoch, "n_train": int(len(train)), "p": p.astype(np.float32).tolist(),
            "y": test["target"].tolist(), "image": test["image"].astype(str).tolist()}  # fmt: skip


_CACHE: dict = {}


def _table(folder: str, relative: bool = False) -> pd.DataFrame:
    if (folder, relative) not in _CACHE:
        table = load_tables(Path(folder))
        _CACHE[folder, relative] = with_relative(table) if relative else table
    return _CACHE[folder, relative]


def _run_all(fn, jobs, workers: int, out: Path, log=print) -> list:
    import multiprocessing as mp

    records = []
    ctx = mp.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        for rec in pool.map(fn, jobs):
            m = rec["metrics"]
            log(f"{rec['model']:>10} {rec['group']:>14} aug={int(rec['aug'])} {rec['held']:>10} s{rec['seed']} "
                f"acc {m['accuracy']:.3f} f1 {m['f1']:.3f} auc {m['auc']:.3f} ece {m['ece']:.3f} "
                f"minfield {m['min_field_accuracy']:.2f} {rec['seconds']:.0f}s")  # fmt: skip
            records.append(rec)
            tmp = out.with_suffix(".tmp")
            tmp.write_text(json.dumps(records))
            os.replace(tmp, out)
    return records


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["gbt", "nn"])
    p.add_argument("--tables", default=".gpu_data/cells")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--groups", nargs="+", default=None)
    p.add_argument("--aug", nargs="+", type=int, default=[0, 1])
    p.add_argument("--held", nargs="+", default=None)
    p.add_argument("--archs", nargs="+", default=["uam"])
    p.add_argument("--seeds", nargs="+", type=int, default=[0])
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--device", default="cpu")
    p.add_argument("--budget", type=float, default=90.0, help="seconds per NN training")
    p.add_argument("--cap", type=int, default=CAP, help="nuclei per training source")
    p.add_argument("--within", nargs="*", default=[], help="also within-dataset folds of these sources")
    a = p.parse_args(argv)
    a.out.parent.mkdir(parents=True, exist_ok=True)
    table = load_tables(Path(a.tables))
    held = a.held or [s for s in SOURCES if s in set(table["dataset"])]
    groups = a.groups or list(feature_groups(with_relative(table.head(1)).columns))
    if a.mode == "gbt":
        held = held + [WITHIN + w for w in a.within]
        jobs = [GbtJob(a.tables, g, bool(x), h, s, a.cap) for g in groups for x in a.aug for h in held for s in a.seeds]
        _run_all(run_gbt, jobs, a.jobs, a.out)
    else:
        held = held + [WITHIN + w for w in a.within]
        jobs = [NnJob(a.tables, g, bool(x), h, arch, s, a.device, a.budget, cap=a.cap)
                for g in groups for x in a.aug for arch in a.archs for s in a.seeds for h in held]  # fmt: skip
        jobs.sort(key=lambda j: -COST.get(j.arch, 1))  # slowest first: the last wave is short
        _run_all(run_nn, jobs, a.jobs, a.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
