"""Does stain normalisation at inference help a held-out source? Measured on LOSO fold networks.

    python -m research.segmentation.stain_norm_check --folds runs/seg_wide/folds \\
        --loso research/segmentation/loso_wide.json

Issue 15 allows stain normalisation at inference (Macenko) only if the leave-one-source-out
numbers say it helps. Each fold network in ``--folds`` (``<source>.pt``: trained on every
source but that one, e.g. the checkpoints a ``research.segmentation.loso`` run leaves in its
output folder) segments its held-out source twice through the same scoring code
(:func:`research.segmentation.loso.evaluate`, at the post-processing that run chose): the
image as it is, and the image after ``napari_uam.radiomics.stain_norm.normalise_stain``
(Macenko: the image's own stain vectors, re-synthesised with the reference stains and maxima).
Writes ``docs/segmentation_stain_norm.json``; ``benchmarks/segmentation_bench.py --render``
turns it into a section of docs/segmentation.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
from pathlib import Path

from napari_uam.radiomics.stain_norm import normalise_stain

from . import loso as L
from . import nuclei_sets as N

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "docs" / "segmentation_stain_norm.json"


def check(folds: Path, data: Path, post: dict, device: str, workers: int, log=print) -> dict:
    rows = {}
    for ck in sorted(folds.glob("*.pt")):
        src = ck.stem
        if src not in N.SOURCES:  # e.g. all.pt, the network that saw every source
            continue
        ims = N.images(src, data)
        kind = N.SOURCES[src].kind
        plain = L.summarise(L.evaluate(ck, ims, device, workers, grid=[post]), kind)
        normed = L.summarise(L.evaluate(ck, ims, device, workers, grid=[post], transform=normalise_stain), kind)
        rows[src] = {"as_is": plain, "normalised": normed}
        log(f"{src}: AJI {plain.get('aji', float('nan')):.3f} -> {normed.get('aji', float('nan')):.3f}, "
            f"F1 {plain['f1']:.3f} -> {normed['f1']:.3f}")  # fmt: skip
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--folds", type=Path, required=True, help="folder of <held-out source>.pt fold networks")
    p.add_argument("--loso", type=Path, required=True, help="the loso.json of the run that trained them")
    p.add_argument("--data", type=Path, default=N.DEFAULT_ROOT)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=int, default=2)
    a = p.parse_args(argv)
    lo = json.loads(a.loso.read_text())
    post = lo["post_grid"][lo["post_choice"]]
    t0 = dt.datetime.now(dt.timezone.utc)
    rows = check(a.folds, a.data, post, a.device, a.workers)
    result = {
        "command": "python -m research.segmentation.stain_norm_check --folds "
        f"{a.folds} --loso {a.loso.resolve().relative_to(REPO) if a.loso.resolve().is_relative_to(REPO) else a.loso}",
        "date": t0.isoformat(timespec="seconds"),
        "seconds": round((dt.datetime.now(dt.timezone.utc) - t0).total_seconds(), 1),
        "device": a.device,
        "widths": lo.get("widths"),
        "post": post,
        "per_source": rows,
    }
    OUT.write_text(json.dumps(result, indent=1))
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
