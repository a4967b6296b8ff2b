"""Precompute the pyradiomics reference table for the GPU parity test.

The GPU machine has no pyradiomics/SimpleITK, so ``tests/radiomics/test_radiomics_parity.py`` compares
the CUDA engine with a table computed here, on the exact inputs it was computed from.

Usage:
    python benchmarks/make_radiomics_reference.py --data ../shared/data/consep \
        --out .gpu_data/radiomics_reference.parquet

Writes ``OUT`` (parquet: columns ``case``, ``label`` and the schema's features, float64) and
``OUT`` with suffix ``.npz`` beside it (the input of every case: ``<case>_img`` (H, W, 3)
uint8 and ``<case>_lab`` (H, W) int32), plus the schema id in both. Cases:

- ``consep``: the corner crop of CoNSeP ``train_1`` the live parity test uses (hundreds of
  cells, small and large, touching the border);
- ``edge``: the synthetic edge cells of the parity test (1- and 2-pixel cells, flat
  intensity, one grey level, border and corner cells).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/
sys.path.insert(0, str(REPO / "tests" / "radiomics"))

from napari_uam.radiomics.schema import SCHEMA_V1 as SCHEMA  # noqa: E402  (the parity tests' schema)
from napari_uam.radiomics.pyradiomics_backend import extract_pyradiomics  # noqa: E402
from test_radiomics_parity import _edge_cases, _load_consep  # noqa: E402  (the tests' own inputs)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "consep")
    ap.add_argument("--out", type=Path, default=REPO / ".gpu_data" / "radiomics_reference.parquet")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    import pandas as pd

    cases = {"consep": _load_consep(args.data), "edge": _edge_cases()}
    frames, arrays = [], {"schema_id": np.array(SCHEMA.schema_id)}
    for name, (img, lab) in cases.items():
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ids, ref = extract_pyradiomics(img, lab, SCHEMA, workers=args.workers)
        print(f"{name}: {len(ids)} cells in {time.perf_counter() - t:.1f} s", flush=True)
        df = pd.DataFrame(ref, columns=list(SCHEMA.feature_names))
        df.insert(0, "label", ids.astype(np.int64))
        df.insert(0, "case", name)
        frames.append(df)
        arrays[f"{name}_img"] = np.ascontiguousarray(img, dtype=np.uint8)
        arrays[f"{name}_lab"] = np.ascontiguousarray(lab, dtype=np.int32)
    table = pd.concat(frames, ignore_index=True)
    table.attrs["schema_id"] = SCHEMA.schema_id
    args.out.parent.mkdir(parents=True, exist_ok=True)
    table.to_parquet(args.out, index=False)
    np.savez_compressed(args.out.with_suffix(".npz"), **arrays)
    print(f"wrote {args.out} ({len(table)} rows) and {args.out.with_suffix('.npz')}")


if __name__ == "__main__":
    main()
