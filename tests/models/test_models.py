"""Model zoo: registry, shapes, the pure-PyTorch selective scan and the SSM layer (CPU)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from napari_uam.models import ssm
from napari_uam.models import DEFAULT_CONFIG, build_model, count_parameters, list_models, set_ssm_backend
from napari_uam.models.ops import (
    selective_scan_chunked,
    selective_scan_parallel,
    selective_scan_recurrent,
    selective_scan_sequential,
)
from napari_uam.models.ssm import Mamba, resolve_backend

ARCHS = ["uam", "uam-l", "uam-m", "trans", "trans-moe", "mamba", "mamba-moe", "jamba"]
MAMBA_SSM_PARAMS = {
    "in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight", "dt_proj.weight",
    "dt_proj.bias", "A_log", "D", "out_proj.weight",
}  # fmt: skip


def test_registry_names_and_unknown_model():
    assert list_models() == ARCHS
    with pytest.raises(ValueError, match="registered models: uam, uam-l"):
        build_model("resnet", 10, 2)
    with pytest.raises(ValueError, match="Unknown config keys"):
        build_model("uam", 10, 2, width=3)


@pytest.mark.parametrize("arch", ARCHS)
def test_forward_shapes_aux_and_size(arch):
    torch.manual_seed(0)
    model = build_model(arch, 102, 2)
    out = model(torch.randn(5, 102))
    assert out.shape == (5, 2) and torch.isfinite(out).all()
    assert model.aux_loss.ndim == 0
    has_moe = arch in ("uam", "uam-m", "trans-moe", "mamba-moe", "jamba")
    assert (float(model.aux_loss.detach()) > 0) == has_moe
    # Same order of magnitude as the paper's Table 4 (5.5 K .. 16 K weights).
    assert 3_000 < count_parameters(model) < 40_000
    assert model.config["n_features"] == 102 and model.name == arch


def _scan_inputs(b=3, d=6, n=5, length=37, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    return dict(
        u=r(b, d, length),
        delta=r(b, d, length),
        A=-torch.exp(r(d, n)),
        B=r(b, n, length),
        C=r(b, n, length),
        D=r(d),
        z=r(b, d, length),
        delta_bias=r(d),
        delta_softplus=True,
    )


@pytest.mark.parametrize("length", [1, 2, 13, 37, 64])
def test_parallel_scan_matches_sequential_reference(length):
    kw = _scan_inputs(length=length)
    ref = selective_scan_sequential(**kw)
    for fn in (selective_scan_parallel, selective_scan_recurrent, selective_scan_chunked):
        torch.testing.assert_close(fn(**kw), ref, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("length,chunk", [(300, 128), (256, 128), (129, 128), (1000, 7), (5, 1)])
def test_chunked_scan_carries_the_state_across_chunks(length, chunk):
    """The image encoder's long sequences: chunks of every size, the last one partial."""
    kw = _scan_inputs(b=2, d=4, n=3, length=length, seed=1)
    kw["A"] = -torch.exp(kw["A"]) * 0.05  # slow decays: state from early chunks still matters
    ref = selective_scan_sequential(**kw)
    # Both compute in fp32 (as the CUDA kernel); over 1,000 slowly decaying steps the state grows,
    # so the rounding is judged against the output's scale.
    err = (selective_scan_chunked(**kw, chunk=chunk) - ref).abs().max() / ref.abs().max()
    assert err < 2e-6, float(err)


def test_fast_scan_gradients_match_sequential():
    kw = _scan_inputs(length=13, dtype=torch.float32)
    grads = []
    for fn in (selective_scan_sequential, selective_scan_parallel, selective_scan_recurrent, selective_scan_chunked):
        leaves = {k: v.clone().requires_grad_(True) for k, v in kw.items() if torch.is_tensor(v)}
        (fn(**leaves, delta_softplus=True) ** 2).sum().backward()
        grads.append({k: v.grad for k, v in leaves.items()})
    for other in grads[1:]:
        for k in grads[0]:
            torch.testing.assert_close(other[k], grads[0][k], rtol=1e-4, atol=1e-5)


def test_layer_scan_forms_agree():
    torch.manual_seed(0)
    layer = Mamba(16, d_state=8)
    x = torch.randn(4, 13, 16)
    outs = []
    for form in ("parallel", "recurrent", "auto"):
        layer.torch_scan = form
        outs.append(layer(x))
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(outs[2], outs[1])


def test_mamba_layer_has_mamba_ssm_parameter_names_and_shapes():
    layer = Mamba(16, d_state=8, expand=2)
    sd = layer.state_dict()
    assert set(sd) == MAMBA_SSM_PARAMS
    assert sd["in_proj.weight"].shape == (64, 16)
    assert sd["conv1d.weight"].shape == (32, 1, 4)
    assert sd["x_proj.weight"].shape == (1 + 16, 32)
    assert sd["A_log"].shape == (32, 8)
    # S4D-real init and softplus(dt_bias) within [dt_min, dt_max].
    torch.testing.assert_close(-torch.exp(sd["A_log"][0]), -torch.arange(1.0, 9.0))
    dt = torch.nn.functional.softplus(sd["dt_proj.bias"])
    assert (dt >= 1e-4 - 1e-7).all() and (dt <= 0.1 + 1e-6).all()


def test_mamba_layer_is_causal():
    torch.manual_seed(0)
    layer = Mamba(8, d_state=4)
    x = torch.randn(2, 10, 8)
    y = layer(x)
    x2 = x.clone()
    x2[:, 6:] += 1.0  # changing later tokens must not change earlier outputs
    torch.testing.assert_close(layer(x2)[:, :6], y[:, :6])


def test_backend_selection_on_cpu():
    x = torch.zeros(1, 3, 4)
    assert resolve_backend("auto", x) == "torch"
    assert resolve_backend("torch", x) == "torch"
    with pytest.raises(ValueError, match="CUDA"):
        resolve_backend("mamba_ssm", x)
    with pytest.raises(ValueError, match="Unknown SSM backend"):
        build_model("mamba", 10, 2, backend="triton")
    model = set_ssm_backend(build_model("uam", 10, 2), "torch")
    assert all(m.backend == "torch" for m in model.modules() if isinstance(m, Mamba))


def test_default_config_is_small():
    assert DEFAULT_CONFIG["n_blocks"] == 4
    assert count_parameters(build_model("uam", 102, 2)) < 40_000


# ------------------------------------------------ mamba-ssm not installed (issue 9)
def test_mamba_ssm_missing(monkeypatch):
    monkeypatch.setattr(ssm, "mamba_ssm_available", lambda: False)
    on_gpu = SimpleNamespace(is_cuda=True)  # only .is_cuda is consulted
    with pytest.raises(ValueError, match="mamba_ssm is not installed.*backend 'torch'"):
        ssm.resolve_backend("mamba_ssm", on_gpu)
    assert ssm.resolve_backend("auto", on_gpu) == "torch"
    with pytest.raises(ValueError, match="needs CUDA tensors; use 'torch' on the CPU"):
        ssm.resolve_backend("mamba_ssm", torch.zeros(1))
