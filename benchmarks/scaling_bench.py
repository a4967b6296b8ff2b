"""Cohort scale: cells/s and peak memory vs image size, Dask workers, GPU patches/s.

    # CPU: image-size scan (tiled command line) and 1 vs 2 local Dask workers
    python benchmarks/scaling_bench.py --sizes 1024,4096,16384 --json docs/scaling_cpu.json
    # GPU machine: patches/s end to end over a folder of real patches (carried in .gpu_carry/)
    python benchmarks/scaling_bench.py --gpu-patches .gpu_carry/scaling --device cuda --json $OUT/scaling_gpu.json
    # put the JSON results into the 'scaling' section of docs/performance.md
    python benchmarks/scaling_bench.py --render docs/scaling_cpu.json [docs/scaling_gpu.json]

Size scan: square mosaics of real 20x BRCA-M2C patches (0.5 um/px, cropped to 480 px and laid
cyclically) are written as tiled TIFFs, then ``napari-uam classify`` runs on each in a fresh
process (``--tile-size``: images larger than one tile are processed in tiles with halos);
the child reports its wall time, nuclei and peak RSS (``ru_maxrss``). Dask scan: the same
``classify`` over a folder of real patches with a local cluster of 1, then 2 workers (cluster
start-up included in the wall time, and reported apart).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, today, write_section  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CROP = 480


def _patches(folder: Path, n: int):
    import numpy as np
    from PIL import Image

    out = []
    for f in sorted(folder.glob("*.jpg")):
        a = np.asarray(Image.open(f).convert("RGB"))
        if min(a.shape[:2]) >= CROP:  # a few patches are cut at the slide's edge
            out.append(a[:CROP, :CROP])
        if len(out) == n:
            break
    if not out:
        raise SystemExit(f"no .jpg patches of {CROP} px or more in {folder}")
    return out


def write_mosaic(path: Path, size: int, patches) -> None:
    """A size x size tiled TIFF of real patches laid cyclically, written tile by tile."""
    import numpy as np
    import tifffile

    t = 256
    per_row = -(-size // CROP)

    def block(y0, x0):
        out = np.empty((t, t, 3), np.uint8)
        ys = np.arange(y0, y0 + t)
        xs = np.arange(x0, x0 + t)
        # Patch index and in-patch coordinates of every pixel of the block.
        py, iy = ys // CROP, ys % CROP
        px, ix = xs // CROP, xs % CROP
        for a in np.unique(py):
            for b in np.unique(px):
                k = int((a * per_row + b) % len(patches))
                ry, rx = py == a, px == b
                out[np.ix_(ry, rx)] = patches[k][np.ix_(iy[ry], ix[rx])]
        return out

    gen = (block(y, x) for y in range(0, size, t) for x in range(0, size, t))
    tifffile.imwrite(
        path,
        gen,
        shape=(size, size, 3),
        dtype=np.uint8,
        tile=(t, t),
        compression="zlib",
        photometric="rgb",
        bigtiff=True,
        resolution=(1e4 / 0.5, 1e4 / 0.5),
        resolutionunit="CENTIMETER",
    )


def one_run(argv: list[str]) -> dict:
    """Run the command line in this process; report wall time, nuclei and peak RSS."""
    from napari_uam.cli import main

    out = Path(argv[argv.index("--out") + 1])
    t = time.perf_counter()
    code = main(argv)
    wall = time.perf_counter() - t
    manifest = json.loads((out / "napari_uam_run.json").read_text())
    return {
        "exit": code,
        "wall_s": wall,
        "cells": manifest["totals"]["cells"],
        "images": manifest["totals"]["done"],
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "executor": manifest.get("executor"),
        # The machine is shared: the 1-minute load average says how much of it the run had.
        "load1": os.getloadavg()[0],
    }


def warm_then_run(warm: list[str], argv: list[str]) -> dict:
    """One untimed run (imports, weights, compiled kernels) then the timed one."""
    from napari_uam.cli import main

    main(warm)
    return one_run(argv)


def _child(argv: list[str], warm: list[str]) -> dict:
    res = subprocess.run(
        [sys.executable, __file__, "--child", json.dumps([warm, argv])],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    if res.returncode != 0:
        raise SystemExit(f"child failed:\n{res.stdout[-2000:]}\n{res.stderr[-4000:]}")
    return json.loads(res.stdout.strip().splitlines()[-1])


def _warm_argv(work: Path, patches, device: str, tile: int) -> list[str]:
    """A small mosaic processed in tiles, so every code path is warm before timing."""
    src = work / "warm_in"
    if not src.is_dir():
        src.mkdir()
        write_mosaic(src / "warm.tif", 768, patches)
    return [
        "classify",
        str(src),
        "--out",
        str(work / "warm_out"),
        "--device",
        device,
        "--quiet",
        "--overwrite",
        "--tile-size",
        "512",
    ]


def size_scan(sizes, patches, tile: int, device: str, work: Path) -> list[dict]:
    warm = _warm_argv(work, patches, device, tile)
    rows = []
    for size in sizes:
        src = work / f"mosaic_{size}"
        src.mkdir()
        t = time.perf_counter()
        write_mosaic(src / f"mosaic_{size}.tif", size, patches)
        t_write = time.perf_counter() - t
        out = work / f"out_{size}"
        r = _child(
            ["classify", str(src), "--out", str(out), "--device", device, "--quiet", "--tile-size", str(tile)], warm
        )
        done = json.loads((out / f"mosaic_{size}.done.json").read_text())
        r.update(
            size=size,
            tile=tile,
            megapixels=size * size / 1e6,
            write_mosaic_s=t_write,
            cells_per_s=r["cells"] / r["wall_s"],
            tiled=bool(done["provenance"].get("tiled")),
            n_tiles=done["provenance"].get("n_tiles", 1),
            cut_nuclei=done["provenance"].get("cut_nuclei"),
            seam_conflict_pixels=done["provenance"].get("seam_conflict_pixels"),
        )
        print(
            f"  {size:>6} px: {r['cells']:>8} nuclei in {r['wall_s']:8.1f} s = {r['cells_per_s']:7.0f} cells/s, "
            f"peak RSS {r['peak_rss_mb']:6.0f} MB, {r['n_tiles']} tile(s)",
            flush=True,
        )
        rows.append(r)
        shutil.rmtree(src)
        shutil.rmtree(out)
    return rows


def dask_scan(folder: Path, n_images: int, workers_list, device: str, work: Path, patches) -> list[dict]:
    warm = _warm_argv(work, patches, device, 512)
    src = work / "patches"
    src.mkdir()
    for f in sorted(folder.glob("*.jpg"))[:n_images]:
        shutil.copy(f, src / f.name)
    rows = []
    for w in workers_list:
        out = work / f"dask_{w}"
        extra = ["--dask", "local", "--workers", str(w)] if w else []
        r = _child(
            ["classify", str(src), "--mpp", "0.5", "--out", str(out), "--device", device, "--quiet", *extra], warm
        )
        r.update(workers=w, images_per_s=r["images"] / r["wall_s"], cells_per_s=r["cells"] / r["wall_s"])
        print(
            f"  {r['executor']}: {r['images']} images, {r['cells']} nuclei in {r['wall_s']:.1f} s = "
            f"{r['images_per_s']:.2f} images/s, {r['cells_per_s']:.0f} cells/s",
            flush=True,
        )
        rows.append(r)
        shutil.rmtree(out)
    return rows


def gpu_patches(folder: Path, device: str, work: Path, mpp: float) -> dict:
    """Patches/s end to end (read, segment, measure, classify, write) over a folder."""
    out = work / "gpu_out"
    warm = work / "warm"
    warm.mkdir()
    first = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".png", ".tif"))[0]
    shutil.copy(first, warm / first.name)
    one_run(
        ["classify", str(warm), "--mpp", str(mpp), "--out", str(work / "warm_out"), "--device", device, "--quiet"]
    )  # warm-up: imports, weights, kernels
    r = one_run(["classify", str(folder), "--mpp", str(mpp), "--out", str(out), "--device", device, "--quiet"])
    r.update(patches_per_s=r["images"] / r["wall_s"], cells_per_s=r["cells"] / r["wall_s"], device=device, mpp=mpp)
    try:
        import torch

        r["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except ImportError:
        r["gpu"] = None
    print(
        f"  {r['images']} patches, {r['cells']} nuclei in {r['wall_s']:.1f} s = {r['patches_per_s']:.2f} "
        f"patches/s, {r['cells_per_s']:.0f} cells/s on {device} ({r['gpu']})",
        flush=True,
    )
    return r


def _load(r: dict) -> str:
    return f"{r['load1']:.1f}" if r.get("load1") is not None else "n/a"


def render(cpu: dict, gpu: dict | None = None) -> str:
    lines = ["## Cohort scale (command line)", ""]
    if cpu.get("sizes"):
        lines += [
            f"Image-size scan: `{cpu['command']}`; square mosaics of real 20x BRCA-M2C patches "
            f"(0.5 um/px), `napari-uam classify --tile-size T` in a fresh process each, after an "
            f"untimed warm-up run (end to end: read, segment, measure, classify, write "
            f"labels/CSV/parquet/GeoJSON; an image not larger than T runs in one piece and also "
            f"gets the tumor-region mask). Machine: {cpu['machine']}; date {cpu['date']}; device "
            f"{cpu['device']}. The machine is shared with other jobs: `load` is the 1-minute load "
            "average when the run ended (2 cores), so times are upper bounds; `peak RSS` is the "
            "process's maximum resident memory.",
            "",
            "| image | Mpx | T | tiles | nuclei | wall s | cells/s | s per Mpx | peak RSS MB | cut / seam-conflict | load |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in cpu["sizes"]:
            lines.append(
                f"| {r['size']}x{r['size']} | {r['megapixels']:.1f} | {r.get('tile', cpu['tile'])} | "
                f"{r['n_tiles']} | {r['cells']:,} | "
                f"{r['wall_s']:.1f} | {r['cells_per_s']:,.0f} | {r['wall_s'] / r['megapixels']:.2f} | "
                f"{r['peak_rss_mb']:.0f} | {r['cut_nuclei'] or 0} / {r['seam_conflict_pixels'] or 0} | "
                f"{_load(r)} |"
            )
        lines.append("")
    if cpu.get("dask"):
        lines += [
            f"Dask: the same command over {cpu['dask'][0]['images']} real BRCA-M2C patches "
            "(0.5 um/px), in this process and on a local cluster of 1 and 2 single-threaded "
            "workers (wall time includes starting the cluster).",
            "",
            "| executor | images | nuclei | wall s | images/s | cells/s | load |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in cpu["dask"]:
            lines.append(
                f"| {r['executor']} | {r['images']} | {r['cells']:,} | {r['wall_s']:.1f} | "
                f"{r['images_per_s']:.2f} | {r['cells_per_s']:,.0f} | {_load(r)} |"
            )
        lines.append("")
    if gpu:
        lines += [
            f"GPU, end to end: `{gpu['command']}` on {gpu.get('gpu')} ({gpu['machine']}, {gpu['date']}): "
            f"{gpu['images']} patches at {gpu['mpp']} um/px, {gpu['cells']:,} nuclei in {gpu['wall_s']:.1f} s = "
            f"**{gpu['patches_per_s']:.2f} patches/s** ({gpu['cells_per_s']:,.0f} cells/s), peak RSS "
            f"{gpu['peak_rss_mb']:.0f} MB.",
            "",
        ]
    elif cpu.get("sizes"):
        lines += [
            "GPU patches/s: not measured yet (command in the module docstring of `benchmarks/scaling_bench.py`).",
            "",
        ]
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(REPO.parent / "shared" / "data"))
    ap.add_argument("--sizes", default="1024,4096", help="comma-separated square sizes (e.g. 1024,4096,16384)")
    ap.add_argument("--tile", type=int, default=2048, help="--tile-size passed to the command line")
    ap.add_argument("--dask-images", type=int, default=12, help="patches for the Dask scan (0: skip)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--gpu-patches", default=None, help="folder of patches: measure patches/s end to end only")
    ap.add_argument("--mpp", type=float, default=0.25, help="pixel size of --gpu-patches")
    ap.add_argument("--json", default=None, help="write the results here")
    ap.add_argument("--render", nargs="+", default=None, help="CPU JSON [GPU JSON]: write docs only")
    ap.add_argument("--no-write", action="store_true", help="do not touch docs/performance.md")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(warm_then_run(*json.loads(args.child))))
        return 0
    if args.render:
        cpu = json.loads(Path(args.render[0]).read_text())
        gpu = json.loads(Path(args.render[1]).read_text()) if len(args.render) > 1 else None
        md = render(cpu, gpu)
        print(md)
        write_section("scaling", md)
        return 0

    command = "python benchmarks/scaling_bench.py " + " ".join(argv if argv is not None else sys.argv[1:])
    with tempfile.TemporaryDirectory(prefix="uam_scaling_") as d:
        work = Path(d)
        if args.gpu_patches:
            res = gpu_patches(Path(args.gpu_patches), args.device, work, args.mpp)
            res.update(command=command, machine=machine(), date=today())
        else:
            brca = Path(args.data) / "brca_m2c" / "val"
            res = {
                "command": command,
                "machine": machine(),
                "date": today(),
                "device": args.device,
                "tile": args.tile,
                "sizes": [],
                "dask": [],
            }
            sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
            patches = _patches(brca, 24)
            if sizes:
                print("image-size scan")
                res["sizes"] = size_scan(sizes, patches, args.tile, args.device, work)
            if args.dask_images:
                print("Dask workers")
                res["dask"] = dask_scan(brca, args.dask_images, [0, 1, 2], args.device, work, patches)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2) + "\n")
    if not args.no_write and not args.gpu_patches:
        md = render(res)
        print(md)
        write_section("scaling", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
