"""Benchmark of per-cell radiomics: pyradiomics (naive, best effort) vs the fast engine.

Usage:
    python benchmarks/radiomics_bench.py [--data DIR] [--quick] [--device cuda] [--json OUT]
    python benchmarks/radiomics_bench.py --device cuda --profile 64   # torch profiler table
    python benchmarks/radiomics_bench.py --device cuda --cold-start   # first call in new processes

Rows whose tool is missing are skipped with a note (pyradiomics / SimpleITK on the GPU
machine). CPU rows are medians of 5 repeats (1 thread, 2 threads, 2 processes); the CUDA rows
time one call on 1 patch and on a batch of 64 patches after 2 warm-up calls, synchronising
the GPU around each timed call.

``--data`` is a folder with CoNSeP's layout (``train_N.jpg`` + ``train_N_inst.png`` at
0.25 um/px); by default ``../shared/data/consep``. Patches are resampled to the schema's
0.5 um/px. Prints a table and writes it, with machine and date, to ``docs/performance.md``
between the ``<!-- radiomics:start -->`` / ``<!-- radiomics:end -->`` markers (other sections
of that file are left alone).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/

from napari_uam.radiomics import DEFAULT_SCHEMA as SCHEMA  # noqa: E402
from napari_uam.radiomics.fast_backend import extract_batch  # noqa: E402
from napari_uam.radiomics.pyradiomics_backend import extract_pyradiomics  # noqa: E402  (lazy import)
from napari_uam.radiomics.schema import channel_lut, to_channel  # noqa: E402
from napari_uam.scale import rescale_image, resize_labels  # noqa: E402

START, END = "<!-- radiomics:start -->", "<!-- radiomics:end -->"
KEEP, KEEP_END = "<!-- radiomics:keep -->", "<!-- radiomics:keep-end -->"


def load_patches(data: Path, n: int, native: bool = False):
    """Up to ``n`` (image, labels) pairs, resampled to the schema's mpp unless ``native``."""
    from PIL import Image

    files = sorted(data.glob("*_inst.png"), key=lambda p: p.name)[:n]
    out = []
    for f in files:
        img = np.asarray(Image.open(str(f).replace("_inst.png", ".jpg")).convert("RGB"))
        lab = np.asarray(Image.open(f)).astype(np.int32)
        if not native:
            img = rescale_image(img, 0.25 / SCHEMA.mpp)
            lab = resize_labels(lab, img.shape[:2])
        out.append((img, np.ascontiguousarray(lab)))
    if not out:
        raise SystemExit(f"no *_inst.png patches found in {data}")
    return out


def n_cells(lab) -> int:
    return int(np.count_nonzero(np.unique(lab)))


def bench_naive(img, lab, max_cells: int) -> float:
    """pyradiomics as usually called: whole image, one ``execute(label=...)`` per cell."""
    import SimpleITK as sitk
    from radiomics import featureextractor, setVerbosity

    setVerbosity(50)
    ext = featureextractor.RadiomicsFeatureExtractor(
        **{k: v for k, v in SCHEMA.pyradiomics_settings.items() if k != "label"}
    )
    ext.settings["minimumROIDimensions"] = 1
    ext.disableAllFeatures()
    for fam in SCHEMA.family_features:
        ext.enableFeatureClassByName(fam)
    image = sitk.GetImageFromArray(to_channel(img, "hematoxylin")[None].astype(np.float64))
    image.SetSpacing((SCHEMA.mpp, SCHEMA.mpp, 1.0))
    mask = sitk.GetImageFromArray(lab[None].astype(np.int32))
    mask.CopyInformation(image)
    ids = np.unique(lab)[1:]
    ids = ids[np.bincount(lab.ravel())[ids] >= 4][:max_cells]
    t = time.perf_counter()
    for i in ids:
        ext.execute(image, mask, label=int(i))
    return len(ids) / (time.perf_counter() - t)


def bench_best(img, lab, workers: int) -> float:
    t = time.perf_counter()
    ids, _ = extract_pyradiomics(img, lab, SCHEMA, workers=workers)
    return len(ids) / (time.perf_counter() - t)


