"""Does fine-tuning on a few annotated patches of a new dataset help? CoNSeP -> BRCA-M2C.

    PYTHONPATH=src python benchmarks/finetune_bench.py --json runs/finetune_cpu.json --md docs/results.md
    PYTHONPATH=src python benchmarks/finetune_bench.py --from-json runs/finetune_cpu.json [--gpu-json X] --md docs/results.md

1. A base model is trained on CoNSeP only (all 27 images, 15 % of them validating early
   stopping), with :func:`napari_uam.training.finetune.finetune` from scratch.
2. For each seed, 10 BRCA-M2C *train* images are drawn at random. On them the base model is
   fine-tuned (2 of the 10 images validate early stopping, as the Train dock does), and the
   same architecture is trained from scratch with the same split.
3. Every model is evaluated on all cells of the official BRCA-M2C *val* split (other patients).

The three rows -- no fine-tuning, fine-tuned, from scratch -- are the same function the napari
Train dock and ``napari-uam train`` call, with their defaults. Cells come from the cell tables
(``runs/cell_tables`` or a carried copy, e.g. ``.gpu_carry/tables``); nothing here reads images,
so the script runs on a machine without napari, numba or pyradiomics. Writes JSON and the
``finetune`` section of docs/results.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/
sys.path.insert(0, str(REPO / "benchmarks"))

CONDITIONS = (("base", "CoNSeP-only model, no fine-tuning"), ("finetuned", "fine-tuned on the 10 images"),
              ("scratch", "trained from scratch on the 10 images"))  # fmt: skip


def _tables(path: Path) -> dict:
    import pandas as pd

    out = {}
    for ds in ("consep", "brca_m2c"):
        t = pd.read_parquet(path / f"{ds}.parquet")
        out[ds] = t
    return out


def _evaluate(result, cells) -> dict:
    from napari_uam.training.metrics import classification_metrics
    from napari_uam.training.trainer import predict_proba

    x = result.normalizer.transform(cells[result.feature_names].to_numpy(np.float64))
    y = np.where(cells["target"].to_numpy(np.int64) == 1, result.tumor_class, 1 - result.tumor_class)
    m = classification_metrics(y, predict_proba(result.model, x, "cpu"), result.class_names, result.tumor_class)
    return {k: m[k] for k in ("n", "accuracy", "balanced_accuracy", "f1", "auc")}


def _result_from_ckpt(path):
    """A FinetuneResult-like view of a checkpoint (model + normaliser) for evaluation."""
    from types import SimpleNamespace

    from napari_uam.classify.checkpoint import build_from_checkpoint, read_checkpoint
    from napari_uam.classify.normalize import Normalizer

    ck = read_checkpoint(path)
    return SimpleNamespace(model=build_from_checkpoint(ck), normalizer=Normalizer.from_dict(ck["normalization"]),
                           feature_names=ck["feature_names"], class_names=ck["class_names"], tumor_class=ck["tumor_class"])  # fmt: skip


def run(a) -> dict:
    import torch

    from napari_uam.device import resolve_device
    from napari_uam.training.finetune import FinetuneConfig, finetune, save_finetuned

    device = resolve_device(a.device)
    tables = _tables(Path(a.tables))
    consep, brca = tables["consep"], tables["brca_m2c"]
    brca_train, brca_val = brca[brca["split"] == "train"], brca[brca["split"] == "val"]
    if a.quick:
        consep = consep[consep["image"].isin(sorted(consep["image"].unique())[:6])]
    out_dir = Path(a.workdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rec = {"device": device, "device_name": torch.cuda.get_device_name(0) if device == "cuda" else platform.processor() or platform.machine(),
           "torch": torch.__version__, "arch": a.arch, "n_images": a.n_images, "seeds": a.seeds, "quick": bool(a.quick),
           "brca_val": {"cells": int(len(brca_val)), "images": int(brca_val["image"].nunique())}, "runs": []}  # fmt: skip
    t0 = time.perf_counter()
    base_cfg = FinetuneConfig(init="scratch", arch=a.arch, epochs=a.base_epochs, lr=1e-3, patience=3,
                              val_fraction=0.15, seed=0, device=device)  # fmt: skip
    base_path = out_dir / "consep_only.pt"
    if a.base:  # reuse a base trained by an earlier run (its JSON has its timing)
        base, base_path = _result_from_ckpt(a.base), Path(a.base)
        rec["base"] = json.loads(Path(a.base_json).read_text())["base"] if a.base_json else {"cells": int(len(consep))}
        rec["base"]["reused"] = str(a.base)
    else:
        base = finetune(consep, base_cfg)
        rec["base"] = {"seconds": base.seconds, "best_epoch": base.best_epoch, "epochs_run": len(base.history),
                       "cells": int(len(consep)), "val": base.val_metrics and {k: base.val_metrics[k] for k in ("accuracy", "auc")}}  # fmt: skip
        save_finetuned(base, base_path, overwrite=True)
        print(f"base (CoNSeP only, {len(consep)} cells): {base.seconds:.1f} s, epoch {base.best_epoch}", flush=True)
    base_eval = _evaluate(base, brca_val)
    images = sorted(brca_train["image"].unique())
    for seed in a.seeds:
        pick = list(np.random.default_rng(seed).choice(images, a.n_images, replace=False))
        few = brca_train[brca_train["image"].isin(pick)]
        row = {"seed": seed, "images": pick, "train_cells": int(len(few)), "base": base_eval}
        ft = finetune(few, FinetuneConfig(init=str(base_path), epochs=a.epochs, lr=a.lr, seed=seed, device=device))
        row["finetuned"] = {**_evaluate(ft, brca_val), "seconds": ft.seconds, "best_epoch": ft.best_epoch,
                            "epochs_run": len(ft.history) - 1}  # fmt: skip
        sc = finetune(
            few, FinetuneConfig(init="scratch", arch=a.arch, epochs=a.epochs, lr=1e-3, seed=seed, device=device)
        )
        row["scratch"] = {**_evaluate(sc, brca_val), "seconds": sc.seconds, "best_epoch": sc.best_epoch,
                          "epochs_run": len(sc.history)}  # fmt: skip
        rec["runs"].append(row)
        print(f"seed {seed}: {len(few)} cells; BRCA val accuracy base {base_eval['accuracy']:.3f}, "
              f"fine-tuned {row['finetuned']['accuracy']:.3f} ({ft.seconds:.1f} s), "
              f"scratch {row['scratch']['accuracy']:.3f} ({sc.seconds:.1f} s)", flush=True)  # fmt: skip
    rec["total_seconds"] = time.perf_counter() - t0
    return rec


def _ms(vals, pct=True) -> str:
    v = np.asarray(vals, float) * (100 if pct else 1)
    return f"{v.mean():.1f} +- {v.std():.1f}" if len(v) > 1 else f"{v.mean():.1f}"


def render(rec: dict, gpu: dict | None = None) -> str:
    runs = rec["runs"]
    n_cells = [r["train_cells"] for r in runs]
    lines = [
        "## Fine-tuning on a few annotated patches (CoNSeP -> BRCA-M2C)",
        "",
        f"A {rec['arch']} model trained on CoNSeP only ({rec['base']['cells']} cells) is fine-tuned on "
        f"{rec['n_images']} BRCA-M2C train images ({min(n_cells)}-{max(n_cells)} labelled cells; 2 of the images "
        "validate early stopping) with the Train dock's defaults, and compared with the same architecture trained "
        f"from scratch on the same images. Test: all {rec['brca_val']['cells']} cells of the "
        f"{rec['brca_val']['images']} BRCA-M2C val images (other patients). Mean +- std over seeds "
        f"{', '.join(map(str, rec['seeds']))} (each seed draws other images); one function "
        "(`napari_uam.training.finetune.finetune`) for every row, as in the dock and `napari-uam train`.",
        "",
        f"| model | accuracy % | F1 tumor % | AUC % | train time ({rec['device']}, 1 thread) |",
        "|---|---|---|---|---|",
    ]
    for key, label in CONDITIONS:
        vals = [r[key] for r in runs]
        secs = "-" if key == "base" else f"{np.mean([v['seconds'] for v in vals]):.1f} s"
        lines.append(f"| {label} | {_ms([v['accuracy'] for v in vals])} | {_ms([v['f1'] for v in vals])} | "
                     f"{_ms([v['auc'] for v in vals])} | {secs} |")  # fmt: skip
    gain = np.array([r["finetuned"]["accuracy"] - r["base"]["accuracy"] for r in runs]) * 100
    lines += [
        "",
        f"Fine-tuning changes BRCA-M2C val accuracy by {gain.mean():+.1f} points ({', '.join(f'{g:+.1f}' for g in gain)} "
        f"per seed). The CoNSeP-only base model took {rec['base']['seconds']:.0f} s to train on {rec['device_name']} "
        f"({rec['device']}); "
        + (
            "the runs above, with that base model saved by an earlier run of this script, "
            if rec["base"].get("reused")
            else "the whole benchmark "
        )
        + f"{rec['total_seconds']:.0f} s"
        + (f" ({rec['note']})" if rec.get("note") else "")
        + (" (quick setting: fewer CoNSeP images)" if rec.get("quick") else "")
        + ".",
    ]
    if gpu:
        gr = gpu["runs"]
        lines += [
            "",
            f"Same runs on {gpu['device_name']} ({gpu['device']}): fine-tuning "
            f"{np.mean([r['finetuned']['seconds'] for r in gr]):.1f} s, from scratch "
            f"{np.mean([r['scratch']['seconds'] for r in gr]):.1f} s per run"
            + ("" if gpu["base"].get("reused") else f", CoNSeP-only base {gpu['base']['seconds']:.1f} s")
            + f", all {len(gr)} seeds {gpu['total_seconds']:.0f} s; fine-tuned accuracy "
            f"{_ms([r['finetuned']['accuracy'] for r in gr])} % (GPU kernels are not bit-identical to the CPU's).",
        ]
    lines += ["", "`python benchmarks/finetune_bench.py` (add `--device cuda` on a GPU)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--tables", default=str(REPO / "runs" / "cell_tables"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--arch", default="uam-l", help="architecture of the shipped default")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--n-images", type=int, default=10)
    p.add_argument("--base-epochs", type=int, default=10)
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--quick", action="store_true", help="6 CoNSeP images, for a smoke run")
    p.add_argument("--workdir", default=str(REPO / "runs" / "finetune"), help="where the base checkpoint goes")
    p.add_argument("--base", default=None, help="reuse this CoNSeP-only checkpoint instead of training it")
    p.add_argument("--base-json", default=None, help="the earlier run's JSON, for the base model's timing")
    p.add_argument("--note", default=None, help="a remark on the run kept in the JSON (e.g. a shared machine)")
    p.add_argument("--json", default=None)
    p.add_argument("--from-json", default=None, help="render an earlier run instead of running")
    p.add_argument("--gpu-json", default=None, help="a GPU run's JSON to add its timings")
    p.add_argument("--md", default=None, help="markdown page whose `finetune` section is replaced")
    a = p.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    if a.from_json:
        rec = json.loads(Path(a.from_json).read_text())
    else:
        rec = run(a)
        if a.note:
            rec["note"] = a.note
        if a.json:
            Path(a.json).parent.mkdir(parents=True, exist_ok=True)
            Path(a.json).write_text(json.dumps(rec, indent=1, default=float))
    gpu = json.loads(Path(a.gpu_json).read_text()) if a.gpu_json else None
    md = render(rec, gpu)
    print(md)
    if a.md:
        from _report import write_section

        write_section("finetune", md, Path(a.md), "# Results")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
