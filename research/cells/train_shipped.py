"""Train the shipped cell classifier on every cell source with the recipe LOSO chose.

    python -m research.cells.train_shipped --tables .gpu_data/cells --group norm_ring_ctx \
        --arch uam --loso runs/cells/nn.json --out src/napari_uam/weights/uam_default.pt

The recipe (feature group, stain augmentation, architecture) is the one picked by the LOSO
tables (:mod:`.loso`); this script only trains it on all sources (each capped at
:data:`~.loso.CAP` nuclei, 10 % of the images validating early stopping), then adds

- the calibration temperature, fitted on the pooled out-of-source predictions of the same
  recipe in the LOSO records (how confident the model should be on a *new* source), and
- the trust-signal statistics (:class:`napari_uam.domain.DomainModel`) of its training images,

and writes the checkpoint with its model card (``<out>.md``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from napari_uam.domain import DomainModel
from napari_uam.radiomics.schema import SCHEMA_V2

from .build import STAIN_COLUMNS
from .loso import CAP, apply_temperature, capped, feature_groups, fit_temperature, load_tables
from .sources import SOURCES


def _stain_dict(row) -> dict:
    v = [float(row[c]) for c in STAIN_COLUMNS]
    return {"hematoxylin": v[0:3], "eosin": v[3:6], "max_conc": v[6:8]}


def model_card(a, res, training, calib, domain, per_source, sha) -> str:
    """The model card (markdown) of the shipped classifier, LOSO table included."""
    from .report import LABEL, summarise

    lines = [
        "# Model card: `uam_default` (cell classifier)", "",
        f"- Architecture: **{LABEL.get(a.arch, a.arch)}** (`{a.arch}`), "
        f"{sum(p.numel() for p in res.model.parameters()):,} parameters",
        "- Task: tumor vs non-tumor per nucleus; output `tumor_probability` is temperature-calibrated "
        f"(T = {calib.get('temperature', 1.0):.3f}, fitted on pooled leave-one-source-out predictions)",
        f"- Input: {res.model.config['n_features']} features of schema "
        f"`uam-radiomics-v2` (group `{a.group}`) at 0.5 um/px: nucleus shape, stain-normalised hematoxylin and "
        "eosin radiomics, cytoplasm ring, neighbourhood context",
        f"- Trust signal: images farther than {domain.threshold:.2f} (99th percentile of the training images) from "
        "the training distribution of stain vectors and feature means are flagged out of domain",
        f"- Recipe: {training['recipe']}; seed {a.seed}; best epoch {res.best_epoch}; {training['seconds']} s on "
        f"{training['device']}",
        f"- SHA-256: `{sha}`", "",
        "## Training data (every cell-labelled source of ../shared/data)", "",
        "| source | organ | licence | images | cells | tumor cells |", "|---|---|---|---|---|---|",
    ]  # fmt: skip
    for ds, d in training["datasets"].items():
        lines.append(f"| {ds} | {d['organ']} | {d['licence']} | {d['images']} | {d['cells']} | {d['tumor_cells']} |")
    lines += ["", "Labels: CoNSeP / MoNuSAC / PUMA nucleus classes matched to the shipped segmenter's nuclei (> 50 % "
              "overlap); BRCA-M2C points matched within 3 um; CAMELYON / BCSS / WSSS4LUAD / GlaS tumor-region masks "
              "by the UAM paper's > 50 % rule.", ""]  # fmt: skip
    if a.loso is not None and a.loso.is_file():
        summ = summarise(json.loads(a.loso.read_text()))
        key = (a.arch, a.group, bool(a.aug))
        if key in summ:
            s = summ[key]
            lines += ["## Leave-one-source-out accuracy of this recipe (train on the others, test on the source)", "",
                      "| source | accuracy | F1 (tumor) | AUC | ECE (raw) | lowest field accuracy |",
                      "|---|---|---|---|---|---|"]  # fmt: skip
            for src, m in s["per_source"].items():
                lines.append(f"| {src} | {100 * m['accuracy']:.1f} | {100 * m['f1']:.1f} | {100 * m['auc']:.1f} | "
                             f"{100 * m['ece']:.1f} | {100 * m['min_field_accuracy']:.0f} |")  # fmt: skip
            lines += [f"| **mean** | {100 * s['mean']['accuracy']:.1f} | {100 * s['mean']['f1']:.1f} | "
                      f"{100 * s['mean']['auc']:.1f} | | |",
                      f"| **worst** | {100 * s['worst']['accuracy']:.1f} ({s['worst']['source']}) | "
                      f"{100 * s['worst']['f1']:.1f} | {100 * s['worst']['auc']:.1f} | | |", ""]  # fmt: skip
    lines += ["Median trust distance of the training images per source: "
              + ", ".join(f"{k} {float(np.nanmedian(v)):.2f}" for k, v in per_source.items()) + ".", "",
              "## Limits", "",
              "- Tumor labels are proxies: CoNSeP / MoNuSAC `epithelial` includes normal epithelium; region-derived "
              "labels call every nucleus inside a tumor region tumor (lymphocytes in it too).",
              "- The full tables (all sources, all architectures) and the honest shortfalls are in docs/results.md.",
              "- Research use only; not a diagnostic device.", ""]  # fmt: skip
    return "\n".join(lines)


def main(argv=None) -> int:
    import torch

    from napari_uam.classify.checkpoint import save_checkpoint
    from napari_uam.classify.normalize import Normalizer
    from research.cells.trainer import TrainConfig, predict_proba, train_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=Path, default=Path(".gpu_data/cells"))
    p.add_argument("--group", required=True)
    p.add_argument("--arch", default="uam", help="registry name, or 'auto': the best NN of --loso by worst source")
    p.add_argument("--aug", type=int, default=1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--loso", type=Path, default=None, help="LOSO records of this recipe (calibration)")
    p.add_argument("--device", default="auto")
    p.add_argument("--budget", type=float, default=240.0)
    p.add_argument("--out", type=Path, required=True)
    a = p.parse_args(argv)
    torch.set_num_threads(4)
    if a.arch == "auto":
        from .report import choose, summarise

        summ = {k: v for k, v in summarise(json.loads(a.loso.read_text())).items()
                if k[0] != "gbt" and k[1] == a.group and k[2] == bool(a.aug)}  # fmt: skip
        n_src = max(len(v["sources"]) for v in summ.values())
        a.arch = choose(summ, n_src)[0]
        print("chosen by LOSO worst source:", a.arch)

    table = load_tables(a.tables)
    feats = feature_groups(table.columns)[a.group]
    data = capped(table, a.seed)
    if not a.aug:
        data = data[data["aug"] == 0]
    keys = data["image"].astype(str) + "@" + data["dataset"]
    uniq = np.unique(keys)
    val_imgs = np.random.default_rng(a.seed).permutation(uniq)[: max(1, len(uniq) // 10)]
    is_val = keys.isin(val_imgs).to_numpy()
    train, val = data[~is_val], data[is_val & (data["aug"] == 0).to_numpy()]
    norm = Normalizer.fit(train[feats].to_numpy(np.float64))
    xt, xv = norm.transform(train[feats].to_numpy(np.float64)), norm.transform(val[feats].to_numpy(np.float64))
    cfg = TrainConfig(arch=a.arch, lr=1e-3, batch_size=256, max_epochs=40, patience=5, seed=a.seed,
                      device=a.device, max_seconds=a.budget)  # fmt: skip
    res = train_model(xt, train["target"].to_numpy(), xv, val["target"].to_numpy(), 2, cfg)
    print(f"trained {a.arch} on {len(train)} rows, best epoch {res.best_epoch}, val {res.val_metrics['auc']:.3f} AUC")

    # Calibration from how the recipe did on sources it had not seen.
    temperature, calib = 1.0, {}
    if a.loso is not None and a.loso.is_file():
        recs = [r for r in json.loads(a.loso.read_text())
                if r["model"] == a.arch and r["group"] == a.group and bool(r["aug"]) == bool(a.aug)
                and not r["held"].startswith("within:")]  # fmt: skip
        if recs:
            pp = np.concatenate([np.asarray(r["p"], np.float64) for r in recs])
            yy = np.concatenate([np.asarray(r["y"], np.float64) for r in recs])
            temperature = fit_temperature(pp, yy)
            calib = {"temperature": temperature, "fitted_on": "pooled leave-one-source-out predictions",
                     "n_cells": int(len(yy))}  # fmt: skip
    print(f"temperature {temperature:.3f}")

    # Trust signal: per training image, its stain estimate and normalised features.
    orig = table[table["aug"] == 0]
    stains, xs = [], []
    for _, d in orig.groupby(["dataset", "image"]):
        stains.append(_stain_dict(d.iloc[0]))
        xs.append(norm.transform(d[feats].to_numpy(np.float64)))
    domain = DomainModel.fit(stains, xs)
    per_source = {}
    for (ds, _), x, st in zip(orig.groupby(["dataset", "image"]).groups.keys(), xs, stains):
        per_source.setdefault(ds, []).append(domain.score(st, x).distance)
    print(
        "domain threshold",
        round(domain.threshold, 2),
        {k: round(float(np.nanmedian(v)), 2) for k, v in per_source.items()},
    )

    summary = {}
    for ds, d in train.groupby("dataset"):
        d0 = d[d["aug"] == 0]
        summary[str(ds)] = {"cells": int(len(d0)), "rows_with_augmented_copies": int(len(d)),
                            "images": int(d0["image"].nunique()), "tumor_cells": int(d0["target"].sum()),
                            "organ": SOURCES[ds].organ, "licence": SOURCES[ds].licence}  # fmt: skip
    training = {
        "recipe": f"research/cells (LOSO-chosen): group {a.group}, stain augmentation {bool(a.aug)}, cap {CAP} per source",
        "datasets": summary, "epochs": len(res.history), "best_epoch": res.best_epoch, "seed": a.seed,
        "config": res.config, "seconds": round(res.seconds, 1), "device": str(cfg.device),
    }  # fmt: skip
    metrics = {"val": {k: v for k, v in res.val_metrics.items() if k != "per_class"}, "calibration": calib}
    sha = save_checkpoint(
        a.out, res.model, feature_names=feats, schema_id=SCHEMA_V2.schema_id, mpp=SCHEMA_V2.mpp,
        class_names=["non-tumor", "tumor"], tumor_class=1, normalizer=norm, training=training, metrics=metrics,
        model_id="uam_default", calibration={"temperature": temperature}, domain=domain.to_dict(),
    )  # fmt: skip
    print("wrote", a.out, sha[:16])
    card_path = a.out.with_suffix(".md")
    card_path.write_text(model_card(a, res, training, calib, domain, per_source, sha))
    print("wrote", card_path)
    # Sanity: the written model reproduces the trained one.
    from napari_uam.classify.checkpoint import load_classifier

    clf = load_classifier(a.out, device="cpu")
    pv = clf.predict_proba(val[feats].set_axis(feats, axis=1))[:, 1]
    p0 = apply_temperature(predict_proba(res.model.cpu(), xv, "cpu")[:, 1], temperature)
    print("reload max |dp|", float(np.max(np.abs(pv - p0))) if len(pv) else 0.0)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
