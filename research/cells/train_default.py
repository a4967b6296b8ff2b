"""Train the shipped default classifier on every labelled cell and write it with its model card.

    python -m research.cells.train_default --tables runs/cell_tables --arch uam \
        --out src/napari_uam/weights/uam_default.pt

All cells of CoNSeP and BRCA-M2C (both splits) are used, except 10 % of the images / patients
of each dataset held out to choose the epoch (early stopping); the card records their metrics.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd

from napari_uam.classify.checkpoint import default_weights_path, save_checkpoint
from research.cells.datasets import DATASETS, DEFAULT_TABLES, load_table
from research.cells.protocol import CLASS_NAMES, TUMOR_CLASS, arrays, group_split, summary
from research.cells.trainer import TrainConfig, train_model


def all_cells_split(tables: dict[str, pd.DataFrame], val_fraction: float = 0.1):
    """Train / val parts over all datasets, holding out whole images (CoNSeP) or patients (BRCA)."""
    train, val = [], []
    for ds, t in tables.items():
        key = "patient" if ds == "brca_m2c" else "image"
        tr, va = group_split(t[key], val_fraction, seed=0)
        train.append(t[tr])
        val.append(t[va])
    return {"train": pd.concat(train, ignore_index=True), "val": pd.concat(val, ignore_index=True)}


def model_card_markdown(card: dict, sha256: str) -> str:
    """Human-readable model card of a checkpoint's metadata."""
    tr, m = card.get("training", {}), card.get("metrics", {})
    lines = [
        f"# Model card: `{card['model_id']}`",
        "",
        f"- Architecture: **{card['arch']}** ({card['n_parameters']:,} parameters), config "
        f"`{json.dumps({k: v for k, v in card['config'].items()})}`",
        f"- Task: {' vs '.join(card['class_names'][::-1])} per nucleus (tumor class index {card['tumor_class']})",
        f"- Input: {len(card['feature_names'])} radiomics features of schema `{card['schema_id']}` "
        f"measured at {card['mpp']} um/px; normalisation `{card['normalization']['method']}` "
        "(signed log, median / IQR, clip +-8, NaN -> training median)",
        f"- Checkpoint format {card['format_version']}, created {card['created']}, versions {card['versions']}",
        f"- SHA-256: `{sha256}`",
        "",
        "## Training data",
        "",
        "CoNSeP (colorectal, 40x, ground-truth nucleus masks; tumor proxy = epithelial) and "
        "BRCA-M2C (breast, 20x, point labels matched to segmented nuclei within 3 um).",
        "",
        "| dataset | part | cells | images | patients | tumor cells |",
        "|---|---|---|---|---|---|",
    ]
    for part in ("train", "val"):
        for ds, s in tr.get(part, {}).items():
            lines.append(f"| {ds} | {part} | {s['cells']} | {s['images']} | {s['patients']} | {s['tumor_cells']} |")
    lines += [
        "",
        f"Optimiser AdamW lr {tr.get('config', {}).get('lr')}, batch {tr.get('config', {}).get('batch_size')}, "
        f"best epoch {tr.get('best_epoch')} of {tr.get('epochs_run')} (early stopping on held-out AUC), "
        f"seed {tr.get('config', {}).get('seed')}, {tr.get('seconds', 0):.0f} s on {tr.get('device')}.",
        "",
        "## Held-out metrics (images / patients never seen in training)",
        "",
        "| split | cells | accuracy | F1 (tumor) | AUC |",
        "|---|---|---|---|---|",
    ]
    for name, mm in m.items():
        if isinstance(mm, dict) and "accuracy" in mm:
            lines.append(f"| {name} | {mm['n']} | {mm['accuracy']:.3f} | {mm['f1']:.3f} | {mm['auc']:.3f} |")
    lines += [
        "",
        "## Limits",
        "",
        "- Trained on two small public datasets (colorectal and breast H&E); other organs, "
        "stains and scanners are out of distribution. `epithelial` in CoNSeP includes normal "
        "epithelium, so the tumor label is a proxy there.",
        "- Features must come from the same schema; the pipeline checks the schema id.",
        "- Research use only; not a diagnostic device.",
        "",
    ]
    return "\n".join(lines)


