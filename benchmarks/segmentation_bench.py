"""Nuclei segmentation quality and speed, shipped network against the previous one: docs/segmentation.md.

One command (CPU, this machine) measures and rewrites the page, the model card's generated
section and the segmentation sections of docs/results.md and docs/performance.md::

    python benchmarks/segmentation_bench.py --data ../shared/data

It measures, for the shipped U-Net (v3), the previous one (v2, extracted from git commit
:data:`PREVIOUS_COMMIT` into ``runs/`` unless ``--previous`` names a copy) and the classical
watershed, all through ``napari_uam.segment.segment`` (the product's code path):

* every image of every source of ``research/segmentation/nuclei_sets.py``: AJI, PQ, Dice
  (mean over images) and detection F1 of centroids within 3 um (pooled), scored by
  ``research.segmentation.loso.score_labels`` exactly like the LOSO folds;
* CoNSeP images 21-27 at 0.25 and 0.5 um/px and BRCA-M2C val (the rows the README quotes);
* the pixel-size estimate of ``napari_uam.pixel_size`` on every image (shipped network);
* seconds of ``segment()`` per 1000x1000 patch at 0.25 and 0.5 um/px with 2 torch threads,
  every model in the same run.

Results go to ``docs/segmentation_bench_cpu.json``. The page itself is rendered
(``_segmentation_doc.py``) from that file, ``docs/segmentation_loso.json`` (the LOSO table:
GPU run of ``research/segmentation/loso.py``), ``docs/segmentation_shipped.json`` and
``docs/segmentation_gpu.json`` when present. GPU timing, on the GPU machine (needs CoNSeP
images 21-24 and the previous weights)::

    PYTHONPATH=src:. python benchmarks/segmentation_bench.py --device cuda --data .gpu_data/seg_bench \\
        --previous .gpu_data/seg_bench/nuclei_unet_v2.pt --json "$OUT/seg_gpu.json"
    # here: store it as docs/segmentation_gpu.json and re-render
    python benchmarks/segmentation_bench.py --merge-json seg_gpu.json

``--render`` re-renders from the JSON files without measuring.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import hashlib
import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(REPO))

from napari_uam.scale import rescale_image, resize_labels  # noqa: E402

DOCS = REPO / "docs"
CPU_JSON = DOCS / "segmentation_bench_cpu.json"
GPU_JSON = DOCS / "segmentation_gpu.json"
CPU_SCHEMA = "uam-seg-cpu-v2"
GPU_SCHEMA = "uam-seg-gpu-v2"
#: The last commit that shipped the v2 network (CoNSeP 1-20 + BRCA-M2C train points).
PREVIOUS_COMMIT = "28e00f3"
PREVIOUS_DEFAULT = REPO / "runs" / "nuclei_unet_v2.pt"
CONSEP_MPP = 0.25
MPPS = (0.25, 0.5)
HELD_OUT = range(21, 28)
CPU_THREADS = 2


@dataclass(frozen=True)
class Model:
    """One segmenter under test: a learned checkpoint, or the watershed (``path`` None)."""

    key: str
    label: str
    path: Path | None = None

    @property
    def backend(self) -> str:
        return "watershed" if self.path is None else "learned"


def models(previous: Path) -> list[Model]:
    from napari_uam.segment.learned import WEIGHTS_PATH

    return [
        Model("v3", "v3 (shipped)", WEIGHTS_PATH),
        Model("v2", "v2 (previous)", previous),
        Model("watershed", "watershed (no weights)"),
    ]


def previous_weights(path: Path) -> Path:
    """The previous network's weights: ``path``, extracted from git when it is missing."""
    if path.is_file():
        return path
    if path != PREVIOUS_DEFAULT:
        raise SystemExit(f"{path} not found")
    blob = subprocess.run(
        ["git", "-C", str(REPO), "show", f"{PREVIOUS_COMMIT}:src/napari_uam/weights/nuclei_unet.pt"],
        capture_output=True,
        check=False,
    )
    if blob.returncode != 0:
        raise SystemExit(f"cannot extract the v2 weights from git ({blob.stderr.decode().strip()}); pass --previous")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(blob.stdout)
    os.replace(tmp, path)
    return path


