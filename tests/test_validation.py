"""Bad images and labels get a typed error with an actionable message; good ones are normalised."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from napari_uam import pipeline, validation
from napari_uam.errors import InvalidImageError, InvalidLabelsError, NoNucleiError
from napari_uam.io import read_image
from napari_uam.sample_data import SAMPLE_PATH, sample_image
from napari_uam.validation import NotTissueError, as_labels, as_rgb_uint8, check_he_tissue

RGB = np.random.default_rng(0).integers(0, 256, (16, 16, 3), dtype=np.uint8)


@pytest.mark.parametrize(
    "image, message",
    [
        (RGB[..., 0], "grayscale"),
        (np.zeros((16, 16, 5), np.uint8), "5 channels"),
        (np.zeros((1, 1, 3), np.uint8), "at least"),
        (np.zeros((0, 16, 3), np.uint8), "at least"),
        (np.full((16, 16, 3), np.nan, np.float32), "NaN"),
        (np.full((16, 16, 3), 300.0), "Rescale"),
        (np.full((16, 16, 3), -1.0), "negative"),
        (np.zeros((2, 16, 16, 3), np.uint8), "2-D RGB"),
        (np.dstack([RGB, np.full((16, 16), 10, np.uint8)]), "transparent"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_images_raise_clear_errors(image, message):
    with pytest.raises(InvalidImageError, match=message):
        as_rgb_uint8(image)


def test_accepted_images_are_normalised_without_touching_input():
    f01 = RGB.astype(np.float64) / 255.0
    assert np.array_equal(as_rgb_uint8(f01), RGB)
    assert np.array_equal(as_rgb_uint8(RGB.astype(np.uint16) * 257), RGB)
    rgba = np.dstack([RGB, np.full((16, 16), 255, np.uint8)])
    out = as_rgb_uint8(rgba)
    assert out.shape == (16, 16, 3) and np.array_equal(out, RGB)
    out[0, 0, 0] ^= 1
    assert rgba[0, 0, 0] == RGB[0, 0, 0]  # a copy: the user's data is never modified


def test_labels_checks():
    with pytest.raises(InvalidLabelsError, match="image is 16x16"):
        as_labels(np.zeros((8, 8), np.int32), (16, 16, 3))
    with pytest.raises(InvalidLabelsError, match="non-integer"):
        as_labels(np.full((4, 4), 0.5))
    with pytest.raises(InvalidLabelsError, match="negative"):
        as_labels(np.full((4, 4), -1))
    gaps = np.array([[0, 3], [7, 7]], np.uint16)
    assert as_labels(gaps).dtype == np.int32


# ------------------------------------------- the input check: brightfield H&E tissue or not (issue 15)
def _consep(shared_data):
    return np.asarray(Image.open(shared_data / "consep" / "train_1.jpg").convert("RGB"))[:400, :400]


def test_noise_blank_dark_and_grey_are_refused(shared_data):
    rng = np.random.default_rng(0)
    real = _consep(shared_data)
    cases = {
        "noise": (rng.integers(0, 256, (400, 400, 3), dtype=np.uint8), "noise"),
        "blank": (np.full((400, 400, 3), 238, np.uint8), "blank"),
        "dark": (real // 8, "underexposed"),
        "grey": (np.repeat(real.mean(-1, keepdims=True).astype(np.uint8), 3, -1), "no colour"),
    }
    for name, (img, word) in cases.items():
        with pytest.raises(NotTissueError, match=word):
            pipeline.segment_nuclei(img, 0.25)


def test_12_bit_data_in_16_bits_is_refused(shared_data):
    twelve = _consep(shared_data).astype(np.uint16) * 16  # values up to 4080
    with pytest.raises(InvalidImageError, match="12"):
        as_rgb_uint8(twelve)
    full = twelve * 16  # the same image scaled to the 16-bit range is fine
    assert as_rgb_uint8(full).dtype == np.uint8


def test_fluorescence_like_is_refused():
    from scipy import ndimage as ndi

    rng = np.random.default_rng(2)
    spots = np.zeros((400, 400), np.float32)
    spots[rng.integers(0, 400, 80), rng.integers(0, 400, 80)] = 1.0
    blobs = ndi.gaussian_filter(spots, 4)
    img = np.zeros((400, 400, 3), np.uint8)  # black background, bright blue nuclei (DAPI-like)
    img[..., 2] = np.clip(blobs / blobs.max() * 255 + rng.normal(5, 2, blobs.shape), 0, 255)
    with pytest.raises(InvalidImageError, match="fluorescence"):
        pipeline.segment_nuclei(img, 0.25)


SOURCES = [
    "consep",
    "monuseg",
    "cpm15",
    "gbm40",
    "tcga_lgg",
    "dsb2018_he",
    "monusac",
    "puma",
    "brca_m2c/train",
    "brca_m2c/val",
    "regions/camelyon",
    "regions/bcss",
    "regions/wsss4luad",
    "regions/glas",
    "regions/ebhi",
]


@pytest.mark.parametrize("folder", SOURCES)
def test_real_he_of_every_source_is_accepted(shared_data, folder):
    files = sorted((shared_data / folder).glob("*.jpg"))
    if not files:
        pytest.skip(f"{folder} absent from ../shared/data")
    for f in files[:: max(1, len(files) // 8)]:
        check_he_tissue(np.asarray(Image.open(f).convert("RGB")))


# --------------------------------------------------------- bad images and faults (issue 9)
RNG = np.random.default_rng(9)


def _fluorescence_like(side: int = 128) -> np.ndarray:
    """Black background with bright blue (DAPI-like) round nuclei: a dark-field image."""
    img = RNG.integers(0, 8, (side, side, 3)).astype(np.uint8)
    yy, xx = np.mgrid[:side, :side]
    for cy, cx in RNG.integers(10, side - 10, (15, 2)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 36, 2] = 220
    return img


def test_cmyk_like_four_channel_image_is_refused(tmp_path):
    rgb = RNG.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    cmyk = np.dstack([rgb, RNG.integers(0, 256, (32, 32), dtype=np.uint8)])  # 4th = black ink
    with pytest.raises(InvalidImageError, match="4 channels.*CMYK"):
        validation.as_rgb_uint8(cmyk)
    # A CMYK TIFF is read as stored (4 channels) and refused by the same check.
    tif = tmp_path / "cmyk.tif"
    tifffile.imwrite(tif, cmyk, photometric="separated")
    data, _ = read_image(tif)
    with pytest.raises(InvalidImageError, match="CMYK"):
        pipeline.segment_nuclei(data, 0.5)
    # A CMYK JPEG is converted to RGB by the reader (Pillow knows the colour model).
    jpg = tmp_path / "cmyk.jpg"
    Image.fromarray(rgb).convert("CMYK").save(jpg)
    data, _ = read_image(jpg)
    assert data.shape == (32, 32, 3) and data.dtype == np.uint8


def test_fluorescence_like_image_is_refused_not_segmented():
    img = _fluorescence_like()
    # Without the check the watershed finds the bright blobs on "stained" black background.
    with pytest.raises(InvalidImageError, match="fluorescence"):
        pipeline.segment_nuclei(img, 0.5)
    lab = np.zeros(img.shape[:2], np.int32)
    lab[10:20, 10:20] = 1
    with pytest.raises(InvalidImageError, match="brightfield H&E"):
        pipeline.measure_cells(img, lab, 0.5)
    # Brightfield images pass; an all-black image is not called fluorescence (no nuclei instead).
    validation.check_brightfield(sample_image())
    validation.check_brightfield(np.full((64, 64, 3), 245, np.uint8))
    with pytest.raises(NoNucleiError, match="No nuclei"):
        pipeline.segment_nuclei(np.zeros((64, 64, 3), np.uint8), 0.5)


def test_brightfield_non_he_stain_warns_and_never_crashes():
    """A DAB-brown (IHC-like) field gets a StainWarning saying so; it is never a crash."""
    from napari_uam.sample_data import sample_image
    from napari_uam.validation import StainWarning, check_he_stain

    img = np.full((96, 96, 3), 235, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    for cy, cx in ((20, 20), (50, 60), (75, 30)):
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < 40] = (140, 90, 40)  # DAB brown
    with pytest.warns(StainWarning, match="IHC stain, not H&E"):
        try:
            labels = pipeline.segment_nuclei(img, 0.5, backend="watershed")
            assert labels.shape == (96, 96) and labels.dtype == np.int32
        except NoNucleiError:
            pass
    # Real H&E must not warn.
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)
        assert check_he_stain(sample_image()) is False


def test_huge_image_is_refused_without_allocating(monkeypatch, tmp_path):
    huge = np.broadcast_to(np.zeros(3, np.uint8), (20_000, 20_000, 3))  # 400 Mpx, a 3-byte view
    with pytest.raises(InvalidImageError, match="400 Mpx.*Crop a region"):
        validation.as_rgb_uint8(huge)
    with pytest.raises(InvalidImageError, match="Mpx"):
        pipeline.run(huge, 0.5)
    # RGBA is checked for size before its alpha channel is scanned.
    huge4 = np.broadcast_to(np.full(4, 255, np.uint8), (20_000, 20_000, 4))
    with pytest.raises(InvalidImageError, match="Mpx"):
        validation.as_rgb_uint8(huge4)
    # The reader refuses before decoding: shown with the limit lowered to 1000 pixels.
    monkeypatch.setattr(validation, "MAX_PIXELS", 1000)
    tif, png = tmp_path / "big.tif", tmp_path / "big.png"
    tifffile.imwrite(tif, np.zeros((64, 64, 3), np.uint8))
    Image.fromarray(np.zeros((64, 64, 3), np.uint8)).save(png)
    for path in (tif, png):
        with pytest.raises(InvalidImageError, match=f"{path.name} holds 64x64 pixels.*tiles"):
            read_image(path)


def test_no_stain_warning_on_any_real_he_image(shared_data, monkeypatch):
    """The IHC check stays silent on every H&E image of the development data (150 fields)."""
    from PIL import Image

    from napari_uam.validation import StainWarning, check_he_stain

    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", None)  # the BCSS region of interest is one large field
    paths = sorted(shared_data.glob("**/*.jpg"))
    assert len(paths) > 100
    with warnings.catch_warnings():
        warnings.simplefilter("error", StainWarning)
        for p in paths:
            with Image.open(p) as im:
                assert check_he_stain(np.asarray(im.convert("RGB"))) is False, p.name


# ------------------------------------------------- messages that describe the image (issue 18)
def test_misleading_image_messages_describe_the_image(tmp_path):
    import tifffile

    from napari_uam import pipeline
    from napari_uam.errors import InvalidImageError
    from napari_uam.io.reader import read_image

    rgb = np.asarray(Image.open(SAMPLE_PATH).convert("RGB"))
    grey = rgb.mean(axis=-1).astype(np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", np.stack([grey] * 5))  # 5 grey pages
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    Image.fromarray(np.dstack([grey, np.full_like(grey, 255)]), "LA").save(tmp_path / "grey_alpha.png")

    def message(image) -> str:
        with pytest.raises(InvalidImageError) as err:
            pipeline.run(image, 0.5, device="cpu")
        return str(err.value)

    assert "a stack of 5 single-channel 465x465 planes" in message(read_image(tmp_path / "stack.tif")[0])
    assert "3 channels first" in message(np.moveaxis(rgb, -1, 0))  # a (3, H, W) array
    assert message(read_image(tmp_path / "grey.png")[0]).startswith("Image is grayscale")
    # Grey + alpha is grey too: before, it was converted to a colourless RGB image and accepted.
    assert message(read_image(tmp_path / "grey_alpha.png")[0]).startswith("Image is grayscale with an alpha")
