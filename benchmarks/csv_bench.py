"""CSV export of a slide-sized cell table: pandas' ``to_csv`` beside the column-wise writer, same run.

The slide run of ``benchmarks/wsi_bench.py`` spent a quarter of its time in pandas formatting
floats for the CSV (``docs/performance.md``, section ``wsi``). This times both writers on the
same table: the shipped sample's real measured and classified cells (every feature column of
the shipped schema), repeated to ``--cells`` rows, and checks that their bytes are equal::

    python benchmarks/csv_bench.py --cells 88000 --json docs/csv_export_cpu.json
    python benchmarks/csv_bench.py --render docs/csv_export_cpu.json

``--render`` writes the ``csv-export`` section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "benchmarks"))


def table(cells: int) -> pd.DataFrame:
    from napari_uam import pipeline
    from napari_uam.sample_data import SAMPLE_MPP, sample_image

    res = pipeline.run(sample_image(), SAMPLE_MPP, device="cpu", tumor_mask=False)
    reps = int(np.ceil(cells / len(res.table)))
    out = pd.concat([res.table] * reps, ignore_index=True).iloc[:cells].copy()
    out["label"] = np.arange(1, len(out) + 1)
    return out


def measure(args) -> dict:
    from _report import machine
    from napari_uam.io.writers import CSV_FLOAT, csv_text

    tab = table(args.cells)

    def with_pandas() -> str:
        buf = io.StringIO()
        tab.to_csv(buf, index=False, float_format=CSV_FLOAT)
        return buf.getvalue()

    def column_wise() -> str:
        return csv_text(tab)

    rows, texts = [], {}
    for name, fn in (("pandas to_csv", with_pandas), ("column-wise (shipped)", column_wise)):
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            texts[name] = fn()
            times.append(time.perf_counter() - t0)
        rows.append({"writer": name, "seconds_median": statistics.median(times), "seconds_all": times})
        print(f"{name:24s} {statistics.median(times):.2f} s")
    same = len(set(texts.values())) == 1
    if not same:
        raise SystemExit("the two writers gave different bytes")
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": machine(),
        "cores": os.cpu_count(),
        "pandas": pd.__version__,
        "cells": len(tab),
        "columns": tab.shape[1],
        "bytes": len(next(iter(texts.values()))),
        "identical": same,
        "repeats": args.repeats,
        "rows": rows,
    }


def render(path: str) -> str:
    from _report import write_section

    r = json.loads(Path(path).read_text())
    base = r["rows"][0]["seconds_median"]
    lines = [
        "## CSV export of a slide-sized cell table",
        "",
        f"The shipped sample's measured and classified cells repeated to {r['cells']:,} rows x {r['columns']} "
        f"columns ({r['bytes'] / 1e6:.0f} MB of CSV), written to memory by pandas' `to_csv` and by the column-wise "
        "writer the exports use (`napari_uam.io.writers.csv_text`), in one run, median of "
        f"{r['repeats']}; the two give the same bytes (checked by the run, and by `tests/io/test_writers.py` and "
        f"the reference outputs). {r['machine']}, pandas {r['pandas']}, {r['date']}. Written by "
        f"`python benchmarks/csv_bench.py --render {Path(path).name}`.",
        "",
        "| writer | seconds | vs pandas |",
        "|---|---:|---:|",
    ]
    for row in r["rows"]:
        lines.append(f"| {row['writer']} | {row['seconds_median']:.2f} | {base / row['seconds_median']:.1f}x |")
    text = "\n".join(lines)
    write_section("csv-export", text)
    return text


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", type=int, default=88000, help="rows (88,000: the 16.8 mm^2 mosaic of wsi_bench)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--json")
    p.add_argument("--render", metavar="JSON")
    args = p.parse_args(argv)
    if args.render:
        print(render(args.render))
        return 0
    rec = measure(args)
    if args.json:
        Path(args.json).write_text(json.dumps(rec, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
