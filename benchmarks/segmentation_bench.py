"""Nuclei segmentation quality and speed of every available backend, written to docs/segmentation.md.

CPU mode (default), for each backend of :func:`napari_uam.segment.available_backends`:

* CoNSeP held-out images 21-27 (colorectal, 40x): AJI, PQ (DQ, SQ), pixel Dice and detection
  F1 at IoU 0.5, mean over images; once at the native 0.25 um/px and once after resampling
  the image to 0.5 um/px (the pipeline's working pixel size; labels resized back to compare
  with the full-resolution ground truth). Neither the network nor any threshold saw them.
* BRCA-M2C val (breast, 20x, 0.5 um/px): precision / recall / F1 of nucleus centroids against
  the annotated cell points, one to one within 3 um, pooled over the images.
* Seconds of :func:`~napari_uam.segment.segment` per 1000x1000 patch at 0.25 and 0.5 um/px on
  the CPU with 2 torch threads (best of repeats), and for the learned backend the network
  alone in three numeric set-ups (as trained, shipped, bf16).

GPU mode (``--device cuda --json OUT``): only times the learned backend's inference on the
GPU, using nothing but the CoNSeP images under ``--data``, and writes a JSON file that
``--merge-json`` later inserts into the doc's GPU section.

Usage::

    # CPU quality + speed (about 5 minutes on 2 cores), rewrites docs/segmentation.md
    python benchmarks/segmentation_bench.py --data ../shared/data
    # GPU timing (on the GPU machine; needs only consep/train_21..27.jpg)
    PYTHONPATH=src python benchmarks/segmentation_bench.py --device cuda \\
        --data .gpu_data/consep --json "$OUT/seg_gpu.json"
    # insert the GPU row into docs/segmentation.md
    python benchmarks/segmentation_bench.py --merge-json seg_gpu.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))

from napari_uam.scale import rescale_image, resize_labels  # noqa: E402
from napari_uam.segment import available_backends, segment  # noqa: E402
from napari_uam.segment import metrics as M  # noqa: E402

CONSEP_MPP = 0.25
BRCA_MPP = 0.5
MPPS = (0.25, 0.5)
HELD_OUT = range(21, 28)
POINT_RADIUS_UM = 3.0
KEYS = ("aji", "pq", "dq", "sq", "dice", "f1")
CPU_THREADS = 2
GPU_SCHEMA = "uam-seg-gpu-v1"
DOC = REPO / "docs" / "segmentation.md"
#: HoVer-Net on the official CoNSeP test split (Graham et al. 2019, Table 3).
HOVERNET = {"dice": 0.853, "aji": 0.571, "pq": 0.547, "dq": 0.702, "sq": 0.778}


def _rgb(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def consep_dir(data: Path) -> Path:
    """``data`` itself when it holds the CoNSeP images, else ``data/consep``."""
    return data if (data / "train_21.jpg").exists() else data / "consep"


def _patch(root: Path, i: int, mpp: float) -> np.ndarray:
    """CoNSeP image ``i`` as a scanner at ``mpp`` would give it."""
    rgb = _rgb(root / f"train_{i}.jpg")
    return rgb if mpp == CONSEP_MPP else rescale_image(rgb, CONSEP_MPP / mpp)


# --- quality ---------------------------------------------------------------------------------


def consep_scores(root: Path, backend: str, mpp: float) -> dict:
    """Mean held-out scores when segmenting at pixel size ``mpp``, plus per-image rows."""
    rows = []
    for i in HELD_OUT:
        gt = np.asarray(Image.open(root / f"train_{i}_inst.png")).astype(np.int32)
        lab = resize_labels(segment(_patch(root, i, mpp), mpp, backend=backend), gt.shape)
        rows.append({"image": i, **M.instance_scores(gt, lab)})
    mean = {k: float(np.mean([r[k] for r in rows])) for k in KEYS}
    mean["n_pred/n_true"] = sum(r["n_pred"] for r in rows) / sum(r["n_true"] for r in rows)
    return {"backend": backend, "mpp": mpp, **mean, "per_image": rows}


def brca_scores(root: Path, backend: str) -> dict:
    """Pooled centroid-vs-point detection scores on BRCA-M2C val."""
    tp = fp = fn = 0
    paths = sorted((root / "val").glob("*.jpg"))
    for path in paths:
        pts = np.loadtxt(path.with_name(path.stem + "_points.csv"), delimiter=",", skiprows=1, usecols=(0, 1))
        lab = segment(_rgb(path), BRCA_MPP, backend=backend)
        s = M.point_detection_scores(M.centroids(lab), pts.reshape(-1, 2), POINT_RADIUS_UM / BRCA_MPP)
        tp, fp, fn = tp + s["tp"], fp + s["fp"], fn + s["fn"]
    return {
        "backend": backend,
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "n_images": len(paths),
        "n_points": tp + fn,
    }


# --- speed -----------------------------------------------------------------------------------


def _best_of(fn, repeats: int, sync=lambda: None) -> float:
    """Fastest of ``repeats`` timed calls after one warm-up (the machine may be shared)."""
    fn()
    sync()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - t)
    return best


def _speed_patch(root: Path, mpp: float) -> np.ndarray:
    """A 1000x1000 patch at ``mpp`` cut from held-out CoNSeP (tiled 2x2 for 0.5 um/px)."""
    img = _patch(root, 23, mpp)
    if img.shape[0] < 1000:
        img = np.concatenate([np.concatenate([_patch(root, i, mpp) for i in ids], 1) for ids in ((23, 24), (22, 21))], 0)
    return np.ascontiguousarray(img[:1000, :1000])


def cpu_seconds(root: Path, backend: str, repeats: int) -> list[dict]:
    """Seconds of ``segment`` per 1000x1000 patch at each working pixel size."""
    return [
        {"backend": backend, "mpp": mpp,
         "seconds": _best_of(lambda p=_speed_patch(root, mpp): segment(p, mpp, backend=backend), repeats)}
        for mpp in MPPS
    ]


def network_variants(root: Path, repeats: int) -> list[dict]:
    """Network-only seconds for a 1000x1000 patch at 0.25 um/px in three numeric set-ups."""
    import torch

    from napari_uam.segment import learned

    ckpt = learned.load_checkpoint()
    img = _speed_patch(root, CONSEP_MPP)
    rows = []
    setups = (
        ("fp32, BatchNorm, NCHW (as trained)", False, False),
        ("fp32, BatchNorm folded, channels-last (shipped)", True, False),
        ("bf16 autocast, folded, channels-last", True, True),
    )
    for name, fold, bf16 in setups:
        model = learned.build_model(ckpt, "cpu", for_inference=fold)

        def run(model=model, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                learned.predict_maps(model, img)

        rows.append({"setup": name, "seconds": _best_of(run, repeats)})
    return rows


def gpu_timing(root: Path, device: str, repeats: int) -> dict:
    """Learned-backend inference times on a GPU, for ``--json``.

    Per 1000x1000 patch at 0.25 and 0.5 um/px: the network alone (bf16 autocast, tiles as the
    backend cuts them, maps copied back to the host) and the whole ``segment`` call (network +
    CPU marker watershed + resizing).
    """
    import torch

    from napari_uam.segment import learned, resolve_backend
    from napari_uam.scale import scale_factor

    if resolve_backend("auto") != "learned":
        raise SystemExit("the learned backend is not available (weights missing or unreadable)")
    torch.backends.cudnn.benchmark = True
    model, ckpt = learned._model(device)
    net_mpp = float(ckpt["net_mpp"])

    def sync():
        torch.cuda.synchronize(device)

    rows = []
    for mpp in MPPS:
        patch = _speed_patch(root, mpp)
        net_in = rescale_image(patch, scale_factor(mpp, net_mpp))
        net_s = _best_of(lambda: learned.predict_maps(model, net_in, device), repeats, sync)
        total_s = _best_of(lambda: segment(patch, mpp, backend="learned", device=device), repeats, sync)
        n = int(segment(patch, mpp, backend="learned", device=device).max())
        rows.append({"mpp": mpp, "network_s": net_s, "segment_s": total_s, "n_nuclei": n,
                     "net_pixels": int(net_in.shape[0] * net_in.shape[1])})
        print(f"cuda {mpp:g} um/px: network {net_s * 1e3:.1f} ms, segment {total_s * 1e3:.1f} ms, {n} nuclei", flush=True)
    return {
        "schema": GPU_SCHEMA,
        "date": dt.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(device),
        "torch": str(torch.__version__),
        "host_cpu": _machine(),
        "command": "python benchmarks/segmentation_bench.py " + " ".join(sys.argv[1:]),
        "rows": rows,
    }


# --- report ----------------------------------------------------------------------------------


def _machine() -> str:
    from _report import machine

    return machine()


def gpu_section(js: dict | None) -> str:
    """Markdown of the GPU timing section (from a ``--json`` result, or how to obtain it)."""
    head = ["## Speed on the GPU", ""]
    if js is None:
        return "\n".join(head + [
            "Not measured yet on this copy: run the GPU command of the Reproduce section on the",
            "H100 machine, then `python benchmarks/segmentation_bench.py --merge-json seg_gpu.json`",
            "writes the measured rows here.",
        ])
    if js.get("schema") != GPU_SCHEMA:
        raise SystemExit(f"not a {GPU_SCHEMA} file (schema {js.get('schema')!r})")
    lines = head + [
        f"Measured {js['date']} on {js['gpu']} (torch {js['torch']}; host {js['host_cpu']}) with",
        f"`{js['command']}`. Learned backend, bf16 autocast, best of repeats, per 1000x1000",
        "patch. Network: tiles through the U-Net and maps back to the host; segment: the whole",
        "call, whose marker watershed and resizing run on the host CPU.",
        "",
        "| device | um/px | network px | network ms | segment ms | nuclei |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for r in js["rows"]:
        lines.append(
            f"| {js['gpu']} | {r['mpp']:.2f} | {r['net_pixels']:,} | {r['network_s'] * 1e3:.1f} | "
            f"{r['segment_s'] * 1e3:.0f} | {r['n_nuclei']} |"
        )
    return "\n".join(lines)


def merge_gpu_json(path: Path, doc: Path = DOC) -> Path:
    """Insert the GPU rows of a ``--json`` file into ``doc`` (between the gpu markers)."""
    from _report import write_section

    js = json.loads(Path(path).read_text())
    section = gpu_section(js)
    # The same rows, under their own heading, in the shared performance page.
    write_section("segmentation-gpu", section.replace("## Speed on the GPU", "## Nuclei segmentation speed (GPU)"),
                  doc.parent / "performance.md")
    return write_section("gpu", section, doc, title="# Nuclei segmentation")


def _tuning_summary() -> dict:
    from napari_uam.segment import learned

    try:
        return dict(learned.load_checkpoint().get("meta", {}).get("postprocess_tuning", {}))
    except Exception:  # noqa: BLE001 - the doc still renders without the learned backend
        return {}


def _weights_sha256() -> str | None:
    """SHA-256 of the installed learned weights (None without them)."""
    import hashlib

    from napari_uam.segment import learned

    path = learned.weights_path()
    return hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else None


def _checkpoint() -> dict:
    """The shipped checkpoint's meta and recorded "auto" range ({} without weights)."""
    from napari_uam.segment import learned

    try:
        ckpt = learned.load_checkpoint()
    except Exception:  # noqa: BLE001 - the doc still renders without the learned backend
        return {}
    return {"meta": dict(ckpt.get("meta", {})), "auto": learned.auto_mpp_range()}