@contextlib.contextmanager
def using(model: Model):
    """Make ``segment(..., backend="learned")`` run ``model``'s weights (the product reads
    ``$NAPARI_UAM_SEG_WEIGHTS``), so every model goes through the same code path."""
    old = os.environ.get("NAPARI_UAM_SEG_WEIGHTS")
    if model.path is not None:
        os.environ["NAPARI_UAM_SEG_WEIGHTS"] = str(model.path)
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("NAPARI_UAM_SEG_WEIGHTS", None)
        else:
            os.environ["NAPARI_UAM_SEG_WEIGHTS"] = old


def run(model: Model, rgb: np.ndarray, mpp: float, device: str | None = None) -> np.ndarray:
    from napari_uam.segment import segment

    with using(model):
        return segment(rgb, mpp, backend=model.backend, device=device)


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def model_info(model: Model) -> dict:
    """What the docs say about a model: weights, training sources, post-processing."""
    if model.path is None:
        return {"label": model.label, "trained_on": []}
    import torch

    ck = torch.load(model.path, map_location="cpu", weights_only=True)
    meta = ck.get("meta", {})
    if meta.get("train_sources"):
        trained = list(meta["train_sources"])
    else:  # v1 / v2: CoNSeP 1-20, plus BRCA-M2C train points when weakly supervised
        trained = ["consep"] + (["brca_m2c"] if meta.get("weak_supervision") else [])
    return {
        "label": model.label,
        "weights": str(Path(model.path).resolve().relative_to(REPO))
        if Path(model.path).resolve().is_relative_to(REPO)
        else str(model.path),
        "sha256": sha256(model.path),
        "bytes": Path(model.path).stat().st_size,
        "trained_on": trained,
        "consep_train_images": meta.get("train_images"),
        "postprocess": dict(ck.get("postprocess", {})),
        "meta": _plain(meta),
    }


def _plain(x):
    """JSON-safe copy (tuples to lists)."""
    return json.loads(json.dumps(x))


# --- quality ---------------------------------------------------------------------------------


def source_info(data: Path) -> dict:
    """Per source: its folders, annotation kind and what its meta.json states."""
    from research.segmentation import nuclei_sets as N

    out = {}
    for name, src in N.SOURCES.items():
        ims = N.images(name, data)
        if not ims:
            continue
        d = data / src.folders[0]
        meta = json.loads((d / "meta.json").read_text()) if (d / "meta.json").exists() else {}
        organ = meta.get("organ") or ", ".join(meta.get("organs", [])) or src.organ
        source = meta.get("source", "")
        out[name] = {
            "name": meta.get("name", name),
            "kind": src.kind,
            "folders": list(src.folders),
            "organ": organ,
            "magnification": meta.get("magnification", ""),
            "mpp": sorted({im.mpp for im in ims}),
            "licence": meta.get("licence", src.licence),
            "source": source if isinstance(source, str) else "; ".join(f"{k}: {v}" for k, v in source.items()),
            "n_images": len(ims),
            "splits": sorted({im.split for im in ims}),
        }
    return out


def every_source(data: Path, model: Model, progress=print, limit: int = 0) -> dict:
    """Per-image scores of ``model`` on every image of every source, at its recorded pixel size."""
    from napari_uam.pixel_size import estimate_mpp
    from research.segmentation import nuclei_sets as N
    from research.segmentation.loso import score_labels

    rows = {}
    for name in N.SOURCES:
        t = time.perf_counter()
        out = []
        ims = N.images(name, data)
        # A smoke test keeps the first images and BRCA-M2C val (the table needs it).
        for im in ims[:limit] + [i for i in ims[limit:] if i.split == "val"][:limit] if limit else ims:
            lab = run(model, im.rgb(), im.mpp)
            row = {"image": im.image_id, "split": im.split, "mpp": im.mpp, **score_labels(lab, im)}
            est = estimate_mpp(lab, im.mpp)
            if est is not None:
                row.update(mpp_estimate=est.estimate, p75_area_um2=est.p75_area_um2)
            out.append(row)
        if out:
            rows[name] = out
            progress(f"{model.key:9s} {name:10s} {len(out):3d} images {time.perf_counter() - t:5.0f}s")
    return rows


def summaries(rows: dict) -> dict:
    """{source: summary} (loso.summarise: mean AJI / PQ / Dice, pooled centroid P / R / F1)."""
    from research.segmentation import nuclei_sets as N
    from research.segmentation.loso import summarise

    return {s: summarise(r, N.SOURCES[s].kind) for s, r in rows.items()}


