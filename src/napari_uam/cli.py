"""Command line: the same pipeline as the napari dock, over files.

    napari-uam classify IMAGE... --mpp MPP --out DIR
    napari-uam classify --sample --out DIR

writes per image ``DIR/<stem>_nuclei.tif``, ``<stem>_cells.csv``, ``<stem>_cells.parquet``
and ``<stem>_cells.geojson`` (see :mod:`napari_uam.io.export`). Bad input exits with status 2
and one line saying why; nothing is overwritten unless ``--overwrite`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from .errors import CancelledError, UAMError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-uam", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser("classify", help="segment, measure and classify the nuclei of H&E images")
    c.add_argument("images", nargs="*", help="image files (TIFF/OME-TIFF/SVS, PNG, JPEG)")
    c.add_argument("--sample", action="store_true", help="also run on the shipped sample patch")
    c.add_argument("--mpp", type=float, default=None,
                   help="microns per pixel (0.25 at 40x, 0.5 at 20x); default: read from the file")
    c.add_argument("--out", required=True, help="output folder")
    c.add_argument("--model", default=None, help="checkpoint file (default: the shipped UAM weights)")
    c.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    c.add_argument("--segmenter", default="auto", help="segmentation backend (default: best installed)")
    c.add_argument("--radiomics-backend", default="auto", choices=["auto", "fast", "pyradiomics"])
    c.add_argument("--formats", default="tif,csv,parquet,geojson",
                   help="comma-separated subset of tif,csv,parquet,geojson")
    c.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    c.add_argument("--quiet", action="store_true")
    return p


def _classify(args) -> int:
    from . import pipeline
    from .io import export_cells, read_image
    from .sample_data import SAMPLE_MPP, SAMPLE_PATH

    jobs = [(Path(p), args.mpp) for p in args.images]
    if args.sample:
        jobs.append((SAMPLE_PATH, args.mpp or SAMPLE_MPP))
    if not jobs:
        raise UAMError("no input: give image files or --sample")
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    model = pipeline.get_classifier(args.model, args.device)
    for path, mpp in jobs:
        image, file_mpp = read_image(path)
        mpp = mpp or file_mpp
        if mpp is None:
            raise UAMError(f"{path.name}: the file does not record its pixel size; pass --mpp (0.25 at 40x, 0.5 at 20x)")
        t0 = time.perf_counter()
        res = pipeline.run(
            image, mpp, segment_backend=args.segmenter, radiomics_backend=args.radiomics_backend,
            model=model, device=args.device,
        )
        stem = path.name.split(".")[0]
        written = export_cells(
            res.labels, res.table, args.out, stem, formats=formats, overwrite=args.overwrite,
            tumor_mask=res.tumor_mask, provenance=res.provenance, mpp=mpp,
        )
        if not args.quiet:
            n = len(res.table)
            n_t = int((res.table["class"] == res.table.attrs.get("tumor_class", "tumor")).sum()) if n else 0
            print(f"{path.name}: {n} nuclei, {n_t} tumor, {time.perf_counter() - t0:.1f} s -> "
                  + ", ".join(str(p) for p in written.values()))
    return 0


def main(argv=None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "classify":
            return _classify(args)
    except (UAMError, OSError) as err:  # OSError: file exists, full disk, permission denied
        print(f"napari-uam: error: {err}", file=sys.stderr)
        return 2
    except CancelledError as err:
        print(f"napari-uam: {err}", file=sys.stderr)
        return 130
    return 1


if __name__ == "__main__":
    sys.exit(main())
