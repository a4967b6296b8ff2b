"""Inference and training speed of the cell classifiers (UAM by default).

    PYTHONPATH=src python benchmarks/model_bench.py --json runs/model_bench.json \
        --md docs/performance.md [--tables .gpu_data] [--checkpoint path]

Measures, on the machine it runs on:

* CPU inference, cells/s, with 2 torch threads (the plugin's typical laptop budget), torch SSM
  backend, fp32;
* CUDA inference (when a GPU is visible), cells/s, for each available SSM backend
  (``torch``, ``mamba_ssm``), fp32 and bf16 autocast, large batches; also
  ``torch.compile`` of the torch backend;
* training time per epoch over all cells of the cell tables (batch 64, AdamW), extrapolated
  from timed steps, on the CPU and on CUDA per backend.

Inputs are real normalised cells when ``--tables`` holds the parquet tables (else random
normal features, which cost the same). Writes JSON and the "models" section of
docs/performance.md (between ``<!-- models:start -->`` and ``<!-- models:end -->``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/

MARKERS = ("<!-- models:start -->", "<!-- models:end -->")


def _sync(device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def _features(tables: Path | None, n_features: int, n: int, normalizer=None, names=None) -> np.ndarray:
    if tables is not None and any(Path(tables).glob("*.parquet")) and normalizer is not None:
        import pandas as pd

        df = pd.concat([pd.read_parquet(p) for p in sorted(Path(tables).glob("*.parquet"))], ignore_index=True)
        x = normalizer.transform(df[names].to_numpy(np.float64))
        reps = int(np.ceil(n / len(x)))
        return np.tile(x, (reps, 1))[:n]
    return np.random.default_rng(0).standard_normal((n, n_features)).astype(np.float32)


def n_table_cells(tables: Path | None) -> int:
    if tables is None:
        return 0
    import pyarrow.parquet as pq

    return sum(pq.ParquetFile(p).metadata.num_rows for p in Path(tables).glob("*.parquet"))


def bench_inference(
    model, x: torch.Tensor, batch: int, device: str, dtype=None, repeats: int = 3, min_seconds: float = 1.0
) -> float:
    """Cells per second of ``model`` over ``x`` (already on ``device``) in batches."""
    model.eval()

    def run():
        with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=dtype, enabled=dtype is not None):
            for lo in range(0, len(x), batch):
                model(x[lo : lo + batch])

    run()  # warm-up (kernels, autotune, compile)
    _sync(device)
    best = 0.0
    for _ in range(repeats):
        t0, n = time.perf_counter(), 0
        while True:
            run()
            _sync(device)
            n += len(x)
            if time.perf_counter() - t0 >= min_seconds:
                break
        best = max(best, n / (time.perf_counter() - t0))
    return best


def bench_train_epoch(
    arch_cfg: dict, n_features: int, x: torch.Tensor, device: str, n_cells: int, steps: int = 40, batch: int = 64
) -> float:
    """Seconds per training epoch over ``n_cells`` cells (timed ``steps`` steps, extrapolated)."""
    import torch.nn.functional as F

    from napari_uam.models import build_model

    torch.manual_seed(0)
    model = build_model(arch_cfg["arch"], n_features, 2, **arch_cfg["config"]).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    y = torch.randint(0, 2, (len(x),), device=device)

    def step(i):
        lo = (i * batch) % (len(x) - batch)
        loss = F.cross_entropy(model(x[lo : lo + batch]), y[lo : lo + batch]) + 0.01 * model.aux_loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(5):
        step(i)
    _sync(device)
    t0 = time.perf_counter()
    for i in range(steps):
        step(i)
    _sync(device)
    per_step = (time.perf_counter() - t0) / steps
    return per_step * int(np.ceil(n_cells / batch))


def run(args) -> dict:
    from napari_uam.models import build_model, count_parameters, set_ssm_backend
    from napari_uam.models.ops import mamba_ssm_available
    from napari_uam.classify.checkpoint import build_from_checkpoint, default_weights_path, read_checkpoint
    from napari_uam.classify.normalize import Normalizer

    torch.set_flush_denormal(True)
    ckpt_path = Path(args.checkpoint or default_weights_path())
    ck, normalizer, names = None, None, None
    if ckpt_path.is_file():
        ck = read_checkpoint(ckpt_path)
        normalizer, names = Normalizer.from_dict(ck["normalization"]), ck["feature_names"]
    if ck is not None and (args.checkpoint or ck["arch"] == args.arch):
        source = f"checkpoint {ckpt_path.name} ({ck['arch']})"
    else:
        # Speed does not depend on the weights' values: a freshly built model of the same size.
        source = f"{args.arch} with the default config (inputs: real cells normalised by the shipped checkpoint)"
        ck = None
    base = build_from_checkpoint(ck) if ck is not None else build_model(args.arch, 102, 2)
    n_features = base.config["n_features"]
    cfg = {k: v for k, v in base.config.items() if k not in ("n_features", "n_classes")}
    arch_cfg = {"arch": base.name, "config": cfg}
    tables = Path(args.tables) if args.tables else None
    n_cells = n_table_cells(tables) or 34175
    res = {
        "model": source, "arch": base.name, "parameters": count_parameters(base),
        "epoch_cells": n_cells, "torch": torch.__version__, "python": platform.python_version(),
        "cpu": f"{platform.machine()}, {os.cpu_count()} cores", "results": [],
    }  # fmt: skip

    def add(**row):
        res["results"].append(row)
        print(json.dumps(row), flush=True)

    # CPU, 2 threads, torch backend.
    torch.set_num_threads(args.cpu_threads)
    x_cpu = torch.from_numpy(_features(tables, n_features, args.cpu_cells, normalizer, names))
    model = build_from_checkpoint(ck) if ck is not None else base
    for scan, batches in (("recurrent", (1024, 4096)), ("parallel", (4096,))):
        set_ssm_backend(model, "torch", scan)
        for batch in batches:
            add(
                device="cpu",
                threads=args.cpu_threads,
                backend=f"torch ({scan} scan)",
                dtype="fp32",
                batch=batch,
                cells_per_s=bench_inference(model, x_cpu, batch, "cpu", repeats=2),
            )
    torch.set_num_threads(1)
    add(
        device="cpu",
        threads=1,
        backend="torch (recurrent scan)",
        what="train_epoch_s",
        batch=64,
        seconds=bench_train_epoch(
            {**arch_cfg, "config": {**cfg, "backend": "torch"}}, n_features, x_cpu, "cpu", n_cells, steps=20
        ),
    )
    torch.set_num_threads(args.cpu_threads)

    if torch.cuda.is_available():
        res["gpu"] = torch.cuda.get_device_name(0)
        torch.backends.cuda.matmul.allow_tf32 = True
        x_gpu = torch.from_numpy(_features(tables, n_features, args.gpu_cells, normalizer, names)).cuda()
        backends = ["torch (parallel scan)"] + (["mamba_ssm"] if mamba_ssm_available() else [])
        res["mamba_ssm"] = "mamba_ssm" in backends
        for backend in backends:
            m = set_ssm_backend(
                build_from_checkpoint(ck) if ck is not None else build_model(base.name, n_features, 2),
                backend.split()[0],
            ).cuda()
            for dtype, name in ((None, "fp32"), (torch.bfloat16, "bf16")):
                for batch in (16384, 65536, 262144):
                    try:
                        cps = bench_inference(m, x_gpu, batch, "cuda", dtype)
                    except torch.OutOfMemoryError:
                        torch.cuda.empty_cache()
                        continue
                    add(device="cuda", backend=backend, dtype=name, batch=batch, cells_per_s=cps)
            add(
                device="cuda",
                backend=backend,
                what="train_epoch_s",
                batch=64,
                seconds=bench_train_epoch(
                    {**arch_cfg, "config": {**cfg, "backend": backend.split()[0]}},
                    n_features,
                    x_gpu,
                    "cuda",
                    n_cells,
                    steps=60,
                ),
            )
        if not args.no_compile:
            # torch.compile fuses the scan's elementwise chain (the torch backend's cost).
            m = set_ssm_backend(
                build_from_checkpoint(ck) if ck is not None else build_model(base.name, n_features, 2), "torch"
            ).cuda()
            try:
                mc = torch.compile(m, dynamic=False)
                for dtype, name in ((None, "fp32"), (torch.bfloat16, "bf16")):
                    add(
                        device="cuda",
                        backend="torch+compile",
                        dtype=name,
                        batch=65536,
                        cells_per_s=bench_inference(mc, x_gpu, 65536, "cuda", dtype),
                    )
            except Exception as err:  # noqa: BLE001 (report, do not fail the benchmark)
                add(device="cuda", backend="torch+compile", error=f"{type(err).__name__}: {str(err)[:200]}")
    return res


def markdown(res: dict) -> str:
    lines = [
        MARKERS[0],
        f"## Cell classifier speed ({res['arch']})",
        "",
        f"Generated by `benchmarks/model_bench.py` ({res['model']}, {res['parameters']:,} weights; "
        f"torch {res['torch']}; CPU {res['cpu']}"
        + (f"; GPU {res['gpu']}" if res.get("gpu") else "; no GPU")
        + "). Inference = forward + softmax of normalised features already in memory; best of repeats."
        + (f" {res['note']}" if res.get("note") else ""),
        "",
        "| device | SSM backend | precision | batch | cells/s |",
        "|---|---|---|---|---|",
    ]
    for r in res["results"]:
        if "cells_per_s" in r:
            dev = r["device"] + (f" ({r['threads']} threads)" if "threads" in r else "")
            lines.append(f"| {dev} | {r['backend']} | {r['dtype']} | {r['batch']:,} | {r['cells_per_s']:,.0f} |")
        elif "error" in r:
            lines.append(f"| {r['device']} | {r['backend']} | - | - | failed: {r['error']} |")
    lines += [
        "",
        f"Training time per epoch over all {res['epoch_cells']:,} labelled cells (batch 64, AdamW; "
        "timed steps extrapolated):",
        "",
        "| device | SSM backend | s / epoch |",
        "|---|---|---|",
    ]
    for r in res["results"]:
        if r.get("what") == "train_epoch_s":
            dev = r["device"] + (f" ({r['threads']} thread)" if "threads" in r else "")
            lines.append(f"| {dev} | {r['backend']} | {r['seconds']:.1f} |")
    gpu = [r["cells_per_s"] for r in res["results"] if r.get("device") == "cuda" and "cells_per_s" in r]
    if gpu:
        best = max(gpu)
        lines += [
            "",
            f"Best CUDA throughput: {best:,.0f} cells/s (target 1,000,000: {'met' if best >= 1e6 else 'not met'}).",
        ]
    if res.get("gpu") and not res.get("mamba_ssm"):
        lines += ["", "mamba_ssm was not importable on the GPU machine: only the torch backend was measured."]
    lines += ["", MARKERS[1]]
    return "\n".join(lines)


def write_section(path: Path, body: str) -> None:
    """Replace the models section of ``path`` (create the file if absent; keep other sections)."""
    from research.sections import replace_section

    replace_section(path, body, MARKERS, "# Performance")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description="Inference / training speed of the cell classifier.")
    p.add_argument("--checkpoint", default=None, help="measure this checkpoint's model instead of --arch")
    p.add_argument("--arch", default="uam", help="architecture to measure (default uam)")
    p.add_argument("--tables", default=None, help="folder of cell-table parquet files (real inputs)")
    p.add_argument("--cpu-threads", type=int, default=2)
    p.add_argument("--cpu-cells", type=int, default=8192)
    p.add_argument("--gpu-cells", type=int, default=1 << 20)
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--note", default=None, help="sentence added to the markdown (e.g. machine load)")
    p.add_argument("--json", default=None)
    p.add_argument("--md", default=None, help="markdown file whose models section is replaced")
    p.add_argument(
        "--from-json",
        nargs="+",
        default=None,
        help="only render the markdown section from JSON reports (e.g. this machine's and a GPU machine's), in order",
    )
    a = p.parse_args(argv)
    if a.from_json:
        reports = [json.loads(Path(f).read_text()) for f in a.from_json]
        body = "\n\n".join(markdown(r) for r in reports)
        body = (
            MARKERS[0] + "\n" + body.replace(MARKERS[0] + "\n", "").replace("\n" + MARKERS[1], "") + "\n" + MARKERS[1]
        )
        if a.md:
            write_section(Path(a.md), body)
        print(body)
        return 0
    res = run(a)
    if a.note:
        res["note"] = a.note
    if a.json:
        Path(a.json).parent.mkdir(parents=True, exist_ok=True)
        Path(a.json).write_text(json.dumps(res, indent=1))
    if a.md:
        write_section(Path(a.md), markdown(res))
    print(markdown(res))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