def auto_sentence() -> str:
    """What "auto" picks, from the range recorded with the shipped weights."""
    ck = _checkpoint()
    if not ck:
        return "`auto` runs `watershed`: the learned weights are not installed."
    rng = ck["auto"]
    if rng is None:
        return ("`auto` picks `learned` at every pixel size whenever its weights load (they met the 40x "
                "targets on CoNSeP 21-27 and found the BRCA-M2C val cells at 20x at least as well as the "
                "watershed when trained; tables below), and `watershed` otherwise.")
    if rng == "never":
        return ("`auto` never picks `learned` (its weights missed the 40x targets when trained); it runs "
                "`watershed`. `learned` can still be asked for by name.")
    return (f"`auto` picks `learned` for images of {rng[0]:g}-{rng[1]:g} um/px (40x-like, where it met the "
            "targets) when its weights load, and `watershed` otherwise: at 20x its BRCA-M2C val point F1 "
            "was below the watershed's (table below).")


def training_lines() -> list[str]:
    """How the shipped network was trained, from its checkpoint's meta (markdown lines)."""
    meta = _checkpoint().get("meta", {})
    if not meta:
        return []
    out = [
        f"Shipped network: trained {meta.get('date', '?')[:10]} on {meta.get('device', '?')} "
        f"(torch {meta.get('torch', '?')}), {meta.get('steps', '?')} steps in {meta.get('train_seconds', '?')} s, "
        f"batch {meta.get('batch', '?')} crops of {meta.get('crop', '?')} px, peak lr {meta.get('lr', '?')}; "
        f"CoNSeP images {meta['train_images'][0]}-{meta['train_images'][-1]} with full masks."
        if meta.get("train_images") else "",
    ]
    if meta.get("init"):
        out.append(f"Fine-tuned from {meta['init']}.")
    if meta.get("weak_supervision"):
        out.append(f"Weak supervision: {meta['weak_supervision']}.")
    if meta.get("augmentation"):
        out.append(f"Augmentation: {meta['augmentation']}.")
    bv = meta.get("brca_m2c", {}).get("brca_val")
    if bv:
        out.append(f"At training time (GPU, bf16) BRCA-M2C val point F1 was {bv['learned']['f1']:.3f} "
                   f"(watershed {bv['watershed']['f1']:.3f}), which set the `auto` range stored with the weights.")
    return [line for line in out if line]


