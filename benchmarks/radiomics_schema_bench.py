"""Cells per second of the public ``radiomics.extract`` for schema v1 and schema v2, side by side.

    python benchmarks/radiomics_schema_bench.py [--data ../shared/data/consep] [--n 8] [--repeats 3]

Schema v2 runs the fast engine on the nucleus (hematoxylin + eosin), again on the
stain-normalised image, and on the cytoplasm ring, then the NumPy neighbourhood context: this
table says what that costs against v1 on the same patches, same process, CPU (NumPy / numba).
Writes the ``radiomics-schema`` section of docs/performance.md.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/
sys.path.insert(0, str(REPO / "benchmarks"))

from _report import machine, today, write_section  # noqa: E402

from napari_uam.radiomics import extract  # noqa: E402
from napari_uam.radiomics.schema import SCHEMA_V1, SCHEMA_V2  # noqa: E402
from napari_uam.scale import rescale_image, resize_labels  # noqa: E402


def load(data: Path, n: int):
    from PIL import Image

    out = []
    for f in sorted(data.glob("*_inst.png"))[:n]:
        img = np.asarray(Image.open(str(f).replace("_inst.png", ".jpg")).convert("RGB"))
        lab = np.asarray(Image.open(f)).astype(np.int32)
        img = rescale_image(img, 0.25 / 0.5)
        out.append((img, np.ascontiguousarray(resize_labels(lab, img.shape[:2]))))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "consep")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--devices", nargs="+", default=["cpu"], help="engines to time side by side: cpu, cuda")
    ap.add_argument("--no-docs", action="store_true")
    a = ap.parse_args(argv)
    patches = load(a.data, a.n)
    cells = sum(int(np.count_nonzero(np.unique(lab))) for _, lab in patches)
    rows = []
    for device in a.devices:
        for schema in (SCHEMA_V1, SCHEMA_V2):
            extract(*patches[0], schema=schema, device=device)  # compile / warm the engine
            times = []
            for _ in range(a.repeats):
                t = time.perf_counter()
                for img, lab in patches:
                    extract(img, lab, schema=schema, device=device)
                times.append(time.perf_counter() - t)
            med = statistics.median(times)
            rows.append((device, schema.schema_id, schema.n_features, cells / med, min(times), max(times)))
            print(f"{device} {schema.schema_id}: {schema.n_features} features, {cells / med:,.0f} cells/s")
    ratios = {d: rows[2 * i][3] / rows[2 * i + 1][3] for i, d in enumerate(a.devices)}
    gpu = ""
    if "cuda" in a.devices:
        import torch  # only to name the GPU in the table's caption

        gpu = f", GPU {torch.cuda.get_device_name(0)}"
    engines = " and ".join("GPU (CUDA)" if d == "cuda" else "CPU" for d in a.devices)
    md = "\n".join([
        f"## Radiomics cost of the feature schema (public `radiomics.extract`, {engines})", "",
        f"Measured {today()} on {machine()}{gpu} with `python benchmarks/radiomics_schema_bench.py --devices "
        f"{' '.join(a.devices)}` ({len(patches)} CoNSeP patches at 0.5 um/px, {cells} cells, median of {a.repeats} "
        "passes, every row in the same process).", "",
        "| engine | schema | features | cells/s | pass range (s) |", "|---|---|---|---|---|",
        *[f"| {dev} | `{sid}` | {nf} | {cps:,.0f} | {lo:.2f}-{hi:.2f} |" for dev, sid, nf, cps, lo, hi in rows],
        "", " ".join(f"On {dev}, schema v2 costs {r:.1f}x v1 per cell." for dev, r in ratios.items())
        + " v2 runs three engine passes (nucleus, stain-normalised image, ring) plus the Macenko estimate and "
        "the context (NumPy on every engine). The pyradiomics comparison rows above are for v1's columns; v2's "
        "views are each pyradiomics-exact (tests/radiomics/test_radiomics_v2.py).",
    ])  # fmt: skip
    if not a.no_docs:
        print("wrote", write_section("radiomics-schema", md))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
