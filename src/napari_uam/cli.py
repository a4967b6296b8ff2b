"""Command line: the same pipeline as the napari dock, over files, globs and folders.

    napari-uam segment  INPUT... --out DIR [--mpp MPP]
    napari-uam measure  INPUT... --out DIR [--mpp MPP] [--labels-from-out]
    napari-uam classify INPUT... --out DIR [--mpp MPP] [--labels-from-out]
    napari-uam classify --sample --out DIR
    napari-uam evaluate --model CKPT|default TABLE... [--target target] [--out metrics.json]
    napari-uam train    PROJECT... --out MODEL.pt [--init default|scratch|CKPT] [--epochs N]

An INPUT is an image file, a glob pattern or a folder (its TIFF, slide, PNG and JPEG files, sorted).
Per image, ``classify`` writes ``DIR/<stem>_nuclei.tif``, ``<stem>_cells.csv``,
``<stem>_cells.parquet`` and ``<stem>_cells.geojson`` (see :mod:`napari_uam.io.export`);
``segment`` writes the labels TIFF; ``measure`` the labels and the cell table without
classes. Runs are resumable: an image whose ``<stem>.done.json`` says its outputs are
complete is skipped unless ``--overwrite``. ``DIR/napari_uam_run.json`` records the run and
``DIR/cohort_cells.parquet`` holds every image's cells. Exit status: 0 when every image is
done or skipped, 1 when any image failed (the others still run), 2 for unusable arguments,
130 when interrupted. The batch logic lives in :mod:`napari_uam.batch`.
"""

from __future__ import annotations

import argparse
import sys
import warnings

from .batch import OutputOptions, run_batch
from .classify.checkpoint import read_checkpoint
from .errors import CancelledError, UAMError
from .evaluation import add_evaluate_parser
from .io.export import DEFAULT_FORMATS, FORMATS
from .io.writers import GEOJSON_MEASUREMENTS
from .evaluation import run_cli as run_evaluate
from .io.project import find_projects, load_project
from .sample_data import SAMPLE_MPP, SAMPLE_PATH
from .training.finetune import add_train_parser, run_cli


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="napari-uam", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    helps = {
        "segment": "segment the nuclei of H&E images (writes <stem>_nuclei.tif)",
        "measure": "segment and measure the nuclei (labels + cell table without classes)",
        "classify": "segment, measure and classify the nuclei of H&E images",
    }
    for name, text in helps.items():
        c = sub.add_parser(name, help=text, description=text)
        c.add_argument(
            "images",
            nargs="*",
            help="image files (TIFF/OME-TIFF, slides: SVS/NDPI/MRXS/SCN/BIF, PNG, JPEG), glob patterns or folders",
        )
        c.add_argument("--sample", action="store_true", help="also run on the shipped sample patch")
        c.add_argument(
            "--mpp",
            type=float,
            default=None,
            help="microns per pixel (0.25 at 40x, 0.5 at 20x); default: read from each file",
        )
        c.add_argument("--out", required=True, help="output folder")
        c.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
        c.add_argument("--segmenter", default="auto", help="segmentation backend (default: best installed)")
        if name != "segment":
            c.add_argument("--radiomics-backend", default="auto", choices=["auto", "fast", "pyradiomics"])
            c.add_argument(
                "--labels-from-out",
                action="store_true",
                help="reuse <stem>_nuclei.tif from the output folder when present instead of segmenting again",
            )
        if name == "classify":
            c.add_argument("--model", default=None, help="checkpoint file (default: the shipped UAM weights)")
            c.add_argument(
                "--formats",
                default=",".join(DEFAULT_FORMATS),
                help=f"comma-separated outputs out of {','.join(FORMATS)} (default %(default)s; h5ad = the cell "
                "table as AnnData, zarr = the nuclei as an OME-Zarr label image: pip install 'napari-uam[export]')",
            )
            c.add_argument(
                "--geojson-measurements",
                default="auto",
                choices=["auto", *GEOJSON_MEASUREMENTS],
                help="what each nucleus of <stem>_cells.geojson carries into QuPath: all = every column of the "
                "cell table, summary = position, area and tumor probability, none = the label only; auto (default): "
                "all for images processed in one piece, summary for tiled ones (all: about 20 KB per nucleus)",
            )
        c.add_argument(
            "--tile-size",
            type=int,
            default=None,
            metavar="PX",
            help="process images taller or wider than PX in tiles of PX with halos "
            "(default: only images above 16.8 Mpx, in tiles of 2048)",
        )
        c.add_argument(
            "--all-tiles",
            action="store_true",
            help="tiled images: process every tile, also those where tissue detection finds only glass",
        )
        c.add_argument(
            "--dask",
            default=None,
            metavar="local|ADDRESS",
            help="run images and tiles on Dask: 'local' (a local cluster) or a "
            "scheduler address such as tcp://host:8786 (a scheduler runs pickled "
            "code: connect only to a cluster you trust)",
        )
        c.add_argument(
            "--workers",
            type=int,
            default=None,
            help="local Dask workers (more than 1 implies --dask local; default: one per core, at most 16, "
            "for tiled images on a GPU, else 1)",
        )
        c.add_argument(
            "--overwrite", action="store_true", help="recompute images already done and replace their outputs"
        )
        c.add_argument("--quiet", action="store_true", help="no progress lines (failures still go to stderr)")

    add_evaluate_parser(sub)  # napari-uam evaluate: metrics of a checkpoint on cell tables
    add_train_parser(sub)  # napari-uam train: the Train dock's fine-tuning, headless
    return p


