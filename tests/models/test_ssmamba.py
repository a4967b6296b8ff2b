"""SSMamba encoder (LPR, DMS, 4 stages) and MAMIM: shapes, backend parity, masking."""

from __future__ import annotations

import pytest
import torch

from napari_uam.models.ssm import Mamba, set_ssm_backend
from napari_uam.models.ssmamba import (
    DMS,
    LPR,
    MAMIMDecoder,
    SSMambaEncoder,
    mamim_loss,
    random_patch_mask,
)

SMALL = {"widths": (8, 16, 16, 24), "depths": (1, 1, 1, 1), "d_state": 4}


def test_lpr_and_dms_keep_shapes_and_mix_both_directions():
    torch.manual_seed(0)
    x = torch.randn(2, 8, 5, 7)
    assert LPR(8)(x).shape == x.shape
    dms = DMS(8, d_state=4, backend="torch").eval()
    t = torch.randn(1, 20, 8)
    y = dms(t)
    assert y.shape == t.shape
    # Non-causal: changing the last token changes earlier outputs (a causal Mamba could not).
    t2 = t.clone()
    t2[0, -1] += torch.randn(8)  # not a constant: LayerNorm would remove it
    diff = (dms(t2) - y).abs().amax(-1)[0]
    assert diff[:-1].max() > 1e-3
    # ... also beyond the reach of the centred Conv1D (2 tokens): the reverse-direction scan path.
    assert diff[:-3].max() > 1e-7


def test_encoder_pyramid_shapes_for_non_square_input():
    enc = SSMambaEncoder(**SMALL, backend="torch").eval()
    feats = enc(torch.randn(1, 3, 64, 96))
    assert [tuple(f.shape) for f in feats] == [(1, 8, 16, 24), (1, 16, 8, 12), (1, 16, 4, 6), (1, 24, 2, 3)]
    # Every DMS uses the shared Mamba layer (one state_dict for both scan backends).
    assert sum(isinstance(m, Mamba) for m in enc.modules()) == 2 * sum(SMALL["depths"])


def test_encoder_torch_scan_forms_agree():
    """The recurrent (CPU default) and parallel (GPU fallback) PyTorch scans give one function."""
    torch.manual_seed(1)
    enc = SSMambaEncoder(**SMALL, backend="torch").eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        a = [f.clone() for f in set_ssm_backend(enc, "torch", "recurrent")(x)]
        b = [f.clone() for f in set_ssm_backend(enc, "torch", "parallel")(x)]
        c = set_ssm_backend(enc, "torch", "chunked")(x)  # the CPU form of long sequences
    for fa, fb, fc in zip(a, b, c):
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-4)
        torch.testing.assert_close(fa, fc, rtol=1e-4, atol=1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and mamba_ssm")
def test_shipped_tumor_mask_is_the_same_on_cpu_and_gpu():
    """What the CPU computes (chunked torch scan) and what the GPU computes (mamba_ssm kernel)
    for the shipped tumor-mask weights on the shipped sample: one function."""
    import numpy as np

    from napari_uam.models.ops import mamba_ssm_available
    from napari_uam.sample_data import sample_image
    from napari_uam.tumor import default_tumor_weights_path, predict_tumor_mask, read_tumor_checkpoint
    from napari_uam.tumor import TumorMaskModel

    if not mamba_ssm_available():
        pytest.skip("mamba_ssm not installed")
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    image = sample_image()
    ckpt = read_tumor_checkpoint(str(default_tumor_weights_path()))
    cpu = predict_tumor_mask(image, 0.5, model=TumorMaskModel(ckpt, device="cpu"), device="cpu")
    gpu = predict_tumor_mask(image, 0.5, model=TumorMaskModel(ckpt, device="cuda"), device="cuda")
    assert np.abs(cpu - gpu).max() < 1e-4
    assert ((cpu > 0.5) == (gpu > 0.5)).mean() > 0.9999


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA and mamba_ssm")
def test_encoder_mamba_ssm_matches_torch_backend():
    from napari_uam.models.ops import mamba_ssm_available

    if not mamba_ssm_available():
        pytest.skip("mamba_ssm not installed")
    # Full fp32 everywhere, so that only the scan implementation differs between the two runs.
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    torch.manual_seed(2)
    enc = SSMambaEncoder(**SMALL).cuda().eval()
    x = torch.randn(2, 3, 64, 64, device="cuda")
    with torch.no_grad():
        a = [f.clone() for f in set_ssm_backend(enc, "mamba_ssm")(x)]
        b = set_ssm_backend(enc, "torch", "parallel")(x)
    for fa, fb in zip(a, b):
        torch.testing.assert_close(fa, fb, rtol=1e-4, atol=1e-5)


def test_patch_mask_hides_exactly_75_percent_of_patches():
    g = torch.Generator().manual_seed(0)
    m = random_patch_mask(3, 16, 16, patch_tokens=4, ratio=0.75, generator=g)
    assert m.shape == (3, 1, 16, 16)
    patches = m[:, 0, ::4, ::4]
    assert patches.float().mean(dim=(1, 2)).tolist() == [0.75] * 3
    # Each patch is all masked or all visible.
    assert torch.equal(m, patches.repeat_interleave(4, 1).repeat_interleave(4, 2)[:, None])


def test_mamim_learns_to_reconstruct():
    """A few MAMIM steps lower the masked-patch reconstruction loss on a fixed textured batch."""
    torch.manual_seed(3)
    enc = SSMambaEncoder(**SMALL, backend="torch")
    set_ssm_backend(enc, "torch", "parallel")
    dec = MAMIMDecoder(enc.widths, d=16, d_state=4, backend="torch")
    set_ssm_backend(dec, "torch", "parallel")
    yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
    x = torch.stack([torch.sin(xx / 3), torch.cos(yy / 4), torch.sin((xx + yy) / 5)])[None].repeat(2, 1, 1, 1)
    opt = torch.optim.Adam(list(enc.parameters()) + list(dec.parameters()), lr=3e-3)
    losses = []
    for step in range(12):
        loss = mamim_loss(enc, dec, x, generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert enc.mask_token.grad is not None and enc.mask_token.grad.abs().sum() > 0
    assert sum(losses[-3:]) / 3 < 0.8 * sum(losses[:3]) / 3, losses