def consep_rows(rows: list[dict]) -> dict:
    """Mean instance scores over CoNSeP 21-27 from per-image rows."""
    sel = [r for r in rows if r["image"] in {f"train_{i}" for i in HELD_OUT}]
    if not sel:  # a smoke test's first images
        return {"n_images": 0}
    out = {k: float(np.mean([r[k] for r in sel])) for k in ("aji", "pq", "dq", "sq", "dice", "f1_iou")}
    out["n_pred/n_true"] = sum(r["n_pred"] for r in sel) / sum(r["n_true"] for r in sel)
    out["n_images"] = len(sel)
    return out


def consep_at_20x(data: Path, model: Model) -> dict:
    """CoNSeP 21-27 downsampled to 0.5 um/px as a 20x scan gives it; labels resized back."""
    from napari_uam.segment import metrics as M

    sel = []
    for i in HELD_OUT:
        root = data / "consep"
        rgb = np.asarray(Image.open(root / f"train_{i}.jpg").convert("RGB"))
        gt = np.asarray(Image.open(root / f"train_{i}_inst.png")).astype(np.int32)
        lab = resize_labels(run(model, rescale_image(rgb, CONSEP_MPP / 0.5), 0.5), gt.shape)
        s = M.instance_scores(gt, lab)
        sel.append({**s, "f1_iou": s["f1"]})
    out = {k: float(np.mean([r[k] for r in sel])) for k in ("aji", "pq", "dq", "sq", "dice", "f1_iou")}
    out["n_pred/n_true"] = sum(r["n_pred"] for r in sel) / sum(r["n_true"] for r in sel)
    out["n_images"] = len(sel)
    return out


def brca_val(rows: list[dict]) -> dict:
    """Pooled point P / R / F1 on the BRCA-M2C val split (never trained on by any model)."""
    sel = [r for r in rows if r["split"] == "val"]
    tp, fp, fn = (sum(r[k] for r in sel) for k in ("tp", "fp", "fn"))
    return {
        "precision": tp / max(tp + fp, 1),
        "recall": tp / max(tp + fn, 1),
        "f1": 2 * tp / max(2 * tp + fp + fn, 1),
        "n_images": len(sel),
        "n_points": tp + fn,
    }


def pixel_size_check(rows: dict) -> dict:
    """Per source: how far the nuclei-based pixel-size estimate lands from the recorded one."""
    out = {}
    for s, rs in rows.items():
        ratios = [r["mpp_estimate"] / r["mpp"] for r in rs if "mpp_estimate" in r]
        p75 = [r["p75_area_um2"] for r in rs if "p75_area_um2" in r]
        if not ratios:
            continue
        ratios = np.asarray(ratios)
        out[s] = {
            "n_images": len(rs),
            "n_estimated": int(ratios.size),
            "ratio_median": float(np.median(ratios)),
            "ratio_min": float(ratios.min()),
            "ratio_max": float(ratios.max()),
            "within_25pct": float(np.mean(np.abs(ratios - 1) <= 0.25)),
            "warned": int(np.sum(np.maximum(ratios, 1 / ratios) > 1.6)),
            "p75_min": float(min(p75)),
            "p75_max": float(max(p75)),
        }
    return out


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


def _consep(root: Path, i: int, mpp: float) -> np.ndarray:
    rgb = np.asarray(Image.open(root / f"train_{i}.jpg").convert("RGB"))
    return rgb if mpp == CONSEP_MPP else rescale_image(rgb, CONSEP_MPP / mpp)


def speed_patch(root: Path, mpp: float) -> np.ndarray:
    """A 1000x1000 patch at ``mpp`` cut from CoNSeP 23 (2x2 images 21-24 at 0.5 um/px)."""
    img = _consep(root, 23, mpp)
    if img.shape[0] < 1000:
        img = np.concatenate(
            [np.concatenate([_consep(root, i, mpp) for i in ids], 1) for ids in ((23, 24), (22, 21))], 0
        )
    return np.ascontiguousarray(img[:1000, :1000])


def cpu_seconds(root: Path, model: Model, repeats: int) -> list[dict]:
    out = []
    for mpp in MPPS:
        patch = speed_patch(root, mpp)
        s = _best_of(lambda: run(model, patch, mpp, "cpu"), repeats)
        out.append({"model": model.key, "mpp": mpp, "seconds": s, "n_nuclei": int(run(model, patch, mpp, "cpu").max())})
    return out


