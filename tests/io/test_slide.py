"""Whole-slide files: OpenSlide beside tifffile, on slide-like files the tests make themselves.

A pyramidal tiled TIFF (generic: tifffile reads it, OpenSlide too) and an SVS-style file (a
tiled TIFF whose description is Aperio's: OpenSlide reads it, tifffile too) must give the same
pixels and pixel size through both libraries; a slide must go through the command line's
tiled path with its own pixel size.
"""

from __future__ import annotations

import io
import json

import importlib.util

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from napari_uam.batch.folder import _is_image_name
from napari_uam.cli import main
from napari_uam.device import resolve_device
from napari_uam.errors import InvalidImageError
from napari_uam.io import read_image, slide
from napari_uam.io.region_reader import RegionReader, _read_tiff_region, probe
from napari_uam.io.slide import composite_on_white, mpp_from_properties

from _ecosystem import qupath_geojson_problems, read_ome_zarr_labels
from _slides import APERIO, write_pyramid, write_svs

pytest.importorskip("openslide")

EXPORT_EXTRA = all(importlib.util.find_spec(m) for m in ("anndata", "ome_zarr"))


def _image(h=700, w=900, seed=0) -> np.ndarray:
    # Smooth colour with noise: compressible like tissue, and every region is distinct.
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:h, :w]
    base = np.stack([(yy * 0.3) % 256, (xx * 0.2) % 256, ((yy + xx) * 0.1) % 256], -1)
    return np.clip(base + rng.integers(0, 40, (h, w, 3)), 0, 255).astype(np.uint8)


