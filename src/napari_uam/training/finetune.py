"""Fine-tune (or train from scratch) a cell classifier on annotated cells: the one function the
napari Train dock and ``napari-uam train`` both call.

    cells = cells_from_projects(["annotations/patch_01", "annotations/patch_02"])
    result = finetune(cells, FinetuneConfig(init="default", epochs=10, seed=0))
    save_finetuned(result, "my_model.pt")          # + my_model.md model card, atomically

Rules that make the result trustworthy and repeatable:

* Validation is split by image (:func:`~.protocol.group_split`), never by cell, so the
  reported accuracy is on nuclei of images the model did not train on.
* Starting from a checkpoint keeps its normaliser, feature order, class names and architecture
  (the weights only make sense with them); from scratch the normaliser is fitted on the
  training cells.
* The starting model is evaluated first (epoch 0, for comparison); early stopping keeps the
  best validation epoch of the fine-tuned ones (1 or later), so the result is always a
  fine-tuned model, and its card records how the start scored on the same images.
* Same cells, config and seed on the CPU give bit-identical weights (one torch thread by
  default, cells sorted by image and label whatever order they came in).
* The kept model is calibrated on the validation cells (temperature scaling,
  :mod:`~.calibration`; ``T`` stays 1, with the reason, on fewer than 100 validation cells or
  fewer than 10 of a class), and it carries a trust model: the starting checkpoint's training
  statistics plus the fine-tuning images as anchors (:mod:`napari_uam.domain`); from scratch or
  from a checkpoint without statistics there is none, and the pipeline says "unknown".
* Cancel is polled between steps and raises :class:`~napari_uam.errors.CancelledError`;
  nothing is written until :func:`save_finetuned`, which never replaces the shipped weights
  and replaces an existing file only with ``overwrite=True``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Optional

import numpy as np
import pandas as pd

from .. import pipeline
from ..annotation import TUMOR, UNLABELLED, class_of, with_annotation_columns
from ..classify.checkpoint import (
    build_from_checkpoint,
    default_weights_path,
    file_sha256,
    read_checkpoint,
    save_checkpoint,
)
from ..classify.normalize import Normalizer
from ..device import resolve_device
from ..domain import MIN_CELLS, STAIN_COLUMNS, DomainModel, stain_from_values, stain_vector
from ..errors import CancelledError, CheckpointError, SchemaMismatchError, UAMError
from ..io.project import find_projects, load_project
from ..radiomics import DEFAULT_SCHEMA
from ..radiomics.schema import CLASSIFIER_SCHEMAS
from .calibration import describe, fit_temperature, model_logits
from .splits import CLASS_NAMES, TUMOR_CLASS, group_split

#: Starting points besides a checkpoint path.
INIT_DEFAULT = "default"
INIT_SCRATCH = "scratch"


class NotEnoughCellsError(UAMError):
    """Too few labelled cells (or only one class) to train on."""


@dataclass
class FinetuneConfig:
    """Settings of one fine-tuning run.

    Attributes:
        init: ``"default"`` (the shipped weights), ``"scratch"`` or a checkpoint path.
        arch: registry architecture; used from scratch only (a checkpoint fixes its own).
        epochs: most epochs to run.
        lr: AdamW learning rate (3e-4 suits fine-tuning; 1e-3 from scratch, as the trainer).
        batch_size: cells per step.
        patience: epochs without validation improvement before stopping (0: never stop early).
        val_fraction: share of the images held out for validation (at least one image when
            there are two or more; 0 disables validation and keeps the last epoch).
        seed: weights init (from scratch), validation split and batch order.
        device: ``"cpu"``, ``"cuda"`` or ``"auto"``.
        threads: torch CPU threads during training (1: fastest for these small models and
            bit-repeatable); None leaves torch's setting.
        weight_decay: AdamW weight decay.
        class_weights: weight the loss by inverse class frequency.
        aux_weight: weight of the MoE load-balancing loss.
    """

    init: str = INIT_DEFAULT
    arch: str = "uam-l"
    epochs: int = 20
    lr: float = 3e-4
    batch_size: int = 64
    patience: int = 5
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    threads: Optional[int] = 1
    weight_decay: float = 0.01
    class_weights: bool = True
    aux_weight: float = 0.01

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class FinetuneResult:
    """Outcome of :func:`finetune`.

    Attributes:
        model: the best model (eval mode, on the CPU).
        normalizer: feature normalisation the model expects.
        feature_names, class_names, tumor_class, schema_id, mpp: what the checkpoint records.
        history: one dict per epoch (epoch 0 = the starting model when there is validation).
        best_epoch: epoch whose weights were kept (1 or later).
        val_metrics: validation metrics of the kept weights (empty without validation).
        start_metrics: validation metrics of the starting model (empty from scratch).
        summary: cells / images / tumor cells of the training and validation parts.
        init: description of the starting point (``model_id`` and SHA-256 of a checkpoint).
        seconds: training wall time.
        config: the run settings.
        calibration: the temperature and its record (:func:`~.calibration.fit_temperature`).
        domain: the trust model (:meth:`napari_uam.domain.DomainModel.to_dict`), None without one.
        trust: how the trust model was made (base model, anchor images, skipped images) or why
            there is none (``reason``).
    """

    model: object
    normalizer: object
    feature_names: list
    class_names: list
    tumor_class: int
    schema_id: str
    mpp: float
    history: list
    best_epoch: int
    val_metrics: dict
    start_metrics: dict
    summary: dict
    init: dict
    seconds: float
    config: dict = field(default_factory=dict)
    calibration: dict = field(default_factory=dict)
    domain: Optional[dict] = None
    trust: dict = field(default_factory=dict)


# ------------------------------------------------------------------------------ cells
def cells_from_annotation(
    image: np.ndarray,
    labels: np.ndarray,
    table: pd.DataFrame,
    mpp: float,
    image_id: str,
    device: str = "cpu",
    cancel: Optional[Callable[[], bool]] = None,
) -> pd.DataFrame:
    """Training cells of one annotated image: features measured again, classes from the table.

    The features are always measured again from ``image`` and ``labels`` (a fraction of a
    second per patch), so nuclei edited with the Labels tools after classification are
    described by their new outline, never by stale numbers.

    Args:
        image: (H, W, 3) RGB.
        labels: (H, W) int nuclei.
        table: cell table with ``label`` and ``class`` (see :mod:`napari_uam.annotation`).
        mpp: pixel size of ``image``.
        image_id: name of the image (the validation split groups by it).
        device: device of the feature engine.

    Returns:
        One row per labelled nucleus: ``image, label, class, target`` then the features;
        unlabelled nuclei are left out.
    """
    ann = with_annotation_columns(table)[["label", "class"]]
    ann = ann[ann["class"] != UNLABELLED]
    if ann.empty:
        return pd.DataFrame(columns=["image", "label", "class", "target"])
    feats = pipeline.measure_cells(image, labels, mpp, device=device, cancel=cancel)
    stain = feats.attrs.get("stain")
    feats = feats.drop(columns=[c for c in ("y", "x", "area_um2") if c in feats.columns])
    cells = ann.merge(feats, on="label", how="inner")
    cells.insert(0, "image", str(image_id))
    cells.insert(3, "target", (cells["class"] == TUMOR).astype(np.int64))
    # The image's stain estimate, on every row (as the research cell tables): the trust model
    # of the fine-tuned checkpoint takes each annotated image as an anchor.
    for col, v in zip(STAIN_COLUMNS, stain_vector(stain)):
        cells[col] = float(v)
    cells.attrs["schema_id"] = feats.attrs.get("schema_id")
    return cells


def cells_from_projects(
    paths: Iterable, device: str = "cpu", cancel=None, log: Callable[[str], None] = lambda s: None
) -> pd.DataFrame:
    """Training cells of every project folder under ``paths`` (see :func:`~napari_uam.io.project.find_projects`)."""
    parts = []
    for path in paths:
        for folder in find_projects(path):
            proj = load_project(folder)
            cells = cells_from_annotation(proj.image, proj.labels, proj.table, proj.mpp, proj.name, device, cancel)
            log(f"{folder}: {len(cells)} labelled cells ({int(cells['target'].sum()) if len(cells) else 0} tumor)")
            parts.append(cells)
    return _concat(parts)


def cells_from_table(path, split: Optional[str] = None) -> pd.DataFrame:
    """Training cells from a cell-table parquet (``image`` and ``target`` or ``class`` columns)."""
    table = pd.read_parquet(path)
    if split is not None and "split" in table.columns:
        table = table[table["split"] == split]
    if "image" not in table.columns or not ({"target", "class"} & set(table.columns)):
        raise NotEnoughCellsError(f"{path} needs an 'image' column and a 'target' or 'class' column.")
    if "target" not in table.columns:
        table = table.assign(target=[int(class_of(c) == TUMOR) for c in table["class"]])
    return table.reset_index(drop=True)


def _concat(parts: list) -> pd.DataFrame:
    parts = [p for p in parts if len(p)]
    if not parts:
        return pd.DataFrame(columns=["image", "label", "class", "target"])
    out = pd.concat(parts, ignore_index=True)
    out.attrs["schema_id"] = parts[0].attrs.get("schema_id")
    return out


def _summary(df: pd.DataFrame) -> dict:
    return {
        "cells": int(len(df)), "images": int(df["image"].nunique()) if len(df) else 0,
        "tumor_cells": int(df["target"].sum()) if len(df) else 0,
        "image_names": sorted(map(str, df["image"].unique())) if len(df) else [],
    }  # fmt: skip


# ---------------------------------------------------------------------------- training
def _start(config: FinetuneConfig, n_features: int):
    """(model, checkpoint dict or None, init description) of the starting point."""
    from ..models import build_model

    init = str(config.init)
    if init == INIT_SCRATCH:
        return build_model(config.arch, n_features, 2), None, {"kind": "scratch", "arch": config.arch}
    path = default_weights_path() if init == INIT_DEFAULT else Path(init)
    if init == INIT_DEFAULT and not path.is_file():
        raise CheckpointError(
            f"The shipped weights are not installed ({path}); start from scratch or a checkpoint file."
        )
    ckpt = read_checkpoint(path)
    if ckpt["schema_id"] not in CLASSIFIER_SCHEMAS:
        raise SchemaMismatchError(
            f"{path} was trained on feature schema {ckpt['schema_id']!r}, which this napari-uam no longer "
            f"classifies with ({', '.join(CLASSIFIER_SCHEMAS)}); start from the shipped weights or from scratch."
        )
    model = build_from_checkpoint(ckpt)
    desc = {"kind": init if init == INIT_DEFAULT else "checkpoint", "path": str(path),
            "model_id": ckpt.get("model_id"), "sha256": file_sha256(path), "arch": ckpt["arch"]}  # fmt: skip
    return model, ckpt, desc


def finetune(
    cells: pd.DataFrame,
    config: FinetuneConfig,
    progress: Optional[Callable[[dict], None]] = None,
    cancel: Optional[Callable[[], bool]] = None,
) -> FinetuneResult:
    """Fine-tune ``config.init`` (or train ``config.arch`` from scratch) on labelled cells.

    Args:
        cells: one row per cell: ``image`` (validation groups), ``target`` (1 tumor, 0
            non-tumor) and the feature columns of the model's schema.
        config: the run settings.
        progress: called with ``{"event": "start", ...}``, then ``{"event": "step", "epoch",
            "fraction"}`` about 20 times an epoch and ``{"event": "epoch", "epoch", "loss",
            "val_accuracy", "val_f1", "val_auc", "seconds", ...}`` after each epoch.
        cancel: polled between steps; True raises :class:`CancelledError`.

    Returns:
        :class:`FinetuneResult` with the best validation epoch's weights.

    Raises:
        NotEnoughCellsError: no cells, or a single class.
        SchemaMismatchError: the cells lack the model's features.
        CheckpointError: the starting checkpoint cannot be used.
        CancelledError: ``cancel()`` returned True.
    """
    import torch
    import torch.nn.functional as F

    from .metrics import classification_metrics
    from .trainer import predict_proba, set_seed

    if cells is None or len(cells) == 0:
        raise NotEnoughCellsError("No labelled cells to train on: classify or annotate some nuclei first.")
    cells = cells.sort_values(["image", "label"] if "label" in cells.columns else ["image"], kind="stable")
    cells = cells.reset_index(drop=True)
    y_all = cells["target"].to_numpy(np.int64)
    if np.unique(y_all).size < 2:
        raise NotEnoughCellsError(
            f"All {len(cells)} labelled cells are {'tumor' if y_all[0] else 'non-tumor'}; label some "
            "cells of the other class too (a classifier needs both)."
        )
    device = resolve_device(config.device)
    threads_before = torch.get_num_threads()
    if config.threads:
        torch.set_num_threads(int(config.threads))
    try:
        set_seed(config.seed)
        torch.set_flush_denormal(True)  # as in trainer.flush_denormals; restored in `finally`
        model, ckpt, init_desc = _start(config, len(DEFAULT_SCHEMA.feature_names))
        if ckpt is not None:
            names, classes = list(ckpt["feature_names"]), list(ckpt["class_names"])
            tumor, schema_id, mpp = int(ckpt["tumor_class"]), ckpt["schema_id"], float(ckpt["mpp"])
            if len(classes) != 2:
                raise CheckpointError(f"Fine-tuning needs a tumor / non-tumor model; this one has classes {classes}.")
        else:
            names, classes, tumor = list(DEFAULT_SCHEMA.feature_names), list(CLASS_NAMES), TUMOR_CLASS
            schema_id, mpp = DEFAULT_SCHEMA.schema_id, float(DEFAULT_SCHEMA.mpp)
        missing = [f for f in names if f not in cells.columns]
        if missing:
            raise SchemaMismatchError(
                f"The cells lack {len(missing)} of the model's features ({', '.join(missing[:5])}...); "
                f"measure them with schema {schema_id!r}."
            )
        # target is 1 for tumor; the model's tumor output may be either index.
        y_all = np.where(y_all == 1, tumor, 1 - tumor)
        groups = cells["image"].astype(str).to_numpy()
        if config.val_fraction > 0 and np.unique(groups).size >= 2:
            tr, va = group_split(groups, config.val_fraction, seed=config.seed)
        else:
            tr, va = np.ones(len(cells), bool), np.zeros(len(cells), bool)
        raw = cells[names].to_numpy(np.float64)
        norm = Normalizer.from_dict(ckpt["normalization"]) if ckpt is not None else Normalizer.fit(raw[tr])
        x = norm.transform(raw)
        x_tr, y_tr, x_va, y_va = x[tr], y_all[tr], x[va], y_all[va]
        if np.unique(y_tr).size < 2:
            raise NotEnoughCellsError(
                "The training images hold a single class once validation images are set aside; "
                "annotate more images, or lower the validation share."
            )
        summary = {"train": _summary(cells[tr]), "val": _summary(cells[va])}
        model = model.to(device)
        opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        counts = np.bincount(y_tr, minlength=2).astype(np.float64)
        w = len(y_tr) / (2 * np.maximum(counts, 1.0)) if config.class_weights else np.ones(2)
        weight = torch.tensor(w, dtype=torch.float32, device=device)
        xt = torch.from_numpy(np.ascontiguousarray(x_tr)).to(device)
        yt = torch.from_numpy(y_tr).to(device)
        rng = np.random.default_rng(config.seed)
        steps = -(-len(xt) // config.batch_size)
        every = max(1, steps // 20)
        t0 = time.perf_counter()

        def report(rec: dict) -> None:
            if progress is not None:
                progress(rec)

        def evaluate() -> dict:
            if not va.any():
                return {}
            return classification_metrics(y_va, predict_proba(model, x_va, device), classes, tumor)

        def score(m: dict) -> float:
            return m["auc"] if np.isfinite(m.get("auc", np.nan)) else m["balanced_accuracy"]

        report({"event": "start", "epochs": config.epochs, "n_train": int(len(y_tr)), "n_val": int(va.sum()),
                "init": init_desc, "device": device})  # fmt: skip
        history, best, best_epoch, best_state, best_metrics, bad = [], -np.inf, 0, None, {}, 0
        start_metrics = evaluate() if ckpt is not None else {}
        if start_metrics:
            rec = {"event": "epoch", "epoch": 0, "loss": float("nan"), "val_accuracy": start_metrics["accuracy"],
                   "val_f1": start_metrics["f1"], "val_auc": start_metrics["auc"], "seconds": 0.0}  # fmt: skip
            history.append(rec)
            report(rec)
        for epoch in range(1, config.epochs + 1):
            model.train()
            order = torch.from_numpy(rng.permutation(len(xt))).to(device)
            tot, nb = torch.zeros((), device=device), 0
            for lo in range(0, len(order), config.batch_size):
                if cancel is not None and cancel():
                    raise CancelledError(f"Training cancelled at epoch {epoch}; nothing was saved.")
                idx = order[lo : lo + config.batch_size]
                logits = model(xt[idx])
                loss = F.cross_entropy(logits, yt[idx], weight=weight)
                opt.zero_grad(set_to_none=True)
                (loss + config.aux_weight * model.aux_loss).backward()
                opt.step()
                tot += loss.detach()
                nb += 1
                if nb % every == 0:
                    report({"event": "step", "epoch": epoch, "fraction": nb / steps})
            m = evaluate()
            rec = {"event": "epoch", "epoch": epoch, "loss": tot.item() / max(nb, 1),
                   "val_accuracy": m.get("accuracy", float("nan")), "val_f1": m.get("f1", float("nan")),
                   "val_auc": m.get("auc", float("nan")), "seconds": time.perf_counter() - t0}  # fmt: skip
            history.append(rec)
            report(rec)
            if not m or score(m) > best + 1e-4:
                best, best_epoch, bad = (score(m) if m else best), epoch, 0
                best_state, best_metrics = copy.deepcopy(model.state_dict()), m
            else:
                bad += 1
                if config.patience and bad >= config.patience:
                    break
        model.load_state_dict(best_state)
        calibration = fit_temperature(
            model_logits(model, x_va, device), y_va, classes, tumor,
            why_none="no validation cells (validation share 0, or a single annotated image)",
        )  # fmt: skip
        model = model.to("cpu").eval()
        domain, trust = trust_model(ckpt, init_desc, cells, x)
    finally:
        torch.set_num_threads(threads_before)
        torch.set_flush_denormal(False)
    return FinetuneResult(
        model=model, normalizer=norm, feature_names=names, class_names=classes, tumor_class=tumor,
        schema_id=schema_id, mpp=mpp, history=history, best_epoch=best_epoch, val_metrics=best_metrics,
        start_metrics=start_metrics, summary=summary, init=init_desc, seconds=time.perf_counter() - t0,
        config={**config.to_dict(), "device": device}, calibration=calibration,
        domain=None if domain is None else domain.to_dict(), trust=trust,
    )  # fmt: skip


#: Column naming the image a cell came from when ``image`` holds validation groups (the dock
#: splits the cells of one or two images into groups "<image> (cells k/n)").
SOURCE_IMAGE = "source_image"


def trust_model(ckpt: Optional[dict], init: dict, cells: pd.DataFrame, x: np.ndarray):
    """The fine-tuned model's trust model: the start's statistics plus the fine-tuning images.

    Each annotated image with at least :data:`napari_uam.domain.MIN_CELLS` cells and a stain
    estimate (the :data:`~napari_uam.domain.STAIN_COLUMNS`) becomes an anchor: its descriptor
    (stain vector and projected feature mean, from ``x``, the cells' normalised features).

    Returns:
        (:class:`~napari_uam.domain.DomainModel` or None, record for the checkpoint).
    """
    if ckpt is None:
        return None, {"reason": "trained from scratch: there are no base training statistics to judge new images by"}
    if not ckpt.get("domain"):
        return None, {"reason": f"the starting model {ckpt.get('model_id') or init.get('path')!r} carries no "
                                "trust statistics (feature statistics of its training data)"}  # fmt: skip
    base = DomainModel.from_dict(ckpt["domain"])
    key = SOURCE_IMAGE if SOURCE_IMAGE in cells.columns else "image"
    has_stain = all(c in cells.columns for c in STAIN_COLUMNS)
    descriptors, names, skipped = [], [], []
    for name, rows in cells.groupby(cells[key].astype(str), sort=True).indices.items():
        stain = stain_from_values(cells[STAIN_COLUMNS].iloc[rows[0]].to_numpy()) if has_stain else None
        if len(rows) < MIN_CELLS:
            skipped.append(f"{name} ({len(rows)} cells, fewer than {MIN_CELLS})")
        elif stain is None:
            skipped.append(f"{name} (no stain estimate)")
        else:
            descriptors.append(base.descriptor(stain, x[rows]))
            names.append(name)
    model = base.with_anchors(descriptors, names)
    n_before = 0 if base.anchors is None else len(base.anchors)
    return model, {
        "base": ckpt.get("model_id"), "threshold": float(base.threshold), "anchor_images": names,
        "anchors": int(len(names) + n_before), "inherited_anchors": int(n_before), "skipped": skipped,
        "rule": "distance = min(distance to the base training mean, distance to the nearest anchor); "
                "same precision matrix and threshold as the base",
    }  # fmt: skip


def trust_sentence(result: "FinetuneResult") -> str:
    """One sentence for the CLI and the dock: the trust model, or why there is none."""
    t = result.trust or {}
    if result.domain is None:
        return f"Trust model: none ({t.get('reason', 'not recorded')}); the domain check will say 'unknown'."
    skipped = f"; skipped {', '.join(t['skipped'])}" if t.get("skipped") else ""
    return (f"Trust model: {t.get('base')}'s statistics + {len(t.get('anchor_images', []))} fine-tuning image(s) as anchors "
            f"(threshold {t.get('threshold', float('nan')):.2f}{skipped}).")  # fmt: skip


# ------------------------------------------------------------------------------ saving
def card_markdown(card: dict, sha256: str) -> str:
    """Model card (markdown) of a fine-tuned checkpoint's metadata."""
    tr, m = card.get("training", {}), card.get("metrics", {})
    init = tr.get("init", {})
    start = (
        "trained from scratch"
        if init.get("kind") == "scratch"
        else (f"fine-tuned from `{init.get('model_id')}` (sha256 `{str(init.get('sha256'))[:12]}`)")
    )
    cfg = tr.get("config", {})
    lines = [
        f"# Model card: `{card['model_id']}`",
        "",
        f"- Architecture: **{card['arch']}** ({card['n_parameters']:,} parameters), {start}",
        f"- Task: {' vs '.join(card['class_names'][::-1])} per nucleus (tumor class index {card['tumor_class']})",
        f"- Input: {len(card['feature_names'])} features of schema `{card['schema_id']}` at {card['mpp']} um/px",
        f"- Created {card['created']}; versions {card['versions']}; SHA-256 `{sha256}`",
        "",
        "## Training",
        "",
        "| part | images | cells | tumor cells |",
        "|---|---|---|---|",
    ]
    for part in ("train", "val"):
        s = tr.get(part, {})
        lines.append(f"| {part} | {s.get('images', 0)} | {s.get('cells', 0)} | {s.get('tumor_cells', 0)} |")
    lines += [
        "",
        f"AdamW lr {cfg.get('lr')}, batch {cfg.get('batch_size')}, seed {cfg.get('seed')}, validation share "
        f"{cfg.get('val_fraction')} of the images; kept epoch {tr.get('best_epoch')} of {tr.get('epochs_run')} "
        f"(early stopping on validation AUC, patience {cfg.get('patience')}), {tr.get('seconds', 0):.1f} s on "
        f"{cfg.get('device')}. Training images: {', '.join(tr.get('train', {}).get('image_names', []))}.",
        "",
        "## Validation (held-out images)",
        "",
        "| model | cells | accuracy | F1 (tumor) | AUC |",
        "|---|---|---|---|---|",
    ]
    for name, label in (("val_start", "starting model"), ("val", "this model")):
        mm = m.get(name) or {}
        if "accuracy" in mm:
            lines.append(f"| {label} | {mm['n']} | {mm['accuracy']:.3f} | {mm['f1']:.3f} | {mm['auc']:.3f} |")
    lines += ["", *calibration_card_lines(card.get("calibration")), *trust_card_lines(card)]
    lines += ["", "Research use only; not a diagnostic device.", ""]
    return "\n".join(lines)


def _num(v, fmt=".4f") -> str:
    return "-" if v is None else format(float(v), fmt)


def calibration_card_lines(cal: Optional[dict]) -> list:
    """Model-card section of the temperature and its calibration record."""
    lines = ["## Calibration (temperature scaling on the validation cells)", ""]
    if not cal:
        return lines + ["No calibration record: `tumor_probability` is the raw softmax (T = 1)."]
    t = float(cal.get("temperature", 1.0))
    if cal.get("fitted"):
        lines.append(f"**T = {t:.4f}**: `tumor_probability` = softmax(logits / T), T minimising the validation NLL "
                     f"within {cal.get('bounds')}.")  # fmt: skip
    else:
        lines.append(f"**T = 1** (not fitted: {cal.get('reason')}).")
    per = ", ".join(f"{n} {c}" for c, n in (cal.get("cells_per_class") or {}).items())
    lines += [
        "",
        "| validation cells | per class | NLL before | NLL after | ECE before | ECE after |",
        "|---|---|---|---|---|---|",
        f"| {cal.get('n_cells', 0)} | {per or '-'} | {_num(cal.get('nll_before'))} | {_num(cal.get('nll_after'))} | "
        f"{_num(cal.get('ece_before'))} | {_num(cal.get('ece_after'))} |",
    ]  # fmt: skip
    return lines


def trust_card_lines(card: dict) -> list:
    """Model-card section of the trust model (domain check) of a fine-tuned checkpoint."""
    t = (card.get("training") or {}).get("trust") or {}
    lines = ["", "## Trust signal (domain check)", ""]
    dom = card.get("domain")
    if not dom:
        return lines + [f"None: {t.get('reason', 'no trust statistics')}. Every image's domain status is "
                        "**unknown**: check the calls yourself."]  # fmt: skip
    names = t.get("anchor_images") or []
    lines.append(
        f"The statistics of `{t.get('base')}`'s training images, plus {len(names)} fine-tuning image(s) as anchors"
        f"{(' (' + ', '.join(names) + ')') if names else ''}; {t.get('inherited_anchors', 0)} anchor(s) inherited. "
        f"An image is in domain when min(distance to the base training mean, distance to the nearest anchor) "
        f"<= {float(dom['threshold']):.2f} (the base threshold)."
    )  # fmt: skip
    if t.get("skipped"):
        lines.append(f"Not anchors: {', '.join(t['skipped'])}.")
    return lines


def _is_shipped(path: Path) -> bool:
    weights_dir = default_weights_path().parent.resolve()
    return path.resolve().parent == weights_dir


def save_finetuned(
    result: FinetuneResult, path, overwrite: bool = False, model_id: Optional[str] = None
) -> tuple[Path, Path]:
    """Write the checkpoint and its ``.md`` model card, both or neither.

    Both files are first written under temporary names in the target folder, then renamed.

    Returns:
        (checkpoint path, model card path).

    Raises:
        CheckpointError: ``path`` is in the shipped weights folder (never replaced).
        FileExistsError: ``path`` or its card exists and ``overwrite`` is False.
    """
    path = Path(path)
    if path.suffix not in (".pt", ".pth"):
        path = path.with_suffix(".pt")
    card_path = path.with_suffix(".md")
    if _is_shipped(path):
        raise CheckpointError(
            f"{path} is in napari-uam's shipped weights folder, which is never overwritten; choose another file."
        )
    taken = [p for p in (path, card_path) if p.exists()]
    if taken and not overwrite:
        raise FileExistsError(f"{', '.join(map(str, taken))} exists; choose another file name or allow overwriting.")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=".tmp", dir=path.parent))
    try:
        tmp_ckpt = tmp_dir / path.name
        training = {
            "finetune": True, "init": result.init, "train": result.summary["train"], "val": result.summary["val"],
            "config": result.config, "best_epoch": result.best_epoch, "epochs_run": max(0, len(result.history) - (1 if result.start_metrics else 0)),
            "seconds": result.seconds, "history": result.history, "trust": result.trust,
        }  # fmt: skip
        metrics = {"val": result.val_metrics, "val_start": result.start_metrics}
        sha = save_checkpoint(
            tmp_ckpt, result.model, feature_names=result.feature_names, schema_id=result.schema_id, mpp=result.mpp,
            class_names=result.class_names, tumor_class=result.tumor_class, normalizer=result.normalizer,
            training=training, metrics=metrics, model_id=model_id or path.stem,
            calibration=result.calibration or {"temperature": 1.0, "fitted": False, "reason": "not calibrated"},
            domain=result.domain,
        )  # fmt: skip
        card = {k: v for k, v in read_checkpoint(tmp_ckpt).items() if k != "state_dict"}
        tmp_card = tmp_dir / card_path.name
        tmp_card.write_text(card_markdown(card, sha))
        os.chmod(tmp_card, 0o644)
        os.replace(tmp_ckpt, path)
        os.replace(tmp_card, card_path)
    finally:
        for f in tmp_dir.glob("*"):
            f.unlink(missing_ok=True)
        tmp_dir.rmdir()
    return path, card_path