def network_variants(root: Path, model: Model, repeats: int) -> list[dict]:
    """Network-only seconds for a 1000x1000 patch at 0.25 um/px in three numeric set-ups."""
    import torch

    from napari_uam.segment import learned

    ckpt = learned.load_checkpoint(model.path)
    img = speed_patch(root, CONSEP_MPP)
    rows = []
    for name, fold, bf16 in (
        ("fp32, BatchNorm, NCHW (as trained)", False, False),
        ("fp32, BatchNorm folded, channels-last (shipped)", True, False),
        ("bf16 autocast, folded, channels-last", True, True),
    ):
        net = learned.build_model(ckpt, "cpu", for_inference=fold)

        def go(net=net, bf16=bf16):
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                learned.predict_maps(net, img)

        rows.append({"setup": name, "seconds": _best_of(go, repeats)})
    return rows


def gpu_timing(root: Path, previous: Path, device: str, repeats: int) -> dict:
    """Per model and pixel size on a GPU: the network alone (bf16 autocast, tiles as the
    backend cuts them, maps back on the host) and the whole ``segment()`` call."""
    import torch

    from _report import machine
    from napari_uam.scale import scale_factor
    from napari_uam.segment import learned

    cuda = str(device).startswith("cuda")
    torch.backends.cudnn.benchmark = True

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    rows = []
    for model in models(previous)[:2]:
        with using(model):
            net, ckpt = learned._model(device)
        for mpp in MPPS:
            patch = speed_patch(root, mpp)
            net_in = rescale_image(patch, scale_factor(mpp, float(ckpt["net_mpp"])))
            net_s = _best_of(lambda: learned.predict_maps(net, net_in, device), repeats, sync)
            seg_s = _best_of(lambda: run(model, patch, mpp, device), repeats, sync)
            n = int(run(model, patch, mpp, device).max())
            rows.append(
                {
                    "model": model.key,
                    "mpp": mpp,
                    "network_s": net_s,
                    "segment_s": seg_s,
                    "n_nuclei": n,
                    "net_pixels": int(net_in.shape[0] * net_in.shape[1]),
                }
            )
            print(
                f"{model.key} cuda {mpp:g} um/px: network {net_s * 1e3:.1f} ms, segment {seg_s * 1e3:.1f} ms, {n} nuclei",
                flush=True,
            )
    return {
        "schema": GPU_SCHEMA,
        "date": dt.date.today().isoformat(),
        "gpu": torch.cuda.get_device_name(device) if cuda else "cpu",
        "torch": str(torch.__version__),
        "host_cpu": machine(),
        "command": "python benchmarks/segmentation_bench.py " + " ".join(sys.argv[1:]),
        "weights_sha256": {m.key: sha256(m.path) for m in models(previous)[:2]},
        "rows": rows,
    }


# --- driver ----------------------------------------------------------------------------------


def measure_speed(data: Path, previous: Path, repeats: int, skip_variants: bool) -> dict:
    """CPU seconds of every model in one run, with the load the shared machine had meanwhile."""
    import torch

    torch.set_num_threads(CPU_THREADS)
    ms = models(previous)
    consep = data / "consep"
    load0 = os.getloadavg()[0]
    speed = [r for m in ms for r in cpu_seconds(consep, m, repeats)]
    for r in speed:
        print(f"{r['model']:9s} CPU {r['mpp']:g} um/px: {r['seconds']:.2f} s ({r['n_nuclei']} nuclei)", flush=True)
    variants = [] if skip_variants else network_variants(consep, ms[0], repeats)
    return {
        "cpu_speed": speed,
        "network_variants": variants,
        "speed_date_time": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        # Other jobs share these cores: the 1-minute load average before and after says how much.
        "speed_load_average": [round(load0, 2), round(os.getloadavg()[0], 2)],
    }


