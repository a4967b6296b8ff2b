"""Time the end-to-end pipeline per stage on a 1000x1000 CoNSeP image (40x, 0.25 um/px).

    python benchmarks/pipeline_bench.py [--data ../shared/data] [--repeats 3] [--threads 2]
    python benchmarks/pipeline_bench.py --device cuda --first-run   # one-time costs, new processes

Prints a table and writes the ``pipeline`` section of docs/performance.md (``--first-run``:
prints only).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import machine, today, write_section  # noqa: E402


_FIRST = """
import sys, time
t0 = time.perf_counter()
sys.path.insert(0, {src!r})
import torch
torch.set_num_threads({threads})
from napari_uam import pipeline
from napari_uam.io import read_image
image, _ = read_image({path!r})
t1 = time.perf_counter()
warm = pipeline.warm_up({device!r})["seconds"] if {warm} else 0.0
t2 = time.perf_counter()
pipeline.run(image, {mpp}, device={device!r})
t3 = time.perf_counter()
pipeline.run(image, {mpp}, device={device!r})
t4 = time.perf_counter()
print(f"{{t1 - t0:.2f}} {{warm:.2f}} {{t3 - t2:.2f}} {{t4 - t3:.2f}}")
"""


def first_run(args) -> int:
    """One fresh process per row: imports, then pipeline.run twice, without and after warm_up."""
    import subprocess

    repo = Path(__file__).resolve().parents[1]
    print("| process | imports + read (s) | warm_up (s) | first run (s) | second run (s) |\n|---|---:|---:|---:|---:|")
    for warm in (False, True):
        code = _FIRST.format(
            src=str(repo / "src"),
            threads=args.threads,
            path=str(Path(args.data) / args.image),
            device=args.device,
            mpp=args.mpp,
            warm=warm,
        )
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        a, b, c, d = out.stdout.split()[-4:]
        print(
            f"| {'after pipeline.warm_up' if warm else 'cold'} | {a} | {b if warm else '-'} | {c} | {d} |", flush=True
        )
    return 0


def main(argv=None) -> int:
    repo = Path(__file__).resolve().parents[1]
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--data", default=str(repo.parent / "shared" / "data"))
    ap.add_argument("--image", default="consep/train_1.jpg")
    ap.add_argument("--mpp", type=float, default=0.25)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument(
        "--import-md",
        default=None,
        help="put the table printed by a run on another machine (e.g. the GPU one) into "
        "the 'pipeline-gpu' section of docs/performance.md, without measuring here",
    )
    ap.add_argument(
        "--first-run",
        action="store_true",
        help="seconds of the first run in a new process, without and after pipeline.warm_up",
    )
    args = ap.parse_args(argv)
    if args.first_run:
        return first_run(args)
    if args.import_md:
        write_section(
            "pipeline-gpu",
            Path(args.import_md)
            .read_text()
            .replace(
                f"## End-to-end pipeline, per stage ({'GPU' if args.device.startswith('cuda') else 'CPU'})",
                "## End-to-end pipeline, per stage (GPU)",
            ),
        )
        return 0

    import torch

    torch.set_num_threads(args.threads)
    from napari_uam import pipeline
    from napari_uam.io import export_cells, read_image

    path = Path(args.data) / args.image
    clf = pipeline.get_classifier(None, args.device)
    from napari_uam.tumor import load_tumor_model, predict_tumor_mask, tumor_weights_available

    # The tumor-region stage runs whenever its weights are installed, as in pipeline.run.
    tumor = load_tumor_model(None, args.device) if tumor_weights_available() else None
    image, _ = read_image(path)
    pipeline.run(image, args.mpp, model=clf, device=args.device)  # warm-up: imports, caches

    stages = {"read": [], "segment": [], "measure": [], "classify": [], "tumor mask": [], "export": [], "total": []}
    n_cells = 0
    for _ in range(args.repeats):
        t = time.perf_counter()
        image, _ = read_image(path)
        t_read = time.perf_counter()
        labels = pipeline.segment_nuclei(image, args.mpp, device=args.device)
        t_seg = time.perf_counter()
        table = pipeline.measure_cells(image, labels, args.mpp, device=args.device)
        t_meas = time.perf_counter()
        table = pipeline.classify_cells(table, model=clf, device=args.device)
        t_cls = time.perf_counter()
        mask = None
        if tumor is not None:
            mask = (predict_tumor_mask(image, args.mpp, table, model=tumor) > 0.5).astype("uint8")
        t_tum = time.perf_counter()
        with tempfile.TemporaryDirectory() as d:
            export_cells(labels, table, d, "bench", tumor_mask=mask)
        t_exp = time.perf_counter()
        for k, a, b in (
            ("read", t, t_read),
            ("segment", t_read, t_seg),
            ("measure", t_seg, t_meas),
            ("classify", t_meas, t_cls),
            ("tumor mask", t_cls, t_tum),
            ("export", t_tum, t_exp),
            ("total", t, t_exp),
        ):
            stages[k].append(b - a)
        n_cells = len(table)

    if tumor is None:
        stages.pop("tumor mask")
    rows = [f"| {k} | {statistics.median(v):.3f} |" for k, v in stages.items()]
    md = "\n".join(
        [
            f"## End-to-end pipeline, per stage ({'GPU' if args.device.startswith('cuda') else 'CPU'})",
            "",
            f"Command: `python benchmarks/pipeline_bench.py --threads {args.threads} --device {args.device}`; image "
            f"`{args.image}` ({image.shape[1]}x{image.shape[0]}, {args.mpp} um/px), {n_cells} nuclei; "
            f"median of {args.repeats} runs after a warm-up; torch threads {args.threads}; device {args.device}.",
            f"Machine: {machine()}; date {today()}.",
            "",
            "| stage | seconds |",
            "|---|---|",
            *rows,
        ]
    )
    print(md)
    if not args.no_write:
        write_section("pipeline", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
