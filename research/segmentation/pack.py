"""Copy the nucleus sets into one folder small enough to travel to the GPU machine.

The device tool carries at most 64 MiB, and the shared data's nucleus sets are ~90 MB of
JPEG q95 4:4:4. Images are re-encoded at JPEG ``--quality`` (a little extra JPEG loss; note that
the v3 recipe has no JPEG augmentation of its own, v4 has); masks and points are copied as they are;
``meta.json`` files too.

Usage::

    python -m research.segmentation.pack --out .gpu_data/nuclei --quality 88
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from PIL import Image

from .nuclei_sets import DEFAULT_ROOT, SOURCES, images


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_ROOT)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--quality", type=int, default=88)
    args = ap.parse_args(argv)
    total = 0
    for name, src in SOURCES.items():
        for folder in src.folders:
            d = args.data / folder
            for meta in (d / "meta.json", d.parent / "meta.json"):
                if meta.exists():
                    rel = meta.relative_to(args.data)
                    (args.out / rel).parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy(meta, args.out / rel)
        for im in images(name, args.data):
            rel = im.path.parent.relative_to(args.data)
            dst = args.out / rel
            dst.mkdir(parents=True, exist_ok=True)
            Image.open(im.path).convert("RGB").save(dst / im.path.name, quality=args.quality)
            for suffix in ("_inst.png", "_points.csv"):
                f = im.path.with_name(im.image_id + suffix)
                if f.exists():
                    shutil.copy(f, dst / f.name)
        size = sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file())
        print(f"{name}: {len(images(name, args.data))} images; pack now {size / 2**20:.1f} MiB")
        total = size
    print(f"total {total / 2**20:.1f} MiB in {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