def measure_cpu(data: Path, previous: Path, repeats: int, skip_variants: bool, limit: int = 0) -> dict:
    import torch

    from _report import machine

    torch.set_num_threads(CPU_THREADS)
    ms = models(previous)
    t0 = time.perf_counter()
    # Speed first, while the measuring has the machine to itself.
    speed = measure_speed(data, previous, repeats, skip_variants)
    result = {
        "schema": CPU_SCHEMA,
        "date_time": dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "machine": machine(),
        "torch": str(torch.__version__),
        "threads": CPU_THREADS,
        "command": "python benchmarks/segmentation_bench.py --data ../shared/data",
        "models": {m.key: model_info(m) for m in ms},
        "sources": source_info(data),
        "previous_commit": PREVIOUS_COMMIT if previous == PREVIOUS_DEFAULT else None,
        **speed,
        "every_source": {},
        "consep_heldout": [],
        "brca_val": {},
    }
    per_image = {}
    for m in ms:
        rows = every_source(data, m, progress=lambda s: print(s, flush=True), limit=limit)
        per_image[m.key] = rows
        result["every_source"][m.key] = summaries(rows)
        result["consep_heldout"].append({"model": m.key, "mpp": 0.25, **consep_rows(rows["consep"])})
        result["consep_heldout"].append({"model": m.key, "mpp": 0.5, **consep_at_20x(data, m)})
        result["brca_val"][m.key] = brca_val(rows["brca_m2c"])
        if m.key == "v3":
            result["pixel_size"] = pixel_size_check(rows)
    result["seconds"] = round(time.perf_counter() - t0)
    # Per-image rows stay out of the repository (runs/ is ignored), for whoever digs further.
    raw = REPO / "runs" / "segmentation_bench_per_image.json"
    raw.parent.mkdir(parents=True, exist_ok=True)
    raw.write_text(json.dumps(per_image, indent=1))
    return result


def write_json(path: Path, obj: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(obj, indent=1) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        type=Path,
        default=REPO.parent / "shared" / "data",
        help="the shared data root (every nucleus source); GPU mode: a folder with consep/train_21-24.jpg",
    )
    ap.add_argument(
        "--previous",
        type=Path,
        default=PREVIOUS_DEFAULT,
        help=f"the previous network's weights (default: extracted from git {PREVIOUS_COMMIT})",
    )
    ap.add_argument("--device", default="cpu", help="cpu: quality + CPU speed; cuda[:N]: GPU timing only")
    ap.add_argument("--json", type=Path, help="GPU mode: write the timing here")
    ap.add_argument(
        "--merge-json", type=Path, help="store a GPU --json result as docs/segmentation_gpu.json, re-render"
    )
    ap.add_argument("--render", action="store_true", help="re-render the docs from the JSON files, no measuring")
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats (best kept)")
    ap.add_argument("--skip-variants", action="store_true", help="CPU mode: skip the network set-up table")
    ap.add_argument(
        "--speed-only",
        action="store_true",
        help="re-measure only the CPU speed rows of docs/segmentation_bench_cpu.json (all models), re-render",
    )
    ap.add_argument(
        "--limit", type=int, default=0, help="smoke test: N images per source, JSON to runs/, docs untouched"
    )
    args = ap.parse_args(argv)

    import _segmentation_doc as doc

    if args.merge_json:
        js = json.loads(args.merge_json.read_text())
        if js.get("schema") != GPU_SCHEMA:
            raise SystemExit(f"{args.merge_json} is not a {GPU_SCHEMA} file (schema {js.get('schema')!r})")
        write_json(GPU_JSON, js)
        print(f"wrote {GPU_JSON}")
        return doc.render_all()
    if args.render:
        return doc.render_all()
    if not (args.data / "consep" / "train_21.jpg").exists():
        print(f"CoNSeP images not found under {args.data}/consep; pass --data DIR", file=sys.stderr)
        return 2
    previous = previous_weights(args.previous)
    if args.device.startswith("cuda"):
        if not args.json:
            ap.error("--device cuda needs --json OUT")
        js = gpu_timing(args.data / "consep", previous, args.device, max(args.repeats, 5))
        args.json.parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, js)
        print(f"wrote {args.json}")
        return 0
    if args.speed_only:
        result = json.loads(CPU_JSON.read_text())
        if result["models"]["v3"]["sha256"] != sha256(models(previous)[0].path):
            raise SystemExit(f"{CPU_JSON} was measured with other weights: run the whole bench")
        result.update(measure_speed(args.data, previous, args.repeats, args.skip_variants))
        write_json(CPU_JSON, result)
        print(f"updated the speed rows of {CPU_JSON}")
        return doc.render_all()
    result = measure_cpu(args.data, previous, args.repeats, args.skip_variants, args.limit)
    if args.limit:
        write_json(REPO / "runs" / "segmentation_bench_smoke.json", result)
        print(f"smoke test: wrote runs/segmentation_bench_smoke.json ({result['seconds']} s)")
        return 0
    write_json(CPU_JSON, result)
    print(f"wrote {CPU_JSON} ({result['seconds']} s)")
    return doc.render_all()


if __name__ == "__main__":
    raise SystemExit(main())