def _fast_worker(args):
    imgs, labs = args
    os.environ["OMP_NUM_THREADS"] = "1"
    extract_batch(imgs, labs, SCHEMA, "numpy")
    return sum(n_cells(lb) for lb in labs)


def bench_fast_cpu(patches, workers: int, repeat: int = 5, threads: bool = False):
    """(median cells/s, list of rates) of the NumPy engine, one patch per call, over
    ``workers`` processes (or threads of this process when ``threads``)."""
    from concurrent.futures import ThreadPoolExecutor

    cells = sum(n_cells(lb) for _, lb in patches)
    jobs = [([im], [lb]) for im, lb in patches]
    rates = []
    if workers == 1:
        _fast_worker(jobs[0])  # warm-up (lookup table, imports, line orders)
        for _ in range(repeat):
            t = time.perf_counter()
            for job in jobs:
                _fast_worker(job)
            rates.append(cells / (time.perf_counter() - t))
        return float(np.median(rates)), rates
    if threads:
        pool = ThreadPoolExecutor(max_workers=workers)
    else:
        pool = ProcessPoolExecutor(max_workers=workers, initializer=channel_lut, initargs=("hematoxylin",))
    with pool:
        list(pool.map(_fast_worker, jobs))  # warm-up
        for _ in range(repeat):
            t = time.perf_counter()
            list(pool.map(_fast_worker, jobs))
            rates.append(cells / (time.perf_counter() - t))
    return float(np.median(rates)), rates


def have_pyradiomics() -> bool:
    import importlib.util

    return all(importlib.util.find_spec(m) is not None for m in ("radiomics", "SimpleITK"))


def bench_torch(patches, batch: int, device: str = "cuda", repeat: int = 5, kernels=None, resident: bool = False):
    """(median cells/s, cells, median s) of the GPU engine on ``batch`` patches in one call
    (patches cycled), after 2 warm-up calls, synchronising the GPU around each timed call.

    ``kernels``: extract_batch's ``cuda_kernels`` (True: per-cell CUDA kernels, False: pure
    torch). ``resident``: the patches are torch tensors already on the device (no upload).
    """
    import torch

    imgs = [patches[k % len(patches)][0] for k in range(batch)]
    labs = [patches[k % len(patches)][1] for k in range(batch)]
    cells = sum(n_cells(lb) for lb in labs)
    if resident:
        imgs = [torch.from_numpy(a).to(device) for a in imgs]
        labs = [torch.from_numpy(a).to(device) for a in labs]
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    for _ in range(2):  # warm-up: lookup table upload, kernels, allocator
        extract_batch(imgs, labs, SCHEMA, device, cuda_kernels=kernels)
    times = []
    for _ in range(repeat):
        sync()
        t = time.perf_counter()
        extract_batch(imgs, labs, SCHEMA, device, cuda_kernels=kernels)
        sync()
        times.append(time.perf_counter() - t)
    sec = float(np.median(times))
    return cells / sec, cells, sec