def train_default(
    tables_dir=DEFAULT_TABLES,
    out=None,
    arch: str = "uam",
    config: TrainConfig | None = None,
    datasets=DATASETS,
    max_train_cells: int | None = None,
    log=print,
) -> Path:
    """Train ``arch`` on all cells and write the checkpoint plus ``<out>.md`` model card.

    Returns:
        Path of the written checkpoint.
    """
    from napari_uam.radiomics import DEFAULT_SCHEMA
    from napari_uam.training.metrics import classification_metrics
    from napari_uam.training.trainer import predict_proba

    out = Path(out or default_weights_path())
    tables = {ds: load_table(tables_dir, ds) for ds in datasets}
    parts = all_cells_split(tables)
    if max_train_cells is not None and len(parts["train"]) > max_train_cells:
        parts["train"] = parts["train"].sample(n=max_train_cells, random_state=0)
    norm, arr, feats = arrays(parts, list(DEFAULT_SCHEMA.feature_names))
    cfg = config or TrainConfig(arch=arch)
    cfg.arch = arch
    res = train_model(*arr["train"], *arr["val"], len(CLASS_NAMES), cfg, progress=lambda r: log(json.dumps(r)))
    metrics = {"heldout_all": res.val_metrics}
    device = next(res.model.parameters()).device
    # Per-dataset held-out metrics.
    for ds in datasets:
        sel = (parts["val"]["dataset"] == ds).to_numpy()
        if sel.any():
            proba = predict_proba(res.model, arr["val"][0][sel], str(device))
            metrics[f"heldout_{ds}"] = classification_metrics(arr["val"][1][sel], proba, CLASS_NAMES, TUMOR_CLASS)
    import torch

    training = {
        "train": summary(parts["train"]), "val": summary(parts["val"]), "config": cfg.to_dict(),
        "best_epoch": res.best_epoch, "epochs_run": len(res.history), "seconds": res.seconds,
        "history": res.history, "device": str(device),
        "torch_threads": torch.get_num_threads(),
    }  # fmt: skip
    res.model.to("cpu")
    sha = save_checkpoint(
        out, res.model, feature_names=feats, schema_id=DEFAULT_SCHEMA.schema_id, mpp=DEFAULT_SCHEMA.mpp,
        class_names=CLASS_NAMES, tumor_class=TUMOR_CLASS, normalizer=norm, training=training,
        metrics=metrics, model_id=out.stem,
    )  # fmt: skip
    from napari_uam.classify.checkpoint import read_checkpoint

    card = {k: v for k, v in read_checkpoint(out).items() if k != "state_dict"}
    out.with_suffix(".md").write_text(model_card_markdown(card, sha))
    log(f"wrote {out} ({out.stat().st_size / 1024:.0f} KiB, sha256 {sha[:12]}) and {out.with_suffix('.md')}")
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Train the shipped default cell classifier on all labelled cells.")
    p.add_argument("--tables", default=str(DEFAULT_TABLES))
    p.add_argument("--out", default=str(default_weights_path()))
    p.add_argument("--arch", default="uam")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--patience", type=int, default=5)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (1 is fastest for these tiny models)")
    p.add_argument("--max-train-cells", type=int, default=None)
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(a.threads)
    cfg = TrainConfig(
        arch=a.arch, lr=a.lr, batch_size=a.batch_size, max_epochs=a.epochs, patience=a.patience,
        seed=a.seed, device=a.device,
    )  # fmt: skip
    train_default(a.tables, a.out, a.arch, cfg, max_train_cells=a.max_train_cells)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
