"""GPU parity of the pure-PyTorch selective scan against mamba_ssm's CUDA kernels.

    PYTHONPATH=src python benchmarks/gpu_parity.py --tables .gpu_data --out parity.json

Checks (all in fp32 with TF32 disabled, so that differences are the kernels' own):

1. Random inputs: our :class:`napari_uam.models.ssm.Mamba` (torch backend) against
   ``mamba_ssm.Mamba`` loaded with the same state_dict, forward output and the gradients of the
   input and every parameter; and our layer's two backends against each other.
2. Real feature batches: the shipped UAM checkpoint run with both backends on normalised
   cells of the cell tables (logits and parameter gradients).
3. Checkpoints across backends: a UAM trained for one epoch with one backend predicts the
   same probabilities with the other (and on the CPU), max |difference| < 1e-5.

Error measure: max |a - b| / max |b| over a tensor (relative to the tensor's scale; elementwise
ratios are meaningless at zero crossings). Exits 0 with ``"skipped"`` when CUDA or mamba_ssm
is absent; non-zero when a check fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO))  # research/

TOL = 1e-5


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = a.detach().double(), b.detach().double()
    scale = b.abs().max().item()
    diff = (a - b).abs().max().item()
    return diff / scale if scale > 0 else diff


def why_unavailable() -> str | None:
    """None when the parity checks can run, else the reason."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch"
    try:
        import mamba_ssm  # noqa: F401
    except Exception as err:  # noqa: BLE001 (report any import failure)
        return f"mamba_ssm not importable: {type(err).__name__}: {err}"
    from napari_uam.models.ops import mamba_ssm_available

    if not mamba_ssm_available():
        return "mamba_ssm.ops.selective_scan_interface not importable"
    return None


def _exact_fp32():
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def _grads(module, x, seed=0):
    """Output and gradients (input + parameters) of sum(out * fixed random weights)."""
    x = x.clone().requires_grad_(True)
    module.zero_grad(set_to_none=True)
    out = module(x)
    g = torch.Generator(device=out.device).manual_seed(seed)
    w = torch.randn(out.shape, generator=g, device=out.device)
    (out * w).sum().backward()
    grads = {"input": x.grad}
    grads.update({n: p.grad for n, p in module.named_parameters() if p.grad is not None})
    return out, grads


def check_random_layers() -> list[dict]:
    """Our Mamba layer vs mamba_ssm.Mamba on random inputs (several sizes)."""
    from mamba_ssm import Mamba as RefMamba

    from napari_uam.models.ssm import Mamba

    rows = []
    for d_model, d_state, expand, length, batch in [
        (16, 8, 1, 13, 64),
        (16, 16, 2, 13, 256),
        (32, 16, 2, 64, 32),
        (8, 4, 2, 7, 1000),
    ]:
        torch.manual_seed(0)
        ours = Mamba(d_model, d_state=d_state, expand=expand, backend="torch").cuda()
        ref = RefMamba(d_model, d_state=d_state, expand=expand).cuda()
        ref.load_state_dict(ours.state_dict())  # same names and shapes: loads strictly
        x = torch.randn(batch, length, d_model, device="cuda")
        out_t, g_t = _grads(ours, x)
        out_r, g_r = _grads(ref, x)
        ours.backend = "mamba_ssm"
        out_k, g_k = _grads(ours, x)
        row = {
            "case": f"random d_model={d_model} d_state={d_state} expand={expand} L={length} B={batch}",
            "fwd_torch_vs_mamba_ssm.Mamba": rel_err(out_t, out_r),
            "grad_torch_vs_mamba_ssm.Mamba": max(rel_err(g_t[k], g_r[k]) for k in g_r),
            "fwd_backends": rel_err(out_t, out_k),
            "grad_backends": max(rel_err(g_t[k], g_k[k]) for k in g_k),
        }
        rows.append(row)
    return rows


def _real_batch(tables: Path, normalizer, feature_names, n=4096):
    import pandas as pd

    frames = [pd.read_parquet(p) for p in sorted(Path(tables).glob("*.parquet"))]
    df = pd.concat(frames, ignore_index=True).sample(n=n, random_state=0)
    x = normalizer.transform(df[feature_names].to_numpy(np.float64))
    return torch.from_numpy(x), torch.from_numpy(df["target"].to_numpy(np.int64)), df