# -------------------------------------------------------------------------- command line
def add_train_parser(sub) -> argparse.ArgumentParser:
    """Add the ``train`` sub-command to the ``napari-uam`` parser."""
    text = "fine-tune (or train from scratch) the cell classifier on annotated projects"
    c = sub.add_parser("train", help=text, description=text + " (the same run as the napari Train dock)")
    c.add_argument(
        "inputs",
        nargs="+",
        help="project folders saved by the Annotate dock, folders of them, "
        "or cell-table .parquet files (image, target, features)",
    )
    c.add_argument("--out", required=True, help="checkpoint to write (.pt; a .md model card is written beside it)")
    c.add_argument("--init", default=INIT_DEFAULT, help="'default' (shipped weights), 'scratch' or a checkpoint file")
    c.add_argument("--arch", default=FinetuneConfig.arch, help="architecture when training from scratch")
    c.add_argument("--epochs", type=int, default=FinetuneConfig.epochs)
    c.add_argument("--lr", type=float, default=FinetuneConfig.lr)
    c.add_argument("--batch-size", type=int, default=FinetuneConfig.batch_size)
    c.add_argument("--patience", type=int, default=FinetuneConfig.patience, help="early stopping patience (0: off)")
    c.add_argument(
        "--val-fraction",
        type=float,
        default=FinetuneConfig.val_fraction,
        help="share of the images held out for validation",
    )
    c.add_argument("--seed", type=int, default=FinetuneConfig.seed)
    c.add_argument("--device", default="cpu", choices=["auto", "cuda", "cpu"])
    c.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: fastest and repeatable)")
    c.add_argument("--split", default=None, help="for .parquet inputs: keep rows of this split only")
    c.add_argument("--overwrite", action="store_true", help="replace an existing checkpoint")
    c.add_argument("--quiet", action="store_true")
    return c