def card_section(quality: list[dict], brca: list[dict], speed: list[dict], now: str) -> str:
    """The generated part of the model card (weights/nuclei_unet.md): training and numbers."""
    import hashlib

    from napari_uam.segment import learned

    meta = _checkpoint().get("meta", {})
    path = learned.WEIGHTS_PATH
    lines = [
        "## Training and numbers (generated)",
        "",
        f"Written by `python benchmarks/segmentation_bench.py --data ../shared/data` on {now} from the",
        f"weights file (`{path.name}`, {path.stat().st_size / 1e6:.2f} MB, SHA-256",
        f"`{hashlib.sha256(path.read_bytes()).hexdigest()}`) and the CPU measurements below.",
        "",
        "Training command: `" + meta.get("command", "?").replace("/work/main/src/napari_uam/segment/train_learned.py",
                                                                 "python -m napari_uam.segment.train_learned") + "`",
        "",
        *training_lines(),
        "",
        auto_sentence(),
        "",
        "Held-out CoNSeP 21-27 (CPU fp32; at 0.5 um/px the image is first downsampled like a 20x scan):",
        "",
        "| um/px | AJI | PQ | DQ | SQ | Dice | F1@0.5 | pred/true |",
        "|---|---|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['mpp']:.2f} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS) + f" | {r['n_pred/n_true']:.2f} |"
              for r in quality if r["backend"] == "learned"]
    lines += ["", f"BRCA-M2C val (breast, 20x, never used for training or tuning), centroids vs points within "
              f"{POINT_RADIUS_UM:g} um:", "", "| backend | precision | recall | F1 |", "|---|---|---|---|"]
    lines += [f"| {b['backend']} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |" for b in brca]
    lines += ["", f"CPU seconds of `segment()` per 1000x1000 patch ({CPU_THREADS} torch threads): "
              + ", ".join(f"{r['mpp']:g} um/px {r['seconds']:.2f} s" for r in speed if r["backend"] == "learned")
              + ". GPU: `docs/segmentation.md`."]
    return "\n".join(lines)