def check_real_batches(tables: Path, ckpt_path: Path) -> list[dict]:
    """The shipped UAM on real cells with both backends: logits and parameter gradients."""
    from napari_uam.models import set_ssm_backend
    from napari_uam.classify.checkpoint import build_from_checkpoint, read_checkpoint
    from napari_uam.classify.normalize import Normalizer

    ck = read_checkpoint(ckpt_path)
    model = build_from_checkpoint(ck).cuda()
    x, _, _ = _real_batch(tables, Normalizer.from_dict(ck["normalization"]), ck["feature_names"])
    x = x.cuda()
    res = {}
    for backend in ("torch", "mamba_ssm"):
        set_ssm_backend(model, backend)
        model.zero_grad(set_to_none=True)
        logits = model(x)
        logits.logsumexp(-1).sum().backward()
        res[backend] = (logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (lt, gt), (lk, gk) = res["torch"], res["mamba_ssm"]
    return [{
        "case": f"real cells: {ck['arch']} checkpoint, 4096 cells",
        "fwd_backends": rel_err(lt, lk),
        "grad_backends": max(rel_err(gt[k], gk[k]) for k in gk),
    }]  # fmt: skip


def check_checkpoint_transfer(tables: Path) -> list[dict]:
    """Train UAM 1 epoch with each backend; predict with the other (GPU) and on the CPU."""
    from napari_uam.classify.checkpoint import load_classifier, save_checkpoint
    from napari_uam.classify.normalize import Normalizer
    from napari_uam.training.splits import CLASS_NAMES
    from research.cells.trainer import TrainConfig, train_model
    from napari_uam.radiomics.schema import DEFAULT_SCHEMA

    import pandas as pd

    feats = list(DEFAULT_SCHEMA.feature_names)
    df = pd.concat([pd.read_parquet(p) for p in sorted(Path(tables).glob("*.parquet"))], ignore_index=True)
    df = df.sample(n=min(len(df), 6000), random_state=1)
    norm = Normalizer.fit(df[feats].to_numpy(np.float64))
    x = norm.transform(df[feats].to_numpy(np.float64))
    y = df["target"].to_numpy(np.int64)
    rows = []
    for train_backend, other in (("mamba_ssm", "torch"), ("torch", "mamba_ssm")):
        cfg = TrainConfig(arch="uam", max_epochs=1, device="cuda", seed=0, model={"backend": train_backend})
        res = train_model(x[:5000], y[:5000], x[5000:], y[5000:], 2, cfg)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "m.pt"
            save_checkpoint(
                path,
                res.model.cpu(),
                feature_names=feats,
                schema_id=DEFAULT_SCHEMA.schema_id,
                mpp=DEFAULT_SCHEMA.mpp,
                class_names=CLASS_NAMES,
                tumor_class=1,
                normalizer=norm,
            )
            table = df[feats].iloc[5000:]
            p_same = load_classifier(path, device="cuda", backend=train_backend).predict_proba(table)
            p_other = load_classifier(path, device="cuda", backend=other).predict_proba(table)
            p_cpu = load_classifier(path, device="cpu").predict_proba(table)
        rows.append({
            "case": f"UAM trained with {train_backend}, predicted with {other} (CUDA) and torch (CPU)",
            "max_prob_diff_other_backend": float(np.abs(p_same - p_other).max()),
            "max_prob_diff_cpu": float(np.abs(p_same - p_cpu).max()),
        })  # fmt: skip
    return rows


def run_all(tables: Path, ckpt: Path) -> dict:
    """All checks; returns {"ok": bool, "rows": [...]} or {"skipped": reason}."""
    reason = why_unavailable()
    if reason:
        return {"skipped": reason}
    _exact_fp32()
    t0 = time.perf_counter()
    rows = check_random_layers()
    if ckpt.is_file() and any(Path(tables).glob("*.parquet")):
        rows += check_real_batches(tables, ckpt)
        rows += check_checkpoint_transfer(tables)
    else:
        rows.append({"case": f"real-cell checks skipped: no tables in {tables} or no checkpoint {ckpt}"})
    ok = all(v < TOL for r in rows for k, v in r.items() if k != "case")
    return {
        "ok": ok,
        "tolerance": TOL,
        "rows": rows,
        "seconds": time.perf_counter() - t0,
        "device": torch.cuda.get_device_name(0),
        "torch": torch.__version__,
    }


def main(argv=None) -> int:
    from napari_uam.classify.checkpoint import default_weights_path

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--tables", default=str(REPO / ".gpu_data"), help="folder of cell-table parquet files")
    p.add_argument("--checkpoint", default=str(default_weights_path()))
    p.add_argument("--out", default=None, help="JSON report path")
    a = p.parse_args(argv)
    res = run_all(Path(a.tables), Path(a.checkpoint))
    text = json.dumps(res, indent=1)
    print(text)
    if a.out:
        Path(a.out).write_text(text)
    return 0 if res.get("skipped") or res["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())