def _run(args, argv) -> int:

    def progress(line: str, status: str) -> None:
        # Failures always reach stderr so that a quiet run still says what went wrong.
        if status == "failed":
            print(line, file=sys.stderr, flush=True)
        elif not args.quiet:
            print(line, flush=True)

    formats = getattr(args, "formats", None)
    result = run_batch(
        args.command,
        args.images,
        args.out,
        mpp=args.mpp,
        extra_images=[(SAMPLE_PATH, SAMPLE_MPP)] if args.sample else (),
        formats=[f.strip() for f in formats.split(",") if f.strip()] if formats else None,
        model=getattr(args, "model", None),
        device=args.device,
        segmenter=args.segmenter,
        radiomics_backend=getattr(args, "radiomics_backend", "auto"),
        overwrite=args.overwrite,
        labels_from_out=getattr(args, "labels_from_out", False),
        tile_size=args.tile_size,
        dask=args.dask,
        workers=args.workers,
        progress=progress,
        argv=["napari-uam", *argv],
        options=OutputOptions(
            geojson_measurements=getattr(args, "geojson_measurements", "auto"), skip_background=not args.all_tiles
        ),
    )
    if not args.quiet:
        cohort = f", cohort table {result.cohort_path}" if result.cohort_path else ""
        print(
            f"{result.count('done')} done, {result.count('skipped')} skipped, "
            f"{result.count('failed')} failed; manifest {result.manifest_path}{cohort}"
        )
    return result.exit_code


def _check_train_inputs(args) -> None:
    """Read every project, table and the --init checkpoint before training starts, so that a
    damaged one is one line (exit 2) instead of a traceback after minutes of feature work."""

    for inp in args.inputs:
        if str(inp).endswith(".parquet"):
            import pyarrow.parquet as pq

            try:
                pq.read_schema(inp)
            except Exception as err:  # missing, truncated or not parquet
                raise UAMError(
                    f"Cannot read the cell table {inp} ({type(err).__name__}: {' '.join(str(err).split())[:160]})."
                ) from None
        else:
            for folder in find_projects(inp):
                load_project(folder)
    if args.init not in ("default", "scratch"):
        read_checkpoint(args.init)


def _one_line_warning(message, category, filename, lineno, line=None) -> str:
    # Warnings meant for the user (pixel size, stain, resampling) as one line, not a source dump.
    return f"napari-uam: warning: {' '.join(str(message).split())}\n"


def main(argv=None) -> int:

    previous = warnings.formatwarning
    warnings.formatwarning = _one_line_warning
    try:
        return _main(argv)
    finally:
        warnings.formatwarning = previous


def _main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    try:
        if args.command == "evaluate":
            return run_evaluate(args)
        if args.command == "train":
            _check_train_inputs(args)
            return run_cli(args)
        return _run(args, argv)
    except (UAMError, OSError) as err:  # bad arguments, model not loadable, output folder unusable
        print(f"napari-uam: error: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, CancelledError):
        print("napari-uam: interrupted; finished images are kept, rerun to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
