"""Recipe v4's GPU-side JPEG simulation against a real PIL / libjpeg round trip (CPU)."""

from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

QUALITIES = (30, 50, 75, 90, 95)


def _pil_round_trip(rgb: np.ndarray, quality: int) -> tuple[np.ndarray, object]:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)  # PIL's default: 4:2:0
    im = Image.open(buf)
    return np.array(im.convert("RGB")), im


def _sim(rgb: np.ndarray, quality: int) -> np.ndarray:
    from research.segmentation.train_learned import jpeg_compress

    x = torch.from_numpy(rgb).permute(2, 0, 1)[None].float() / 255.0
    out = jpeg_compress(x, quality)[0].permute(1, 2, 0).numpy()
    return np.round(out * 255.0).astype(np.uint8)


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255.0**2 / max(mse, 1e-12)))


def _synthetic_he(h: int = 203, w: int = 261, seed: int = 0) -> np.ndarray:
    """Pink background with dark purple blobs and fine texture; sides not multiples of 16."""
    from scipy import ndimage as ndi

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    nuc = np.zeros((h, w))
    for cy, cx, r in zip(rng.uniform(0, h, 40), rng.uniform(0, w, 40), rng.uniform(4, 11, 40)):
        nuc = np.maximum(nuc, np.exp(-((((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r**2)) ** 2)))
    texture = ndi.gaussian_filter(rng.normal(size=(h, w, 3)), (1.5, 1.5, 0)) * 40
    pink, purple = np.array([235, 170, 205]), np.array([80, 40, 140])
    img = pink * (1 - nuc[..., None]) + purple * nuc[..., None] + texture
    return np.clip(img + rng.normal(0, 3, img.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("quality", QUALITIES)
def test_quantisation_tables_are_libjpegs(quality):
    from research.segmentation.train_learned import jpeg_tables

    _, im = _pil_round_trip(_synthetic_he(32, 32), quality)
    luma, chroma = jpeg_tables(quality)
    assert np.array_equal(np.array(im.quantization[0]).reshape(8, 8), luma)
    assert np.array_equal(np.array(im.quantization[1]).reshape(8, 8), chroma)


def _check(rgb: np.ndarray, quality: int) -> None:
    pil, _ = _pil_round_trip(rgb, quality)
    sim = _sim(rgb, quality)
    assert sim.shape == rgb.shape
    # As lossy as libjpeg at the same quality (PSNR to the original within 0.5 dB) ...
    assert abs(_psnr(sim, rgb) - _psnr(pil, rgb)) < 0.5, (_psnr(sim, rgb), _psnr(pil, rgb))
    # ... and close to libjpeg's own output: far closer than either is to the original.
    assert _psnr(sim, pil) > 40.0
    assert _psnr(sim, pil) > _psnr(pil, rgb) + 3.0
    assert np.abs(sim.astype(float) - pil).mean() < 1.2
    assert abs((sim.astype(float) - pil).mean()) < 0.3  # no colour or brightness bias


@pytest.mark.parametrize("quality", QUALITIES)
def test_simulation_matches_pil_on_synthetic_he(quality):
    _check(_synthetic_he(), quality)


@pytest.mark.parametrize("quality", (30, 60, 90))
def test_simulation_matches_pil_on_real_he(quality, consep_dir):
    rgb = np.array(Image.open(consep_dir / "train_1.jpg").convert("RGB"))
    # Off the 8x8 grid of the file's own JPEG blocks: recompressing aligned blocks at the
    # file's own tables is nearly idempotent, which would test nothing.
    _check(np.ascontiguousarray(rgb[3:259, 5:305]), quality)


def test_augment_compresses_the_share_asked():
    from research.segmentation.train_learned import jpeg_augment

    x = torch.from_numpy(np.stack([_synthetic_he(64, 64, s) for s in range(8)])).permute(0, 3, 1, 2).float() / 255
    gen = torch.Generator().manual_seed(0)
    assert torch.equal(jpeg_augment(x, gen, p=0.0), x)
    y = jpeg_augment(x, gen, p=1.0, quality=(30, 40))
    assert y.shape == x.shape and float(y.min()) >= 0.0 and float(y.max()) <= 1.0
    assert all(not torch.equal(y[i], x[i]) for i in range(len(x)))