def profile_torch(patches, batch: int, device: str) -> None:
    """torch.profiler table (top ops by device time, then by CPU time) of one warm batched call."""
    import torch
    from torch.profiler import ProfilerActivity, profile, record_function

    import functools

    from napari_uam.radiomics import _shape, _texture
    from napari_uam.radiomics import fast_backend as fb

    def labelled(mod, name):  # a profiler range per engine stage (per-family device time)
        f = getattr(mod, name)

        @functools.wraps(f)
        def g(*a, **k):
            with record_function(f"stage:{name}"):
                return f(*a, **k)

        setattr(mod, name, g)

    for name in (
        "glcm",
        "_mcc",
        "glrlm_pixels",
        "glszm_roots",
        "first_order",
        "neighbour_stats",
        "gldm",
        "ngtdm",
        "angle_pairs",
    ):
        labelled(_texture, name)
    labelled(_shape, "shape_features")
    labelled(fb, "_stack")
    labelled(fb, "_zones_torch")
    imgs = [patches[k % len(patches)][0] for k in range(batch)]
    labs = [patches[k % len(patches)][1] for k in range(batch)]
    for _ in range(2):
        extract_batch(imgs, labs, SCHEMA, device)
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.startswith("cuda") else [])
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)
    sync()
    t = time.perf_counter()
    with profile(activities=acts) as prof:
        with record_function("extract_batch"):
            extract_batch(imgs, labs, SCHEMA, device)
        sync()
    print(f"{batch} patches, {sum(n_cells(lb) for lb in labs)} cells: {time.perf_counter() - t:.3f} s (profiled)")
    key = "cuda_time_total" if device.startswith("cuda") else "cpu_time_total"
    # Launch / sync proxies: kernel launches (CUDA runtime calls, or non-view aten ops on the
    # CPU) and the ops that read a device value back to the host.
    ka = prof.key_averages()
    launches = sum(e.count for e in ka if e.key in ("cudaLaunchKernel", "cuLaunchKernel", "cudaLaunchKernelExC"))
    syncs = sum(
        e.count for e in ka if e.key in ("cudaStreamSynchronize", "cudaDeviceSynchronize", "cudaEventSynchronize")
    )
    memcpy = sum(e.count for e in ka if e.key in ("cudaMemcpyAsync", "cudaMemcpy"))
    readback = sum(
        e.count
        for e in ka
        if e.key
        in ("aten::_local_scalar_dense", "aten::nonzero", "aten::_unique2", "aten::repeat_interleave", "aten::_to_copy")
    )
    # aten ops called from Python (not from inside another aten op): the CPU-side proxy
    top_ops = sum(
        1
        for e in prof.events()
        if e.name.startswith("aten::") and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::"))
    )
    print(
        f"kernel launches {launches}, stream/device syncs {syncs}, memcpys {memcpy}, "
        f"top-level aten ops {top_ops}, read-back-type ops {readback}"
    )
    for e in sorted((e for e in ka if e.key.startswith("stage:")), key=lambda e: -e.device_time_total):
        print(f"  {e.key:28s} device {e.device_time_total / 1e3:8.2f} ms   cpu {e.cpu_time_total / 1e3:8.2f} ms")
    print(prof.key_averages().table(sort_by=key, row_limit=25))
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))


_COLD = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {src!r}); sys.path.insert(0, {bench!r})
from radiomics_bench import load_patches
from napari_uam.radiomics.fast_backend import extract_batch
from napari_uam.radiomics.schema import DEFAULT_SCHEMA
from pathlib import Path
[(img, lab)] = load_patches(Path({data!r}), 1)
t1 = time.perf_counter()
extract_batch([img], [lab], DEFAULT_SCHEMA, {device!r})
t2 = time.perf_counter()
extract_batch([img], [lab], DEFAULT_SCHEMA, {device!r})
t3 = time.perf_counter()
print(f"{{t1 - t0:.2f}} {{t2 - t1:.2f}} {{t3 - t2:.3f}}")
"""


def cold_start(data: Path, device: str, runs: int = 3) -> None:
    """Seconds of the first and second call on one patch in fresh processes sharing an empty
    numba cache directory: the first process compiles the kernels, the later ones load them."""
    import tempfile

    here = Path(__file__).resolve().parent
    code = _COLD.format(src=str(REPO / "src"), bench=str(here), data=str(data), device=device)
    with tempfile.TemporaryDirectory() as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache}
        print("| process | imports + data (s) | first call (s) | second call (s) |\n|---|---:|---:|---:|")
        for k in range(runs):
            out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
            a, b, c = out.stdout.split()[-3:]
            print(
                f"| {f'{k + 1}' + (' (empty cache)' if k == 0 else ' (cache filled)')} | {a} | {b} | {c} |", flush=True
            )


def _resolved(stacked):
    """``_stack``'s output with its deferred colour upload (host inputs) queued."""
    if callable(stacked[0]):
        stacked[0]()
    return stacked


