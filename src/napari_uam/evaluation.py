"""``napari-uam evaluate``: metrics of a cell classifier on cell tables with ground truth.

    napari-uam evaluate --model CKPT|default TABLE... [--target target] [--out metrics.json]

A TABLE is a parquet or CSV cell table with the feature columns of the model's schema (as
``napari-uam measure`` writes, or ``runs/cell_tables/*.parquet``) and a ground-truth column
(``target`` by default: a class index or a class name of the model). Prints accuracy, balanced
accuracy, macro F1, AUC (tumor vs rest) and the confusion matrix per table and pooled, and
writes them as JSON. A table whose features are not the model's schema fails with the
:class:`~napari_uam.errors.SchemaMismatchError` message.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .errors import UAMError
from .io.atomic import atomic_path
from .pipeline import BASE_COLUMNS, CLASS_COLUMNS, get_classifier

#: Columns of a cell table that are neither features nor ground truth.
META_COLUMNS = {"dataset", "split", "image", "patient", "cell_class", "index"}


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise UAMError(f"{path}: no such cell table.")
    if path.suffix.lower() == ".parquet":
        return pd.read_parquet(path)
    if path.suffix.lower() == ".csv":
        return pd.read_csv(path)
    raise UAMError(f"{path.name}: a cell table must be .parquet or .csv.")


def _targets(table: pd.DataFrame, column: str, class_names: Sequence[str], name: str) -> np.ndarray:
    if column not in table.columns:
        raise UAMError(
            f"{name} has no ground-truth column {column!r}; pass --target with one of: "
            f"{', '.join(map(str, table.columns[:12]))}{', ...' if len(table.columns) > 12 else ''}."
        )
    y = table[column]
    if y.dtype.kind in "iub":
        bad = sorted(set(y.unique()) - set(range(len(class_names))))
        if bad:
            raise UAMError(f"{name}: {column!r} holds {bad}, not class indices of {list(class_names)}.")
        return y.to_numpy(dtype=int)
    index = {str(c): i for i, c in enumerate(class_names)}
    bad = sorted(set(map(str, y.unique())) - set(index))
    if bad:
        raise UAMError(f"{name}: {column!r} holds {bad[:5]}, not classes of the model {list(class_names)}.")
    return np.array([index[str(v)] for v in y], dtype=int)


def evaluate_tables(model, tables: Sequence, target: str = "target", device: str = "auto") -> dict:
    """Metrics of ``model`` on each table and on all of them pooled.

    Args:
        model: checkpoint path, ``"default"``/None for the shipped weights, or a loaded classifier.
        tables: parquet / CSV paths.
        target: ground-truth column (class index or class name).
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.

    Returns:
        ``{"model": {...}, "tables": {name: metrics}, "all": metrics}``; metrics as
        :func:`napari_uam.training.metrics.classification_metrics` plus ``confusion``
        (rows: truth, columns: prediction).

    Raises:
        SchemaMismatchError: a table's feature columns are not the model's.
        UAMError: unreadable table, missing or unknown ground truth.
    """
    from sklearn.metrics import confusion_matrix

    from .training.metrics import classification_metrics

    clf = get_classifier(None if model in (None, "default") else model, device)
    names = list(clf.class_names)
    skip = set(BASE_COLUMNS) | set(CLASS_COLUMNS) | META_COLUMNS | {target}
    results, ys, ps = {}, [], []

    def metrics(y, p):
        m = classification_metrics(y, p, names, positive=clf.tumor_class)
        m["confusion"] = confusion_matrix(y, p.argmax(1), labels=list(range(len(names)))).tolist()
        return m

    for path in map(Path, tables):
        table = _read_table(path)
        y = _targets(table, target, names, path.name)
        feats = table[[c for c in table.columns if c not in skip]]
        feats.attrs = dict(table.attrs)
        p = clf.predict_proba(feats)  # raises SchemaMismatchError on other features
        results[path.name] = metrics(y, p)
        ys.append(y)
        ps.append(p)
    if not ys:
        raise UAMError("No cell table given: pass parquet or CSV tables with a ground-truth column.")
    return {
        "model": {
            "id": clf.model_id,
            "sha256": clf.sha256,
            "arch": clf.arch,
            "schema_id": clf.schema_id,
            "classes": names,
            "tumor_class": names[clf.tumor_class],
        },
        "target": target,
        "tables": results,
        "all": metrics(np.concatenate(ys), np.concatenate(ps)),
    }


def render(result: dict) -> str:
    """A plain-text table of the metrics and the pooled confusion matrix."""
    head = f"{'table':<32} {'cells':>7} {'acc':>6} {'bal.acc':>7} {'macroF1':>7} {'AUC':>6}"
    lines = [
        f"model {result['model']['id']} (sha256 {result['model']['sha256'][:12]}), "
        f"tumor class {result['model']['tumor_class']!r}",
        head,
        "-" * len(head),
    ]
    rows = list(result["tables"].items()) + [("all", result["all"])]
    for name, m in rows:
        lines.append(
            f"{name[:32]:<32} {m['n']:>7} {m['accuracy']:>6.3f} {m['balanced_accuracy']:>7.3f} "
            f"{m['macro_f1']:>7.3f} {m['auc']:>6.3f}"
        )
    names = result["model"]["classes"]
    lines.append("")
    lines.append("confusion (all; rows truth, columns predicted): " + ", ".join(names))
    for n, row in zip(names, result["all"]["confusion"]):
        lines.append(f"  {n:<12} " + " ".join(f"{v:>7}" for v in row))
    return "\n".join(lines)


def add_evaluate_parser(sub) -> None:
    """Add the ``evaluate`` subcommand to the command line's subparsers."""
    text = "metrics of a cell classifier on cell tables with a ground-truth column"
    c = sub.add_parser("evaluate", help=text, description=text)
    c.add_argument("tables", nargs="+", help="cell tables (.parquet or .csv) with features and ground truth")
    c.add_argument("--model", default="default", help="checkpoint file, or 'default' for the shipped weights")
    c.add_argument("--target", default="target", help="ground-truth column: class index or class name")
    c.add_argument("--out", default=None, help="write the metrics to this JSON file")
    c.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])


def run_cli(args) -> int:
    """Run ``napari-uam evaluate`` (errors propagate to the command line's handler)."""
    result = evaluate_tables(args.model, args.tables, args.target, args.device)
    print(render(result))
    if args.out:
        with atomic_path(Path(args.out), overwrite=True) as tmp:
            tmp.write_text(json.dumps(result, indent=2) + "\n")
        print(f"metrics written to {args.out}")
    return 0
