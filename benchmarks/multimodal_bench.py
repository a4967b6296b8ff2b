"""Tumor-region masks: MAMIM pretraining, image-only vs multimodal ablation, metrics, timing.

One command trains and evaluates everything (GPU or CPU) and writes JSON + shipped weights::

    python benchmarks/multimodal_bench.py --train --data .gpu_carry/regions --out OUT

1. MAMIM self-supervised pretraining of the SSMamba encoder on the training images only.
2. Four fine-tunes with the same budget (steps, batch, crop, seed): image-only and multimodal,
   each from scratch and from the MAMIM encoder.
3. Evaluation on the held-out images (8 whole CAMELYON tiles + the BCSS validation block):
   precision, cIoU, mIoU, cDICE, mDICE at 0.5 (UAM Appendix C, pooled pixels at full
   resolution) and the cell accuracy of the >50 % rule on the predicted mask vs UAM.
4. Inference time of one 1000x1000 patch (0.5 um/px, real BCSS tissue with its cells).

Steps are fitted to ``--budget-s`` from the measured speed of the first steps, identically for
every fine-tune. The best multimodal model is written as ``OUT/tumor_mask.pt``.

``--from-json OUT/multimodal_results.json`` renders the ``multimodal`` section of
docs/results.md, the ``tumor-mask-ablation`` section of docs/performance.md and the model card
src/napari_uam/weights/tumor_mask.md. ``--time-cpu`` adds a CPU timing on this machine.
``--half-weights`` (with ``--from-json``) stores the shipped weights as float16 after evaluating
the float32 and float16 weights on the held-out images on the CPU, and records both in the JSON
(the model card then quotes the stored file's numbers).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT))  # research/
sys.path.insert(0, str(Path(__file__).resolve().parent))

#: (name, cell tokens, MAMIM encoder, cell-labelled sets as an auxiliary loss (--cell-sets))
ARMS = (
    ("image-only", False, False, False),
    ("image-only + MAMIM", False, True, False),
    ("multimodal", True, False, False),
    ("multimodal + MAMIM", True, True, False),
    ("image-only + cell sets", False, False, True),
    ("image-only + MAMIM + cell sets", False, True, True),
    ("multimodal + cell sets", True, False, True),
    ("multimodal + MAMIM + cell sets", True, True, True),
)
DEFAULT_ARMS = [a[0] for a in ARMS[:4]]
METRICS = ("precision", "cIoU", "mIoU", "cDICE", "mDICE")


def _log(msg):
    print(time.strftime("%H:%M:%S"), msg, flush=True)


def _device():
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _timing_patch(images):
    """A real 1000x1000 patch at 0.5 um/px with its cells: the BCSS validation block's first
    2000x2000 pixels (0.25 um/px) downsampled 2x; cell centroids halved."""
    import torch
    import torch.nn.functional as F

    bcss = [i for i in images if i.dataset == "bcss" and i.split == "val"][0]
    img = bcss.image[:2000, :2000]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1)[None].float()
    rgb = F.interpolate(x, size=(1000, 1000), mode="area")[0].permute(1, 2, 0).round().byte().numpy()
    cells = bcss.cells[(bcss.cells.y < 2000) & (bcss.cells.x < 2000)]
    cols = [c for c in cells.columns if c.startswith("uam_")]
    return rgb, cells[cols].to_numpy(np.float32), cells[["y", "x"]].to_numpy(np.float32) / 2


def time_inference(model, images, device, work_mpp, repeats=5) -> dict:
    """Median seconds of one 1000x1000 tumor mask (cell vectors given), image-only and not."""
    import torch

    from napari_uam.tumor import predict_probability

    rgb, vec, yx = _timing_patch(images)
    model.eval().to(device)
    ts = []
    for r in range(repeats + 1):
        if device == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        predict_probability(model, rgb, 0.5, work_mpp, vec if model.use_cells else None, yx, device)
        if device == "cuda":
            torch.cuda.synchronize()
        if r:  # first call warms up kernels / allocator
            ts.append(time.perf_counter() - t0)
    return {"median_s": float(np.median(ts)), "n_cells": int(len(vec)), "repeats": repeats}


def train(args) -> dict:
    import torch

    from napari_uam.models.multimodal import TumorRegionNet
    from napari_uam.models.ssm import set_ssm_backend
    from napari_uam.models.ssmamba import SSMambaEncoder
    from research.regions import train_multimodal as tm
    from napari_uam.classify.checkpoint import file_sha256, read_checkpoint
    from research.regions.prepared import load_prepared
    from napari_uam.tumor import WORK_MPP, save_tumor_checkpoint

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = args.device or _device()
    t_start = time.perf_counter()
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    meta = json.loads((Path(args.data) / "meta.json").read_text())
    uam_path = ROOT / "src" / "napari_uam" / "weights" / "uam_default.pt"
    if file_sha256(uam_path) != meta["uam"]["sha256"]:
        raise SystemExit(f"{uam_path} is not the UAM checkpoint the cell vectors were packed with; re-pack the data.")
    uam_ckpt = read_checkpoint(uam_path)
    images = load_prepared(args.data)
    train_set = [i for i in images if i.split == "train"]
    val_set = [i for i in images if i.split == "val"]
    _log(f"{len(train_set)} training / {len(val_set)} validation images on {device}")
    work = tm.build_work_set(train_set, WORK_MPP)
    aux, aux_meta = None, None
    if args.cell_sets:  # CoNSeP / BRCA-M2C training images: weak disc targets + cell labels
        from research.regions.cell_sets import load_cell_sets

        aux_meta = json.loads((Path(args.cell_sets) / "meta.json").read_text())
        if aux_meta["uam"]["sha256"] != meta["uam"]["sha256"]:
            raise SystemExit("the cell sets were packed with another UAM checkpoint than the region sets; re-pack.")
        aux = tm.build_aux_set(load_cell_sets(args.cell_sets), WORK_MPP, cells=args.aux_cells == "uam")
        _log(
            f"{len(aux_meta['images'])} cell-labelled training images (auxiliary loss, weight {args.aux_weight}, "
            f"cell vectors: {args.aux_cells})"
        )
    else:
        args.arms = [a for a in args.arms if not dict((x[0], x[3]) for x in ARMS)[a]]
    scan = None if device == "cuda" else "parallel"  # CPU training: the log-depth scan is faster

    def new_model(use_cells):
        m = TumorRegionNet(use_cells=use_cells)
        return set_ssm_backend(m, "auto", scan)

    kw = {"batch": args.batch, "crop": args.crop, "device": device, "log": _log}
    # Fit the step counts to the budget from the speed of a few probe steps.
    if args.steps:
        pre_steps, ft_steps = args.pretrain_steps or args.steps, args.steps
        probe = {}
    else:
        probe_n = 6
        m = new_model(True)
        tm.pretrain_mamim(m.encoder, work, probe_n, seed=99, **{**kw, "log": None})
        t0 = time.perf_counter()
        r1 = tm.pretrain_mamim(m.encoder, work, probe_n, seed=98, **{**kw, "log": None})
        t_pre = r1["seconds"] / probe_n
        tm.finetune(m, work, probe_n, seed=99, aux=aux, aux_weight=args.aux_weight, **{**kw, "log": None})
        r2 = tm.finetune(m, work, probe_n, seed=98, aux=aux, aux_weight=args.aux_weight, **{**kw, "log": None})
        t_ft = r2["seconds"] / probe_n
        spent = time.perf_counter() - t_start
        left = args.budget_s - spent - args.reserve_s
        # Pretraining gets as many steps as one fine-tune x pretrain_ratio.
        n_arms = sum(a[0] in args.arms for a in ARMS)
        with_pre = any(a[2] and a[0] in args.arms for a in ARMS)
        ft_steps = max(int(left / (n_arms * t_ft + with_pre * args.pretrain_ratio * t_pre)), 10)
        pre_steps = int(ft_steps * args.pretrain_ratio)
        probe = {"s_per_pretrain_step": t_pre, "s_per_finetune_step": t_ft, "setup_s": spent}
        _log(
            f"probe: {t_pre * 1000:.0f} ms/pretrain step, {t_ft * 1000:.0f} ms/finetune step -> "
            f"{pre_steps} pretrain + {n_arms} x {ft_steps} finetune steps"
        )
        del m, t0
    arms = [a for a in ARMS if a[0] in args.arms]
    pre, pre_state = None, None
    if any(a[2] for a in arms):
        # 1. MAMIM
        enc = SSMambaEncoder()
        set_ssm_backend(enc, "auto", scan)
        _log(f"MAMIM pretraining: {pre_steps} steps")
        pre = tm.pretrain_mamim(enc, work, pre_steps, seed=args.seed, lr=args.lr, **kw)
        pre_state = {k: v.detach().clone() for k, v in enc.state_dict().items()}
    # 2.-3. fine-tunes + evaluation
    results, models = {}, {}
    for name, use_cells, pretrained, with_aux in arms:
        m = new_model(use_cells)
        if pretrained:
            m.encoder.load_state_dict(pre_state)
        _log(f"fine-tune {name}: {ft_steps} steps")
        fit = tm.finetune(
            m,
            work,
            ft_steps,
            seed=args.seed,
            lr=args.lr,
            aux=aux if with_aux else None,
            aux_weight=args.aux_weight,
            **kw,
        )
        ev = tm.evaluate(m, val_set, WORK_MPP, device)
        results[name] = {"fit": fit, "val": ev}
        models[name] = m
        _log(
            f"  {name}: "
            + ", ".join(f"{k} {ev[k]:.1f}" for k in METRICS)
            + f", cells (>50% rule) {ev['cells_rule_accuracy']:.1f}"
        )
    best = max((n for n in results if n.startswith("multimodal")), key=lambda n: results[n]["val"]["mIoU"])
    # 4. timing (this device, and this machine's CPU with the pure-PyTorch scan)
    timing = {}
    for name in [n for n in ("image-only", best) if n in models]:
        timing[name] = {device: time_inference(models[name], images, device, WORK_MPP)}
        if device == "cuda":
            cpu_model = set_ssm_backend(copy.deepcopy(models[name]).cpu(), "torch", "auto")
            key = f"cpu ({torch.get_num_threads()} threads, {os.cpu_count()} cores of the GPU machine)"
            timing[name][key] = time_inference(cpu_model, images, "cpu", WORK_MPP, repeats=3)
    ship = models[best].cpu()
    set_ssm_backend(ship, "auto", "auto")
    summary = {
        "device": device,
        "gpu": torch.cuda.get_device_name(0) if device == "cuda" else None,
        "torch": torch.__version__,
        "seed": args.seed,
        "budget_s": args.budget_s,
        "settings": {
            "pretrain_steps": pre_steps,
            "finetune_steps": ft_steps,
            "batch": args.batch,
            "crop_px": args.crop,
            "work_mpp": WORK_MPP,
            "lr": args.lr,
            "scales": list(tm.SCALES),
            "mask_ratio": 0.75,
            "cell_loss_weight": 0.5,
            "cell_sets": None
            if aux_meta is None
            else {
                "aux_weight": args.aux_weight,
                "images": len(aux_meta["images"]),
                "cell_vectors": args.aux_cells,
                "cells": int(sum(m["n_cells"] for m in aux_meta["images"].values())),
                "tumor_cells": int(sum(m["n_tumor"] for m in aux_meta["images"].values())),
                "datasets": sorted(aux_meta["sources"]),
                "weak_radius_um": aux_meta["weak_radius_um"],
                "arms_with": [a[0] for a in arms if a[3]],
            },
        },
        "probe": probe,
        "data": {
            "train": [i.key for i in train_set],
            "val": [i.key for i in val_set],
            "camelyon_mpp_estimate": meta["camelyon_mpp_estimate"],
            "camelyon_mpp_evidence": meta.get("camelyon_mpp_evidence"),
            "train_cells": int(sum(len(i.cells) for i in train_set)),
            "val_cells": int(sum(len(i.cells) for i in val_set)),
            "uam": meta["uam"],
        },
        "mamim": pre,
        "results": results,
        "shipped": best,
        "timing": timing,
        "n_parameters": {n: int(sum(p.numel() for p in m.parameters())) for n, m in models.items()},
        "total_s": time.perf_counter() - t_start,
    }
    sha = save_tumor_checkpoint(
        out / "tumor_mask.pt",
        ship,
        work_mpp=WORK_MPP,
        cell_encoder=uam_ckpt,
        training={k: summary[k] for k in ("settings", "data", "seed", "device", "gpu")} | {"arm": best, "mamim": pre},
        metrics={
            k: results[best]["val"][k]
            for k in METRICS + ("recall", "cells_rule_accuracy", "cells_uam_accuracy", "cells_head_accuracy")
        },
        model_id="tumor_mask",
    )
    summary["shipped_sha256"] = sha
    summary["total_s"] = time.perf_counter() - t_start
    (out / "multimodal_results.json").write_text(json.dumps(summary, indent=1))
    _log(f"wrote {out / 'tumor_mask.pt'} ({best}) and multimodal_results.json in {summary['total_s']:.0f} s")
    return summary


def _fmt(v):
    return "n/a" if v is None or (isinstance(v, float) and not np.isfinite(v)) else f"{v:.1f}"


def render(summary: dict, results_md: Path, perf_md: Path, card: Path | None) -> None:
    from _report import write_section

    s = summary["settings"]
    dev = summary["gpu"] or summary["device"]
    res = summary["results"]
    lines = [
        "## Multimodal tumor mask (SSMamba image encoder + UAM cell tokens)",
        "",
        "Produced by `python benchmarks/multimodal_bench.py --train --data .gpu_carry/regions "
        + ("--cell-sets .gpu_carry/cell_sets " if s.get("cell_sets") else "")
        + "--out OUT` "
        f"on {dev} ({summary['total_s']:.0f} s in all), rendered with `--from-json`. Held-out whole images: "
        f"{len(summary['data']['val'])} ({', '.join(summary['data']['val'])}); training: "
        f"{len(summary['data']['train'])} images, {summary['data']['train_cells']} cells. "
        f"Every fine-tune: {s['finetune_steps']} steps, batch {s['batch']}, {s['crop_px']}x{s['crop_px']} crops at "
        f"{s['work_mpp']} um/px, seed {summary['seed']}"
        + (f"; MAMIM: {s['pretrain_steps']} steps, 75 % masking, training images only." if summary["mamim"] else "."),
        "",
        "Pixel metrics at threshold 0.5 (UAM Appendix C), pooled over all held-out pixels at full resolution, %:",
        "",
        "| model | " + " | ".join(METRICS) + " | recall |",
        "|---|" + "---|" * (len(METRICS) + 1),
    ]
    present = [a[0] for a in ARMS if a[0] in res]
    for name in present:
        v = res[name]["val"]
        lines.append(f"| {name} | " + " | ".join(_fmt(v[k]) for k in METRICS) + f" | {_fmt(v['recall'])} |")
    lines += [
        "",
        f"Cell accuracy on the {res['multimodal']['val']['n_cells']} held-out cells (truth: >50 % of the "
        "nucleus inside the ground-truth region), %:",
        "",
        "| cell classifier | accuracy |",
        "|---|---|",
        f"| UAM (`uam_default`, radiomics only) | {_fmt(res[present[0]]['val']['cells_uam_accuracy'])} |",
    ]
    for name in present:
        lines.append(f"| >50 % rule on the {name} mask | {_fmt(res[name]['val']['cells_rule_accuracy'])} |")
    for name in [n for n in present if n.startswith("multimodal")]:
        lines.append(f"| {name} cell head | {_fmt(res[name]['val'].get('cells_head_accuracy'))} |")
    lines.append("")
    if "image-only" in res and "multimodal" in res:
        io, mm = res["image-only"]["val"], res["multimodal"]["val"]
        ahead = [k for k in METRICS if mm[k] > io[k]]
        lines.append(
            f"Multimodal ahead of image-only (both from scratch) on {len(ahead)} of {len(METRICS)} metrics"
            + (f" ({', '.join(ahead)})." if ahead else ".")
        )
    if "image-only + MAMIM" in res and "multimodal + MAMIM" in res:
        iop, mmp = res["image-only + MAMIM"]["val"], res["multimodal + MAMIM"]["val"]
        lines.append(f"With MAMIM: on {sum(mmp[k] > iop[k] for k in METRICS)} of {len(METRICS)}.")
    m = summary["mamim"]
    if m and all(a[0] in res for a in ARMS[:4]):
        lines.append(
            f"MAMIM (reconstruction loss {m['first_loss']:.3f} -> {m['last_loss']:.3f}) changes the mIoU by "
            f"{iop['mIoU'] - io['mIoU']:+.1f} (image-only) and {mmp['mIoU'] - mm['mIoU']:+.1f} (multimodal) points at the "
            "same fine-tuning budget."
        )
    lines += [
        f"One seed and {len(summary['data']['val'])} held-out images: differences of a few points are "
        "within run-to-run noise. Shipped: "
        f"**{summary['shipped']}** (`src/napari_uam/weights/tumor_mask.pt`, chosen by held-out mIoU, so its numbers are "
        "optimistic by that selection)."
        + (
            " It is stored as float16; re-measured on the CPU from the stored file, the held-out "
            + ", ".join(f"{k} {_fmt(summary['stored_fp16']['fp16'][k])}" for k in METRICS)
            + " (float32 weights: "
            + ", ".join(_fmt(summary["stored_fp16"]["fp32"][k]) for k in METRICS)
            + "; `multimodal_bench.py --half-weights`)."
            if summary.get("stored_fp16")
            else ""
        ),
        "",
        f"Data: CAMELYON16 tiles at an *estimated* {summary['data']['camelyon_mpp_estimate']} um/px (nucleus-size "
        "estimate, see `research.regions.prepared`; trained with x0.8-x1.25 scale jitter), BCSS ROI at 0.25 um/px cut "
        "into a training part (top 70 % of rows) and a spatially disjoint validation block (bottom 25 %). Cell vectors: "
        "the frozen shipped UAM (`uam_default`) embedding + tumor probability of every nucleus segmented by the "
        "watershed backend; the checkpoint stores its own copy of that UAM.",
    ]
    ev = summary["data"].get("camelyon_mpp_evidence")
    if ev:
        est = ", ".join(f"{float(v):.2f} (segmenter told {float(g):g})" for g, v in ev["estimates"].items())
        lines += [
            "",
            f"CAMELYON pixel size: the median CoNSeP ground-truth lymphocyte nucleus is {ev['reference_um2']:.1f} um^2 "
            f"(0.25 um/px known); against the median nucleus segmented in the lymphocyte-rich CAMELYON tiles this gives "
            f"{est} um/px, and lymphocyte diameters of 5-6 px for ~5-7 um nuclei give ~1 um/px. We use "
            f"{summary['data']['camelyon_mpp_estimate']} um/px (uncertain by about +-30 %; the ground-truth mask "
            "cell labels do not depend on it, the UAM features do).",
        ]
    write_section("multimodal", "\n".join(lines), results_md, "# Results")
    t = summary["timing"]
    plines = [
        "## Tumor mask inference of the ablation models (1000x1000 patch at 0.5 um/px)",
        "",
        "The models of this benchmark's run (not the shipped weights: those are timed by "
        "`benchmarks/tumor_mask_bench.py`, section above). One real 1000x1000 H&E patch (BCSS tissue, with its measured cells; UAM cell vectors given), model "
        f"at {s['work_mpp']} um/px, probabilities upsampled to full resolution. Median of 5 (GPU) or 3 (CPU) runs after a warm-up; the CPU rows use "
        "the exact pure-PyTorch scan.",
        "",
        "| model | device | seconds | cells |",
        "|---|---|---|---|",
    ]
    for name, by_dev in t.items():
        for d, v in by_dev.items():
            where = {"cuda": f"GPU ({summary['gpu']}, mamba_ssm scan)"}.get(d, d)
            plines.append(f"| {name} | {where} | {v['median_s']:.3f} | {v['n_cells']} |")
    write_section("tumor-mask-ablation", "\n".join(plines), perf_md, "# Performance")
    if card is not None:
        best = summary["shipped"]
        v = res[best]["val"]
        fp16 = summary.get("stored_fp16")
        stored = []
        if fp16:  # the file holds float16 weights: quote what they measure
            v = fp16["fp16"]
            stored = [
                "- Stored as float16 (loaded into the float32 model). The held-out metrics below are the stored "
                "file's, re-measured on the CPU (`multimodal_bench.py --half-weights`); the float32 weights "
                "it came from gave " + " / ".join(_fmt(fp16["fp32"][k]) for k in METRICS) + "."
            ]
        card.write_text(
            "\n".join(
                [
                    "# Model card: `tumor_mask`",
                    "",
                    f"- Architecture: TumorRegionNet ({best}): SSMamba encoder (LPR + DMS, 4 stages) fused with UAM cell tokens "
                    f"(MLP projection, placed at cell positions, concatenated at strides 8/16/32), FPN mask decoder, cell head; "
                    f"{summary['n_parameters'][best]:,} parameters.",
                    f"- Works at {s['work_mpp']} um/px; output: per-pixel tumor probability at the input resolution.",
                    "- Needs the measured cell table (radiomics schema of the stored UAM copy `uam_default`, frozen).",
                    f"- Trained on {dev}, {summary['total_s']:.0f} s in all; SHA-256 `{summary.get('shipped_sha256', '')}`.",
                    *stored,
                    "",
                    "## Held-out metrics (threshold 0.5, %)",
                    "",
                    "| " + " | ".join(METRICS) + " |",
                    "|" + "---|" * len(METRICS),
                    "| " + " | ".join(_fmt(v[k]) for k in METRICS) + " |",
                    "",
                    "See docs/results.md (multimodal section) for the ablation.",
                    "",
                    "## Data and licences",
                    "",
                    "- CAMELYON16 tiles (lymph-node metastases of breast cancer), Camelyon16 challenge data, CC0; via a public "
                    "preprocessed copy; pixel size unknown, estimated ~0.75 um/px.",
                    "- BCSS (Amgad et al., Bioinformatics 2019), one breast-cancer ROI at 0.25 um/px, CC0.",
                    "- The UAM cell encoder copy: see `uam_default.md` (CoNSeP, BRCA-M2C).",
                    "",
                    "## Limits",
                    "",
                    "- 24 training images (one organ pair: lymph node, breast); coarse, blocky CAMELYON annotations; the "
                    "CAMELYON pixel size is an estimate. Expect lower quality on other tissues and scanners.",
                    "- The tumor mask is a research tool, not a diagnostic device.",
                    "",
                ]
            )
        )


def cpu_timing(args) -> None:
    """Add CPU timings of the shipped model (and a fresh image-only model of the same size) on this machine."""
    import torch

    from napari_uam.models.multimodal import TumorRegionNet
    from research.regions.prepared import load_prepared
    from napari_uam.tumor import WORK_MPP, load_tumor_model

    path = Path(args.from_json)
    summary = json.loads(path.read_text())
    images = load_prepared(args.data)
    tmodel = load_tumor_model(args.weights, device="cpu").model
    threads = torch.get_num_threads()
    key = f"cpu ({threads} threads, {os.cpu_count()} cores of the docs machine, shared)"
    summary["timing"].setdefault(summary["shipped"], {})[key] = time_inference(tmodel, images, "cpu", WORK_MPP, 3)
    summary["timing"].setdefault("image-only", {})[key] = time_inference(
        TumorRegionNet(use_cells=False), images, "cpu", WORK_MPP, 3
    )
    path.write_text(json.dumps(summary, indent=1))


def half_weights(args) -> None:
    """Store the shipped (or ``--weights``) tumor-mask checkpoint as float16, its held-out
    metrics re-measured on the CPU from the float16 weights next to the float32 ones."""
    import torch

    from research.regions import train_multimodal as tm
    from napari_uam.classify.checkpoint import file_sha256
    from research.regions.prepared import load_prepared
    from napari_uam.tumor import (
        TumorMaskModel,
        default_tumor_weights_path,
        read_tumor_checkpoint,
        save_tumor_checkpoint,
    )

    path = Path(args.weights) if args.weights else default_tumor_weights_path()
    ckpt = read_tumor_checkpoint(path)
    if ckpt.get("stored_dtype") == "float16":
        raise SystemExit(f"{path} is stored as float16 already.")
    val = [i for i in load_prepared(args.data) if i.split == "val"]
    half = {k: v.to(torch.float16) if v.is_floating_point() else v for k, v in ckpt["state_dict"].items()}
    out = {"device": "cpu", "fp32_sha256": file_sha256(path), "n_images": len(val)}
    for name, sd in (("fp32", ckpt["state_dict"]), ("fp16", half)):
        model = TumorMaskModel({**ckpt, "state_dict": sd}, device="cpu").model
        r = tm.evaluate(model, val, ckpt["work_mpp"], "cpu")
        out[name] = {k: r[k] for k in (*METRICS, "recall", "cells_rule_accuracy", "cells_head_accuracy") if k in r}
        _log(f"{name}: " + " ".join(f"{k}={out[name][k]:.3f}" for k in METRICS))
    training = {
        **ckpt["training"],
        "stored_as_float16": {"from_sha256": out["fp32_sha256"], "held_out_fp32": out["fp32"]},
    }
    save_tumor_checkpoint(
        path,
        model,
        work_mpp=ckpt["work_mpp"],
        cell_encoder=ckpt["cell_encoder"],
        training=training,
        metrics={**ckpt["metrics"], **out["fp16"]},
        model_id=ckpt.get("model_id"),
        half=True,
    )
    out["fp16_sha256"] = file_sha256(path)
    _log(f"wrote {path} ({path.stat().st_size / 1024:.0f} KiB)")
    summary = json.loads(Path(args.from_json).read_text())
    summary["stored_fp16"] = out
    summary["shipped_sha256"] = out["fp16_sha256"]
    Path(args.from_json).write_text(json.dumps(summary, indent=1))


def _cell_sets_table(res: dict) -> list[str]:
    lines = ["| model | " + " | ".join(METRICS) + " | cells, >50 % rule |", "|---|" + "---|" * (len(METRICS) + 1)]
    for name, r in res.items():
        v = r["val"]
        lines.append(
            f"| {name} | " + " | ".join(_fmt(v[k]) for k in METRICS) + f" | {_fmt(v['cells_rule_accuracy'])} |"
        )
    return lines


def render_cell_sets(runs: list[tuple[str, dict]], results_md: Path) -> None:
    """The ``multimodal-cell-sets`` section of docs/results.md from the JSON of one or more
    ``--cell-sets`` runs (``(path, summary)``, the current variant first)."""
    from _report import write_section

    lines = ["## Tumor mask with the cell-labelled sets as an auxiliary loss", ""]
    for k, (path, summary) in enumerate(runs):
        s, res = summary["settings"], summary["results"]
        cs = s["cell_sets"]
        vectors = cs.get("cell_vectors", "uam")
        with_sets = cs.get("arms_with") or [n for n in res if n not in cs.get("arms_without", [])]
        cmd = (
            "`python benchmarks/multimodal_bench.py --train --data .gpu_carry/regions --cell-sets .gpu_carry/cell_sets "
            + (f"--aux-cells {vectors} " if "cell_vectors" in cs else "")
            + f"--budget-s {summary['budget_s']:g} --reserve-s 70 ...`"
        )
        what = (
            "weak region targets only: BCE + Dice on discs of "
            f"{cs['weak_radius_um']:g} um around the labelled cells (target: the cell's class; pixels claimed by both "
            "classes left out), no cell tokens from these images"
            if vectors == "none"
            else f"weak region targets (discs of {cs['weak_radius_um']:g} um around the labelled cells) plus the cells' UAM "
            "vectors as cell tokens and their classes for the multimodal cell head"
        )
        lines += [
            ("Current variant. " if k == 0 else "Earlier variant, with the cells' UAM vectors. ")
            + f"{cmd} on {summary['gpu'] or summary['device']} (JSON: `{path}`; the sets packed by "
            f"`python -m research.regions.cell_sets`): {cs['images']} cell-labelled training images "
            f"({', '.join(cs['datasets'])} training splits, {cs['cells']:,} cells, {cs['tumor_cells']:,} tumor). "
            f"The arms {', '.join(with_sets)} add, at every step, {cs['aux_weight']} x the loss of a half-size batch from "
            f"them: {what}. Same budget for every arm: {s['finetune_steps']} fine-tuning steps, batch {s['batch']}, "
            f"seed {summary['seed']}. Held-out: the same {len(summary['data']['val'])} region images, %:",
            "",
            *_cell_sets_table(res),
            "",
        ]
        pairs = [(n, n.replace(" + cell sets", "")) for n in res if n.endswith(" + cell sets")]
        pairs = [(w, wo) for w, wo in pairs if wo in res]
        if pairs:
            gains = []
            for w, wo in pairs:
                d = {m: res[w]["val"][m] - res[wo]["val"][m] for m in METRICS}
                gains.append(d["mIoU"])
                lines.append(f"- {w} vs {wo}: " + ", ".join(f"{m} {v:+.1f}" for m, v in d.items()) + " points.")
            lines.append("")
            if max(gains) <= 1.0:
                lines += [
                    "**The cell sets do not help** (no mIoU gain above noise; the multimodal model loses the most), "
                    "so the shipped tumor-mask model is trained without them. Weak disc targets only say that the "
                    "tissue right at a labelled nucleus is (not) tumor, and the CoNSeP / BRCA-M2C images (colon and "
                    "breast primaries, 40x / 20x) differ from the lymph-node and BCSS region images; at this budget "
                    "that signal pulls the decoder away from region boundaries.",
                    "",
                ]
        if vectors == "uam":
            lines += [
                "With the UAM vectors the multimodal models collapse towards calling everything tumor (compare the "
                "region-only arm of the same run). The likely reason: the shipped UAM was trained on these very CoNSeP / "
                "BRCA-M2C cells, so their vectors are almost perfectly separable and the fusion learns to trust the UAM "
                "probability; on the region images UAM is right for only "
                f"{_fmt(res[next(iter(res))]['val']['cells_uam_accuracy'])} % of the cells. Hence the current variant "
                "feeds no cell tokens from these images.",
                "",
            ]
    lines.append(
        "One seed per run and 9 held-out images: differences of a couple of points are within run-to-run noise. "
        "The shipped tumor-mask model is the region-only multimodal + MAMIM model of the main run above unless "
        "this section says otherwise."
    )
    write_section("multimodal-cell-sets", "\n".join(lines), results_md, "# Results")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--train", action="store_true")
    p.add_argument("--data", default=".gpu_carry/regions")
    p.add_argument("--out", default="multimodal_out")
    p.add_argument("--device", default=None)
    p.add_argument("--budget-s", type=float, default=360.0, help="total seconds for --train (steps fitted to it)")
    p.add_argument("--reserve-s", type=float, default=60.0, help="seconds kept for evaluation, timing and saving")
    p.add_argument("--pretrain-ratio", type=float, default=1.5, help="MAMIM steps per fine-tune step")
    p.add_argument("--steps", type=int, default=None, help="fixed fine-tune steps (skips the budget fit)")
    p.add_argument("--pretrain-steps", type=int, default=None)
    p.add_argument(
        "--cell-sets",
        default=None,
        help="packed cell-labelled sets (research.regions.cell_sets) "
        "for the auxiliary loss; adds the arm without them for comparison",
    )
    p.add_argument("--aux-weight", type=float, default=0.5)
    p.add_argument(
        "--aux-cells",
        choices=("none", "uam"),
        default="none",
        help="cell tokens of the cell sets: none (weak disc targets only) or their UAM vectors",
    )
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--crop", type=int, default=128)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--arms",
        type=lambda s: [a.strip() for a in s.split(",")],
        default=DEFAULT_ARMS,
        help="comma-separated subset of: " + ", ".join(a[0] for a in ARMS),
    )
    p.add_argument("--from-json", default=None)
    p.add_argument("--weights", default=None, help="tumor-mask checkpoint for --time-cpu (default: shipped)")
    p.add_argument("--time-cpu", action="store_true")
    p.add_argument(
        "--half-weights", action="store_true", help="store the shipped weights as float16 (with --from-json)"
    )
    p.add_argument(
        "--cell-sets-report",
        nargs="+",
        default=None,
        help="JSON of --cell-sets runs (current variant first): render their section of docs/results.md",
    )
    p.add_argument("--results-md", default=str(ROOT / "docs" / "results.md"))
    p.add_argument("--perf-md", default=str(ROOT / "docs" / "performance.md"))
    p.add_argument("--card", default=str(ROOT / "src" / "napari_uam" / "weights" / "tumor_mask.md"))
    a = p.parse_args(argv)
    if a.train:
        summary = train(a)
        for name, r in summary["results"].items():
            print(
                f"{name:22s} "
                + " ".join(f"{k}={r['val'][k]:.1f}" for k in METRICS)
                + f" cells_rule={r['val']['cells_rule_accuracy']:.1f} uam={r['val']['cells_uam_accuracy']:.1f}"
            )
    if a.from_json:
        if a.half_weights:
            half_weights(a)
        if a.time_cpu:
            cpu_timing(a)
        render(
            json.loads(Path(a.from_json).read_text()),
            Path(a.results_md),
            Path(a.perf_md),
            Path(a.card) if a.card else None,
        )
        print(f"rendered {a.from_json} into {a.results_md}, {a.perf_md} and {a.card}")
    if a.cell_sets_report:
        render_cell_sets([(f, json.loads(Path(f).read_text())) for f in a.cell_sets_report], Path(a.results_md))
        print(f"rendered {', '.join(a.cell_sets_report)} into {a.results_md}")
    if not (a.train or a.from_json or a.cell_sets_report):
        p.error("give --train, --from-json and/or --cell-sets-report")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