def write_jpeg_svs(path, img: np.ndarray, tile: int = 256, mpp: float = 0.252) -> np.ndarray:
    """An SVS as scanners write it: JPEG tiles (YCbCr), which tifffile cannot decode without
    imagecodecs. The tiles are encoded by Pillow and stored as they are (tifffile then only
    lays them out; the compression tags are set after). Returns the decoded pixels."""
    h, w = img.shape[:2]
    decoded = np.zeros((-(-h // tile) * tile, -(-w // tile) * tile, 3), np.uint8)
    encoded = []
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            t = np.full((tile, tile, 3), 255, np.uint8)
            part = img[y : y + tile, x : x + tile]
            t[: part.shape[0], : part.shape[1]] = part
            buf = io.BytesIO()
            Image.fromarray(t).save(buf, "JPEG", quality=90)
            encoded.append(buf.getvalue())
            decoded[y : y + tile, x : x + tile] = np.asarray(Image.open(io.BytesIO(encoded[-1])))
    with tifffile.TiffWriter(path) as tw:
        desc = APERIO.format(w=w, h=h, mpp=mpp)
        kw = {"shape": img.shape, "dtype": np.uint8, "tile": (tile, tile), "photometric": "rgb", "metadata": None}
        tw.write(iter(encoded), compression="zlib", description=desc, **kw)  # bytes written as given
    with tifffile.TiffFile(path, mode="r+b") as tif:
        tif.pages[0].tags["Compression"].overwrite(7)  # JPEG
        tif.pages[0].tags["PhotometricInterpretation"].overwrite(6)  # YCbCr, as Aperio's
    return decoded[:h, :w]


def test_jpeg_svs_reads_through_openslide(tmp_path):
    path = tmp_path / "scanner.svs"
    decoded = write_jpeg_svs(path, _image(600, 700, seed=3))
    assert slide.uses_openslide(path) and probe(path) == (600, 700, pytest.approx(0.252))
    region = RegionReader(str(path)).read(100, 500, 200, 650)
    # libjpeg under OpenSlide and under Pillow: the same decoder, at most rounding apart.
    assert np.abs(region.astype(int) - decoded[100:500, 200:650]).max() <= 2


@pytest.mark.parametrize("subifds", [True, False])
def test_pyramidal_tiff_reads_alike_through_tifffile_and_openslide(tmp_path, subifds):
    img = _image()
    path = tmp_path / "pyramid.tif"
    write_pyramid(path, img, subifds=subifds)
    # A generic tiled TIFF stays with tifffile (byte for byte as before this reader existed).
    assert not slide.uses_openslide(path)
    tiff_region = _read_tiff_region(str(path), 100, 420, 250, 777)
    np.testing.assert_array_equal(tiff_region, img[100:420, 250:777])
    np.testing.assert_array_equal(slide.read_region(path, 100, 420, 250, 777), tiff_region)
    info = slide.slide_info(path)
    assert (info.height, info.width) == img.shape[:2] == probe(path)[:2]
    assert info.mpp == pytest.approx(0.5) and probe(path)[2] == pytest.approx(0.5)
    if not subifds:  # OpenSlide sees pages as levels (SubIFD levels are tifffile's alone)
        assert info.levels == ((700, 900), (350, 450), (175, 225))


def test_svs_reads_through_openslide_with_its_pixel_size(tmp_path):
    img = _image(seed=1)
    path = tmp_path / "slide.svs"
    write_svs(path, img)
    assert slide.uses_openslide(path)
    info = slide.slide_info(path)
    assert info.vendor == "aperio" and info.mpp == pytest.approx(0.252)
    assert info.levels == ((700, 900), (175, 225)) and info.downsamples == (1.0, 4.0)
    assert probe(path) == (700, 900, pytest.approx(0.252))
    region = RegionReader(str(path)).read(37, 555, 301, 899)
    assert region.dtype == np.uint8 and region.shape == (518, 598, 3)
    # The same pixels as tifffile decodes them, and the same pixel size as its description says.
    with tifffile.TiffFile(path) as tif:
        np.testing.assert_array_equal(tif.pages[0].asarray()[37:555, 301:899], region)
    data, mpp = read_image(path)
    np.testing.assert_array_equal(data, img)
    assert mpp == pytest.approx(0.252)


def test_a_vendor_tiff_under_a_tif_name_goes_to_openslide(tmp_path):
    path = tmp_path / "renamed.tif"
    write_svs(path, _image(200, 300))
    assert slide.uses_openslide(path)
    assert probe(path)[2] == pytest.approx(0.252)


def test_transparent_pixels_are_white_glass():
    rgba = np.zeros((2, 3, 4), np.uint8)
    rgba[0, 0] = (10, 20, 30, 255)  # opaque: unchanged
    rgba[0, 1] = (0, 0, 0, 0)  # nothing scanned: glass
    rgba[0, 2] = (0, 0, 0, 128)  # half covered: halfway to white
    rgb = composite_on_white(rgba)
    assert rgb.shape == (2, 3, 3) and rgb.dtype == np.uint8
    assert tuple(rgb[0, 0]) == (10, 20, 30) and tuple(rgb[0, 1]) == (255, 255, 255)
    assert tuple(rgb[0, 2]) == (127, 127, 127)
    np.testing.assert_array_equal(composite_on_white(np.full((2, 2, 4), 255, np.uint8)), 255)


def test_pixel_size_from_slide_properties():
    assert mpp_from_properties({"openslide.mpp-x": "0.2431", "aperio.MPP": "0.5"}) == pytest.approx(0.2431)
    assert mpp_from_properties({"aperio.MPP": "0.4990"}) == pytest.approx(0.499)
    cm = {"tiff.XResolution": "40000", "tiff.ResolutionUnit": "centimeter"}
    assert mpp_from_properties(cm) == pytest.approx(0.25)
    inch = {"tiff.XResolution": str(25400 / 0.5), "tiff.ResolutionUnit": "inch"}
    assert mpp_from_properties(inch) == pytest.approx(0.5)
    # Placeholders are no pixel size: 1 px per unit, 72 dpi, zero, junk, nothing.
    for props in (
        {"tiff.XResolution": "1", "tiff.ResolutionUnit": "none"},
        {"tiff.XResolution": "72", "tiff.ResolutionUnit": "inch"},
        {"openslide.mpp-x": "0"},
        {"aperio.MPP": "n/a"},
        {},
    ):
        assert mpp_from_properties(props) is None


def test_without_openslide_vendor_files_say_what_to_install(tmp_path, monkeypatch):
    def missing(name="this slide"):
        raise InvalidImageError(f"Reading {name} needs OpenSlide. Install it with `{slide.INSTALL_HINT}`")

    monkeypatch.setattr(slide, "openslide_module", missing)
    ndpi = tmp_path / "scan.ndpi"
    ndpi.write_bytes(b"II*\x00")
    with pytest.raises(InvalidImageError, match="openslide-bin openslide-python"):
        probe(ndpi)
    with pytest.raises(InvalidImageError, match="scan.ndpi needs OpenSlide"):
        read_image(ndpi)
    # An SVS still opens: tifffile reads Aperio files (and their MPP) itself.
    svs = tmp_path / "slide.svs"
    write_svs(svs, _image(300, 300))
    assert probe(svs) == (300, 300, pytest.approx(0.252))


def test_vendor_suffixes_are_images_for_folders():
    for name in ("a.svs", "b.NDPI", "c.mrxs", "d.scn", "e.bif", "f.tif", "g.png"):
        assert _is_image_name(name)
    assert not _is_image_name("h.json")


def test_classify_a_slide_through_the_tiled_path(tmp_path, consep_mosaic):
    """A small SVS-style slide of real CoNSeP fields: tiled (tiles of 512), at the slide's pixel size."""
    path = tmp_path / "consep.svs"
    write_svs(path, consep_mosaic([1, 2, 3, 4], 512), mpp=0.252)
    out = tmp_path / "out"
    formats = "tif,csv,parquet,geojson" + (",h5ad,zarr" if EXPORT_EXTRA else "")
    rc = main(["classify", str(path), "--out", str(out), "--tile-size", "512", "--device", "cpu", "--quiet",
               "--formats", formats])  # fmt: skip
    assert rc == 0
    done = json.loads((out / "consep.done.json").read_text())
    prov = done["provenance"]
    assert prov["tiled"] and prov["n_tiles"] == 4 and prov["image_shape"] == [1024, 1024, 3]
    assert done["mpp"] == pytest.approx(0.252) and prov["mpp"] == pytest.approx(0.252)
    assert done["n_cells"] > 100
    # Without --workers the tiles stay in this process on a CPU machine (a GPU gets one worker
    # per core: batch.executors.auto_tile_workers).
    run = json.loads((out / "napari_uam_run.json").read_text())
    if resolve_device("auto") == "cpu":
        assert run["parameters"]["workers"] is None
    for kind in ("nuclei.tif", "cells.csv", "cells.parquet", "cells.geojson"):
        assert (out / f"consep_{kind}").stat().st_size > 0
    # A tiled image's GeoJSON carries the summary measurements by default (the full set would
    # be about 20 KB per nucleus on a slide), in the fields QuPath imports.
    doc = json.loads((out / "consep_cells.geojson").read_text())
    assert qupath_geojson_problems(doc, "detection") == []
    assert {tuple(f["properties"]["measurements"]) for f in doc["features"]} == {
        ("label", "y", "x", "area_um2", "tumor_probability")
    }
    if not EXPORT_EXTRA:
        pytest.skip("the export extra (anndata, ome-zarr) is not installed: h5ad / OME-Zarr not checked")
    import anndata

    labels = tifffile.imread(out / "consep_nuclei.tif")
    levels, meta = read_ome_zarr_labels(out / "consep_nuclei.ome.zarr")
    np.testing.assert_array_equal(levels[0], labels)
    assert meta["coordinateTransformations"][0][0]["scale"] == [pytest.approx(0.252)] * 2
    table = pd.read_parquet(out / "consep_cells.parquet")
    adata = anndata.read_h5ad(out / "consep_cells.h5ad")
    assert list(adata.obs_names) == [str(v) for v in table["label"]]
    np.testing.assert_allclose(adata.X, table[list(adata.var_names)].to_numpy(np.float32), rtol=1e-6, equal_nan=True)


def test_a_slide_without_pixel_size_asks_for_mpp(tmp_path, capsys):
    """No MPP in the description, no resolution tags: the missing-pixel-size message, nothing written."""
    path = tmp_path / "nompp.svs"
    img = _image(600, 600, seed=2)
    with tifffile.TiffWriter(path) as tw:
        desc = "Aperio Image Library v12.0.15 \n600x600 [0,0 600x600] (256x256) RGB|AppMag = 40"
        tw.write(img, tile=(256, 256), compression="zlib", photometric="rgb", metadata=None, description=desc)
    assert slide.uses_openslide(path) and slide.slide_info(path).mpp is None
    out = tmp_path / "out"
    rc = main(["classify", str(path), "--out", str(out), "--tile-size", "512", "--device", "cpu", "--quiet"])
    assert rc == 1
    assert "nompp.svs does not record its pixel size; pass --mpp" in capsys.readouterr().err
    assert not list(out.glob("nompp_*"))