def write_card(quality, brca, speed, now) -> None:
    """Insert :func:`card_section` into the model card between its ``card`` markers."""
    from napari_uam._sections import markers, replace_section
    from napari_uam.segment import learned

    if "learned" not in {r["backend"] for r in quality}:
        return
    start, end = markers("card")
    replace_section(learned.WEIGHTS_PATH.with_suffix(".md"),
                    f"{start}\n{card_section(quality, brca, speed, now)}\n{end}", (start, end))


def markdown(quality: list[dict], brca: list[dict], speed: list[dict], variants: list[dict],
             gpu_block: str, now: str) -> str:
    """The whole docs/segmentation.md text (``now``: when the numbers were measured)."""
    import torch

    lines = [
        "# Nuclei segmentation",
        "",
        f"Generated by `python benchmarks/segmentation_bench.py --data ../shared/data` on {now}.  ",
        f"Machine: {_machine()}, torch {torch.__version__}, {CPU_THREADS} torch threads; the",
        "machine was shared with other jobs, so times are the best of repeats.",
        "",
        "Backends: `learned` (the shipped U-Net + marker watershed, model card",
        "`src/napari_uam/weights/nuclei_unet.md`) and `watershed` (classical colour",
        "deconvolution + distance watershed, no weights). " + auto_sentence(),
        "",
        *training_lines(),
        "",
        "## CoNSeP held-out images 21-27 (colorectal, 40x)",
        "",
        "Mean over the 7 images of AJI, PQ (= DQ x SQ), pixel Dice and detection F1 (a nucleus",
        "is detected when its IoU with a true nucleus exceeds 0.5). The network was trained on",
        "images 1-20, its post-processing defaults were set before training, and the watershed's",
        "defaults were tuned on 1-20; 21-27 were used",
        "for nothing but this table. At 0.5 um/px the image is first downsampled as a 20x",
        "scan would give it, and the labels are resized back to the 1000x1000 ground truth.",
        "",
        "| backend | um/px | AJI | PQ | DQ | SQ | Dice | F1@0.5 | pred/true |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in quality:
        lines.append(f"| {r['backend']} | {r['mpp']:.2f} | " + " | ".join(f"{r[k]:.3f}" for k in KEYS)
                     + f" | {r['n_pred/n_true']:.2f} |")
    h = HOVERNET
    lines += [
        f"| HoVer-Net (paper, CoNSeP test split) | 0.25 | {h['aji']:.3f} | {h['pq']:.3f} | "
        f"{h['dq']:.3f} | {h['sq']:.3f} | {h['dice']:.3f} | | |",
        "",
        "HoVer-Net's row (Graham et al., 2019, Table 3) is for context only: it was trained on all",
        "27 training images and evaluated on the 14 official test images, which this copy of",
        "CoNSeP does not include; ours is trained on 20 and evaluated on the other 7.",
        "",
    ]
    tun = _tuning_summary()
    if tun:
        d, t = tun["default_scores"], tun["tuned_scores"]
        lines += [
            "### Post-processing tuning (images 1-20 only)",
            "",
            f"`{tun['command']}` ({tun['date']}): coordinate descent over the marker-watershed",
            f"thresholds, {tun['candidates']} candidates, objective {tun['objective']}, on the",
            "cached network maps of CoNSeP images 1-20. BRCA-M2C *train* centroid F1 (3 um,",
            f"{tun['brca_train_images']} images) checks that the choice carries over to 20x breast tissue.",
            "",
            "| post-processing | AJI 0.25 | PQ 0.25 | AJI 0.5 | PQ 0.5 | BRCA train F1 |",
            "|---|---|---|---|---|---|",
        ]
        applied = tun.get("applied", True)
        for name, s in (("defaults" + ("" if applied else " (shipped)"), d),
                        ("tuned on 1-20" + (" (shipped)" if applied else " (not shipped)"), t)):
            lines.append(f"| {name} | {s['0.25']['aji']:.3f} | {s['0.25']['pq']:.3f} | {s['0.5']['aji']:.3f} | "
                         f"{s['0.5']['pq']:.3f} | {s['brca_train']['f1']:.3f} |")
        lines += ["", "Search result: " + ", ".join(f"`{k}={v:g}`" for k, v in tun["params"].items()) + "."]
        if not applied:
            lines += ["", "Not shipped: " + tun.get("why_not_applied", "") + " Tuning on images",
                      "the network was trained on rewards its over-confident maps there; a fair",
                      "tuning needs maps of images it has not seen (e.g. out-of-fold training)."]
        lines += [""]
    lines += [
        "## BRCA-M2C val (breast, 20x, 0.5 um/px)",
        "",
        f"Nucleus centroids matched one to one to the annotated cell points within {POINT_RADIUS_UM:g} um",
        "(`napari_uam.segment.metrics.match_points`), counts pooled over the images. The",
        "annotations mark the cells the annotators labelled, so unlabelled true nuclei count as",
        "false positives. Never used for training or tuning (the network's weak supervision, if",
        "any, used the separate BRCA-M2C *train* split only).",
        "",
        "| backend | images | points | precision | recall | F1 |",
        "|---|---|---|---|---|---|",
    ]
    for b in brca:
        lines.append(f"| {b['backend']} | {b['n_images']} | {b['n_points']} | {b['precision']:.3f} | "
                     f"{b['recall']:.3f} | {b['f1']:.3f} |")
    lines += [
        "",
        "## Speed on the CPU",
        "",
        f"Seconds of `segment()` per 1000x1000 RGB patch ({CPU_THREADS} torch threads, best of",
        "repeats). A patch at 0.5 um/px covers 4x the tissue of one at 0.25 um/px, and the",
        "learned backend upsamples it to the network's 0.25 um/px (2000x2000 network pixels).",
        "",
        "| backend | um/px | seconds |",
        "|---|---|---:|",
    ]
    lines += [f"| {r['backend']} | {r['mpp']:.2f} | {r['seconds']:.2f} |" for r in speed]
    if variants:
        lines += [
            "",
            "Network alone on a 1000x1000 patch at 0.25 um/px (one 1264x1264 tile with its",
            "context margin), by numeric set-up. Folding BatchNorm into the convolutions and the",
            "channels-last layout are exact to float rounding; this CPU has no native bf16, so",
            "bf16 only adds conversions. `torch.inference_mode` is on in all three.",
            "",
            "| set-up | seconds |",
            "|---|---:|",
        ]
        lines += [f"| {r['setup']} | {r['seconds']:.2f} |" for r in variants]
    lines += [
        "",
        "Tiles: a 1000x1000 patch at 0.25 um/px runs in one pass; larger images are cut into",
        "balanced tiles of at most 1280 px whose 128 px margins only give context, so memory",
        "stays flat and the labels equal a one-pass run's (`tests/test_segment_learned.py`).",
        "",
        "<!-- gpu:start -->",
        gpu_block.strip(),
        "<!-- gpu:end -->",
        "",
        "## Reproduce",
        "",
        "```",
        "# CPU quality and speed (this page; the GPU section is kept)",
        "python benchmarks/segmentation_bench.py --data ../shared/data",
        "# GPU timing, on the H100 machine (needs only the CoNSeP images 21-27)",
        "export PYTHONPATH=$PWD/src && python benchmarks/segmentation_bench.py --device cuda \\",
        "    --data .gpu_data/consep --json \"$OUT/seg_gpu.json\"",
        "# then, here: insert the measured GPU rows above",
        "python benchmarks/segmentation_bench.py --merge-json seg_gpu.json",
        "# training (GPU, about 5 minutes; see the model card for the exact command)",
        "export PYTHONPATH=$PWD/src && python -m napari_uam.segment.train_learned --data .gpu_data/consep \\",
        "    --out \"$OUT\" --device cuda --init src/napari_uam/weights/nuclei_unet.pt --lr 1e-3 --minutes 4 \\",
        "    --brca-train .gpu_data/brca_m2c/train --brca-val .gpu_data/brca_m2c/val --brca-frac 0.375",
        "```",
        "",
    ]
    return "\n".join(lines)


def summary_sections(quality: list[dict], brca: list[dict], speed: list[dict], now: str) -> None:
    """Short segmentation sections of docs/results.md and docs/performance.md (same numbers)."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _report import DOCS, write_section

    head = f"Generated by `python benchmarks/segmentation_bench.py --data ../shared/data` on {now}; details in `docs/segmentation.md`."
    q = ["## Nuclei segmentation", "", head, "",
         "CoNSeP held-out images 21-27 (never used for training or tuning):", "",
         "| backend | um/px | AJI | PQ | Dice | F1@0.5 |", "|---|---|---|---|---|---|"]
    q += [f"| {r['backend']} | {r['mpp']:.2f} | {r['aji']:.3f} | {r['pq']:.3f} | {r['dice']:.3f} | {r['f1']:.3f} |" for r in quality]
    q += ["", "BRCA-M2C val, centroids vs annotated points within 3 um:", "",
          "| backend | precision | recall | F1 |", "|---|---|---|---|"]
    q += [f"| {b['backend']} | {b['precision']:.3f} | {b['recall']:.3f} | {b['f1']:.3f} |" for b in brca]
    write_section("segmentation", "\n".join(q), DOCS / "results.md", title="# Results")
    t = ["## Nuclei segmentation speed (CPU)", "", head, "",
         f"Seconds per 1000x1000 image, {CPU_THREADS} torch threads, best of repeats:", "",
         "| backend | um/px | seconds |", "|---|---|---|"]
    t += [f"| {r['backend']} | {r['mpp']:g} | {r['seconds']:.2f} |" for r in speed]
    write_section("segmentation", "\n".join(t), DOCS / "performance.md")


def _current_gpu_block(doc: Path) -> str:
    """The GPU section already in ``doc`` (a CPU re-run keeps a measured GPU row)."""
    if doc.exists():
        m = re.search(r"<!-- gpu:start -->\n(.*?)\n<!-- gpu:end -->", doc.read_text(), re.S)
        if m:
            return m.group(1)
    return gpu_section(None)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                    help="data root with consep/ and brca_m2c/ (GPU mode: the CoNSeP folder itself is enough)")
    ap.add_argument("--out", type=Path, default=DOC, help="markdown to write (CPU mode)")
    ap.add_argument("--device", default="cpu", help="cpu: quality + CPU speed; cuda[:N]: GPU timing only")
    ap.add_argument("--json", type=Path, help="GPU mode: write the timing here")
    ap.add_argument("--merge-json", type=Path, help="insert a GPU --json result into --out and exit")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best kept)")
    ap.add_argument("--render", action="store_true",
                    help="rewrite --out from the last run's runs/segmentation_bench.json, no measuring")
    ap.add_argument("--skip-variants", action="store_true", help="CPU mode: skip the network set-up table")
    args = ap.parse_args(argv)

    import torch

    if args.merge_json:
        print(f"wrote {merge_gpu_json(args.merge_json, args.out)}")
        return 0
    raw = REPO / "runs" / "segmentation_bench.json"
    if args.render:
        r = json.loads(raw.read_text())
        # Numbers measured with other weights must not be printed next to these weights' card.
        if r.get("weights_sha256") not in (None, _weights_sha256()):
            print(f"{raw} was measured with other weights than the installed ones; re-run the "
                  "measurement: python benchmarks/segmentation_bench.py --data ../shared/data", file=sys.stderr)
            return 2
        args.out.write_text(markdown(r["quality"], r["brca"], r["cpu_speed"], r["network_variants"],
                                     _current_gpu_block(args.out), r.get("date_time") or r["date"]))
        summary_sections(r["quality"], r["brca"], r["cpu_speed"], r.get("date_time") or r["date"])
        write_card(r["quality"], r["brca"], r["cpu_speed"], r.get("date_time") or r["date"])
        print(f"wrote {args.out}")
        return 0
    consep = consep_dir(args.data)
    if not (consep / "train_21.jpg").exists():
        print(f"CoNSeP images not found under {args.data}; pass --data DIR", file=sys.stderr)
        return 2
    if args.device.startswith("cuda"):
        if not args.json:
            ap.error("--device cuda needs --json OUT")
        js = gpu_timing(consep, args.device, max(args.repeats, 5))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(js, indent=1))
        print(f"wrote {args.json}")
        return 0

    torch.set_num_threads(CPU_THREADS)
    brca_root = args.data / "brca_m2c"
    if not brca_root.is_dir():
        print(f"BRCA-M2C not found under {args.data}", file=sys.stderr)
        return 2
    quality, brca, speed = [], [], []
    for backend in available_backends():
        for mpp in MPPS:
            r = consep_scores(consep, backend, mpp)
            quality.append(r)
            print(f"{backend:10s} {mpp:.2f} um/px held-out " + " ".join(f"{k}={r[k]:.3f}" for k in KEYS)
                  + f" pred/true={r['n_pred/n_true']:.2f}", flush=True)
        b = brca_scores(brca_root, backend)
        brca.append(b)
        print(f"{backend:10s} BRCA-M2C val P={b['precision']:.3f} R={b['recall']:.3f} F1={b['f1']:.3f}", flush=True)
        speed += cpu_seconds(consep, backend, args.repeats)
        print(f"{backend:10s} CPU s/1000x1000: " + ", ".join(f"{r['mpp']:g} um/px {r['seconds']:.2f}" for r in speed[-2:]), flush=True)
    ck = _checkpoint()
    f1 = {b["backend"]: b["f1"] for b in brca}
    if ck and ck["auto"] is None and f1.get("learned", 1.0) < f1.get("watershed", 0.0):
        # The range was set from the GPU (bf16) numbers at training time; this CPU run disagrees.
        print(f"WARNING: the weights let auto pick learned at 20x, but here its BRCA-M2C val F1 "
              f"{f1['learned']:.3f} < watershed {f1['watershed']:.3f}", file=sys.stderr)
    variants = [] if args.skip_variants or "learned" not in available_backends() else network_variants(consep, args.repeats)
    for v in variants:
        print(f"network {v['setup']}: {v['seconds']:.2f}s", flush=True)
    gpu_block = _current_gpu_block(args.out)
    now = dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(markdown(quality, brca, speed, variants, gpu_block, now))
    summary_sections(quality, brca, speed, now)
    write_card(quality, brca, speed, now)
    # The per-image numbers go to runs/ (not versioned) for whoever wants to dig further.
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(
        {"date_time": now, "machine": _machine(), "quality": quality, "brca": brca,
         "cpu_speed": speed, "network_variants": variants, "weights_sha256": _weights_sha256()}, indent=1))
    print(f"wrote {args.out} and {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