def config_from_args(a) -> FinetuneConfig:
    return FinetuneConfig(
        init=a.init, arch=a.arch, epochs=a.epochs, lr=a.lr, batch_size=a.batch_size, patience=a.patience,
        val_fraction=a.val_fraction, seed=a.seed, device=a.device, threads=a.threads,
    )  # fmt: skip


def run_cli(a) -> int:
    """Body of ``napari-uam train``: exit 0 when the checkpoint was written."""
    say = (lambda s: None) if a.quiet else (lambda s: print(s, flush=True))
    out = Path(a.out)
    if not a.overwrite and (out.exists() or out.with_suffix(".md").exists()):
        raise FileExistsError(f"{out} exists; choose another --out or pass --overwrite.")
    parts = []
    for inp in a.inputs:
        if str(inp).endswith(".parquet"):
            parts.append(cells_from_table(inp, a.split))
        else:
            parts.append(cells_from_projects([inp], log=say))
    cells = _concat(parts)
    cfg = config_from_args(a)

    def progress(rec):
        if rec["event"] == "start":
            say(f"training on {rec['n_train']} cells, validating on {rec['n_val']} ({rec['device']})")
        elif rec["event"] == "epoch":
            say(json.dumps({k: (round(v, 4) if isinstance(v, float) else v) for k, v in rec.items() if k != "event"}))

    result = finetune(cells, cfg, progress=progress)
    ckpt, card = save_finetuned(result, out, overwrite=a.overwrite)
    vm = result.val_metrics
    acc = f", validation accuracy {vm['accuracy']:.3f}" if vm else ""
    say(f"kept epoch {result.best_epoch}{acc}; wrote {ckpt} and {card}")
    say(describe(result.calibration))
    say(trust_sentence(result))
    return 0


def main(argv=None) -> int:
    """``python -m napari_uam.training.finetune ...`` (same as ``napari-uam train ...``)."""
    p = argparse.ArgumentParser(prog="napari-uam")
    add_train_parser(p.add_subparsers(dest="command", required=True))
    a = p.parse_args(["train", *(sys.argv[1:] if argv is None else argv)])
    try:
        return run_cli(a)
    except (UAMError, OSError) as err:
        print(f"napari-uam: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
