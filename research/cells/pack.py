"""Pack the cell tables for the GPU machine (a call carries at most 64 MiB).

    python -m research.cells.pack --tables .gpu_data/cells --group norm_ring_ctx --out .gpu_data/cells_carry

Keeps the meta and stain columns, the feature columns of one group (float16: the models see
normalised features, and float16 keeps 3 significant digits), at most :data:`~.loso.CAP`
nuclei per source (a random sample, seed 0: what a training fold uses, and what LOSO tests on
when the source is held out) with their first ``--max-aug`` augmented copies.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .build import STAIN_COLUMNS
from .loso import META, capped, feature_groups, load_tables


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", type=Path, default=Path(".gpu_data/cells"))
    p.add_argument("--group", required=True)
    p.add_argument("--max-aug", type=int, default=2)
    p.add_argument("--exclude", nargs="*", default=[], help="drop feature columns with these prefixes (carry size)")
    p.add_argument("--out", type=Path, default=Path(".gpu_data/cells_carry"))
    a = p.parse_args(argv)
    table = load_tables(a.tables)
    feats = [f for f in feature_groups(table.columns)[a.group] if not any(f.startswith(x) for x in a.exclude)]
    # The nuclei a fold may train on (CAP per source) are also the ones tested when the source
    # is held out: a random sample of at most CAP nuclei per source, with their copies.
    keep = capped(table)
    orig = keep[keep["aug"] == 0]
    keep = keep[keep["aug"].between(1, a.max_aug)]
    a.out.mkdir(parents=True, exist_ok=True)
    total = 0
    for ds in sorted(set(table["dataset"])):
        part = __import__("pandas").concat([orig[orig["dataset"] == ds], keep[keep["dataset"] == ds]])
        part = part[META + STAIN_COLUMNS + feats].copy()
        # float16 holds |x| < 65504 only: energies and sizes stay float32.
        small = [f for f in feats if np.nanmax(np.abs(table[f].to_numpy(np.float64)), initial=0) < 6e4]
        part[small] = part[small].astype(np.float16)
        path = a.out / f"{ds}.parquet"
        part.to_parquet(path, index=False, compression="zstd")
        total += path.stat().st_size
        print(ds, len(part), f"{path.stat().st_size / 2**20:.1f} MiB")
    print(f"total {total / 2**20:.1f} MiB, {len(feats)} features")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