def stack_phases(patches, batch: int = 64, device: str = "cuda", repeat: int = 5) -> None:
    """Host time of the batch preparation (``_stack``: padding, upload, relabelling) with host
    and with device inputs, and its host-input phases timed one by one with syncs (same steps
    as ``_stack``'s host branch: threaded copies into the page-locked buffers and the upload,
    labels then colours, the relabelling; ``_stack`` itself overlaps the colours' copy with
    the relabelling)."""
    import torch

    from napari_uam.radiomics import fast_backend as fb

    imgs = [patches[k % len(patches)][0] for k in range(batch)]
    labs = [patches[k % len(patches)][1] for k in range(batch)]
    xp = fb.make_ops(device)
    nb, h, w = batch, max(i.shape[0] for i in imgs) + 2, max(i.shape[1] for i in imgs) + 2

    def timed(f):
        out = []
        for _ in range(repeat + 2):
            torch.cuda.synchronize()
            t = time.perf_counter()
            f()
            torch.cuda.synchronize()
            out.append(time.perf_counter() - t)
        return np.median(out[2:]) * 1e3

    def phases():
        ms = {}
        t = time.perf_counter()
        rgb_h = fb._staging(xp, "rgb", (nb, h, w, 3), np.uint8)
        lab_h = fb._staging(xp, "lab", (nb, h, w), np.int32)
        pool, n_threads = fb._copy_pool(), fb._POOL[1]
        parts = [range(k, nb, n_threads) for k in range(min(nb, n_threads))]
        uploaded = {}
        for name, buf, arrays in (("lab", lab_h, labs), ("rgb", rgb_h, imgs)):
            for j in [pool.submit(fb._pad_all, buf, arrays, part) for part in parts]:
                j.result()
            ms[f"{name}: threaded copies"] = time.perf_counter() - t
            t = time.perf_counter()
            uploaded[name] = fb._upload(xp, buf.reshape((-1, 3) if name == "rgb" else (-1,)))
            fb._staging_done(xp, name)
            torch.cuda.synchronize()
            ms[f"{name}: upload"] = time.perf_counter() - t
            t = time.perf_counter()
        t_lab, t_rgb = uploaded["lab"], uploaded["rgb"]
        top = int(t_lab.max().item()) + 1
        lab = t_lab.to(torch.int64)
        key = (torch.arange(lab.shape[0], device=lab.device) // (h * w)) * top + lab
        present = torch.zeros(nb * top, dtype=torch.bool, device=lab.device)
        present[key[lab > 0]] = True
        rank = torch.cumsum(present.to(torch.int64), 0)
        _ = rank[key], torch.nonzero(present).cpu(), t_rgb
        torch.cuda.synchronize()
        ms["relabelling"] = time.perf_counter() - t
        return ms

    for _ in range(2):
        phases()
    rows = [phases() for _ in range(repeat)]
    for k in rows[0]:
        print(f"  {k:28s} {np.median([r[k] for r in rows]) * 1e3:7.2f} ms", flush=True)
    dev_imgs = [torch.from_numpy(a).to(device) for a in imgs]
    dev_labs = [torch.from_numpy(a).to(device) for a in labs]
    print(
        f"  _stack, host inputs           {timed(lambda: _resolved(fb._stack(xp, imgs, labs, pack=False))):7.2f} ms",
        flush=True,
    )
    print(
        f"  _stack, inputs on the device  {timed(lambda: fb._stack(xp, dev_imgs, dev_labs, pack=False)):7.2f} ms",
        flush=True,
    )


_RSS_CHILD = r"""
import resource, sys, time, numpy as np
sys.path.insert(0, {src!r})
from napari_uam.radiomics.fast_backend import extract_batch
from napari_uam.radiomics import DEFAULT_SCHEMA
d = np.load({npz!r})
img, lab = d["img"], d["lab"]
t = time.perf_counter()
[(ids, v)] = extract_batch([img], [lab], DEFAULT_SCHEMA, "numpy")
el = time.perf_counter() - t
print(len(ids), el, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def bench_memory(data: Path, side: int = 4096):
    """Peak RSS (MB) of the NumPy engine on a ``side``^2 patch tiled from native CoNSeP tiles."""
    import tempfile

    tiles = load_patches(data, 16, native=True)
    img = np.full((side, side, 3), 255, np.uint8)
    lab = np.zeros((side, side), np.int32)
    k, offset = 0, 0
    step = tiles[0][0].shape[0]
    for y in range(0, side - step + 1, step):
        for x in range(0, side - step + 1, step):
            ti, tl = tiles[k % len(tiles)]
            img[y : y + step, x : x + step] = ti
            lab[y : y + step, x : x + step] = np.where(tl > 0, tl + offset, 0)
            offset += int(tl.max())
            k += 1
    with tempfile.TemporaryDirectory() as tmp:
        npz = str(Path(tmp) / "big.npz")
        np.savez(npz, img=img, lab=lab)
        del img, lab
        code = _RSS_CHILD.format(src=str(REPO / "src"), npz=npz)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    cells, seconds, rss = out.stdout.split()
    return int(cells), float(seconds), float(rss)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    gpu = ""
    try:
        import torch

        if torch.cuda.is_available():
            gpu = f", GPU {torch.cuda.get_device_name(0)}"
    except ImportError:
        pass
    return f"{cpu}, {os.cpu_count()} cores{gpu}, Python {platform.python_version()}"


def write_docs(table: str, meta: dict) -> None:
    path = REPO / "docs" / "performance.md"
    text = path.read_text() if path.exists() else "# Performance\n"
    body = (
        f"{START}\n## Radiomics\n\n"
        f"Measured {meta['date']} on {meta['machine']} with `benchmarks/radiomics_bench.py"
        f"{meta['args']}` (schema `{SCHEMA.schema_id}`, {SCHEMA.n_features} features, "
        f"{meta['n_patches']} CoNSeP patches at {SCHEMA.mpp} um/px, {meta['cells']} cells; "
        f"1-min load average {meta['load'][0]:.1f} before / {meta['load'][1]:.1f} after on this shared "
        "machine, so CPU rows are medians of repeats and still noisy).\n\n"
        f"{table}\n\nTargets: fast CPU >= 100x pyradiomics best effort on 2 cores (>= 16,000 "
        "cells/s); CUDA >= 1,000,000 cells/s on an H100 (batched); peak RSS < 2 GB on a "
        "4096x4096 patch.\n"
        f"{END}"
    )
    # Hand-written text between KEEP and KEEP_END (rows measured on a machine this run may not
    # have, e.g. the CUDA ones, and the history) is carried over into the new section.
    if START in text and END in text:
        old = text[text.index(START) : text.index(END)]
        if KEEP in old and KEEP_END in old:
            kept = old[old.index(KEEP) : old.index(KEEP_END) + len(KEEP_END)]
            body = body.replace("\n\nTargets:", "\n\n" + kept + "\n\nTargets:", 1)
        text = text[: text.index(START)] + body + text[text.index(END) + len(END) :]
    else:
        text = text.rstrip("\n") + "\n\n" + body + "\n"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "consep")
    ap.add_argument("--quick", action="store_true", help="4 patches, no pyradiomics naive, no memory run")
    ap.add_argument("--device", default="cpu", help="'cuda' adds the CUDA rows ('torch-cpu': same rows on torch CPU)")
    ap.add_argument("--json", type=Path, help="also write the results as JSON here")
    ap.add_argument("--no-docs", action="store_true", help="do not update docs/performance.md")
    ap.add_argument(
        "--cold-start",
        action="store_true",
        help="first-call seconds in new processes (empty, then filled numba cache); no docs written",
    )
    ap.add_argument(
        "--stack-phases",
        action="store_true",
        help="only time the batch preparation of 64 patches on --device (host vs device inputs)",
    )
    ap.add_argument(
        "--profile",
        type=int,
        default=0,
        metavar="BATCH",
        help="only profile the torch engine (--device) on BATCH patches and print the top ops",
    )
    args = ap.parse_args(argv)
    warnings.filterwarnings("ignore")
    if args.stack_phases:
        return stack_phases(load_patches(args.data, 4), 64, args.device)
    if args.cold_start:
        return cold_start(args.data, args.device)
    if args.profile:
        return profile_torch(
            load_patches(args.data, 4), args.profile, "cpu" if args.device == "torch-cpu" else args.device
        )

    load_before = os.getloadavg()[0]
    patches = load_patches(args.data, 4 if args.quick else 8)
    cells = sum(n_cells(lb) for _, lb in patches)
    rows = []

    def add(name, rate, note=""):
        rows.append({"engine": name, "cells_per_s": rate, "note": note})
        print(f"{name:<44} {rate:>12,.0f} cells/s  {note}", flush=True)

    img0, lab0 = patches[0]
    best = None
    if have_pyradiomics():
        if not args.quick:
            add("pyradiomics naive (full image, label=)", bench_naive(img0, lab0, 20), "20 cells, 1 process")
        # Best effort on a crop of the first patch (a few hundred cells) to keep the run short.
        crop = (img0[:250, :250].copy(), np.ascontiguousarray(lab0[:250, :250]))
        best = bench_best(*crop, workers=2)
        add("pyradiomics best effort (crop, 2 procs)", best, f"{n_cells(crop[1])} cells")
    else:
        print("pyradiomics / SimpleITK not installed: skipping the pyradiomics rows", flush=True)

    def spread(rates):
        return f"median of {len(rates)}, range {min(rates):,.0f}-{max(rates):,.0f}"

    fast1, r1 = bench_fast_cpu(patches, 1)
    add("fast NumPy CPU, 1 thread", fast1, f"{len(patches)} patches, one per call; {spread(r1)}")
    fast2t, r2t = bench_fast_cpu(patches, 2, threads=True)
    add("fast NumPy CPU, 2 threads", fast2t, f"one patch per thread call; {spread(r2t)}")
    fast2, r2 = bench_fast_cpu(patches, 2)
    vs = f"; {fast2 / best:.0f}x pyradiomics best effort" if best else ""
    add("fast NumPy CPU, 2 processes", fast2, f"one patch per call; {spread(r2)}{vs}")
    if args.device.startswith("cuda") or args.device == "torch-cpu":
        dev = "cpu" if args.device == "torch-cpu" else args.device
        from napari_uam.radiomics import _cuda

        engines = [("torch", False, False)]
        if dev.startswith("cuda") and _cuda.available():  # the per-cell CUDA kernels (numba-cuda)
            engines = [("CUDA kernels", True, False), ("CUDA kernels, inputs on the GPU", True, True)] + engines
        for label, kernels, resident in engines:
            for batch in (1, 64):
                rate, c, sec = bench_torch(patches, batch, dev, kernels=kernels, resident=resident)
                add(
                    f"fast {label} {dev.upper() if label == 'torch' else ''}".replace("  ", " ").strip()
                    + f", {'1 patch' if batch == 1 else f'batch of {batch} patches'}",
                    rate,
                    f"float64, {c} cells in {sec * 1e3:.1f} ms (median of 5)",
                )
    mem = None
    if not args.quick:
        c, s, rss = bench_memory(args.data)
        mem = {"cells": c, "seconds": s, "peak_rss_mb": rss}
        print(f"memory: 4096x4096 patch, {c} cells: {s:.1f} s, peak RSS {rss:,.0f} MB", flush=True)

    table = "| engine | cells/s | note |\n|---|---:|---|\n" + "\n".join(
        f"| {r['engine']} | {r['cells_per_s']:,.0f} | {r['note']} |" for r in rows
    )
    if mem:
        table += (
            f"\n\nPeak RSS of the fast NumPy engine on a 4096x4096 patch tiled from CoNSeP "
            f"({mem['cells']} nuclei): {mem['peak_rss_mb']:,.0f} MB, {mem['seconds']:.1f} s."
        )
    meta = {
        "date": dt.date.today().isoformat(),
        "machine": machine(),
        "args": (" " + " ".join(argv if argv is not None else sys.argv[1:])).rstrip(),
        "n_patches": len(patches),
        "cells": cells,
        "load": (load_before, os.getloadavg()[0]),
    }
    print(table)
    if not args.no_docs:
        write_docs(table, meta)
    if args.json:
        args.json.write_text(json.dumps({**meta, "schema": SCHEMA.schema_id, "rows": rows, "memory": mem}, indent=2))


if __name__ == "__main__":
    main()
