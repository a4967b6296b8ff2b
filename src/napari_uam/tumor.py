"""Tumor-region masks: the multimodal (SSMamba image + UAM cells) model at inference.

>>> prob = predict_tumor_mask(image, mpp=0.5, table=cell_table)   # (H, W) float32 in [0, 1]
>>> mask = prob > 0.5

The model works at :data:`WORK_MPP`-style reduced resolution (the checkpoint's ``work_mpp``,
2 um/px): the image is resampled there, padded to a multiple of 32, the mask logits are
computed and the probabilities are upsampled bilinearly back to the image's own size, so the
output overlays the image whatever its (odd) size.

A tumor-mask checkpoint is self-contained: besides its weights it stores a full copy of the
UAM cell-classifier checkpoint it was trained with (``cell_encoder``: weights, normaliser,
feature names, schema id), so a later change of the default cell classifier cannot break it.

Checkpoint keys: ``format`` (``"napari-uam/tumor-mask"``), ``format_version``, ``config``
(:class:`~napari_uam.models.multimodal.TumorRegionNet` arguments), ``state_dict``,
``stored_dtype`` (``"float32"`` or ``"float16"``: the weights load into a float32 model either
way; absent in older files = float32), ``work_mpp``, ``cell_encoder`` (a cell-classifier checkpoint dict, or None for image-only
models), ``training``, ``metrics``, ``model_id``, ``created``, ``versions``, ``n_parameters``.
"""

from __future__ import annotations

import datetime as _dt
import os
import tempfile
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pandas as pd

from .classify.cache import weights_cache
from .classify.checkpoint import CellClassifier, _plain, _versions, file_sha256, load_checkpoint_dict
from .device import resolve_device
from .errors import CheckpointError, InvalidLabelsError, WeightsNotFoundError
from .validation import as_rgb_uint8

FORMAT = "napari-uam/tumor-mask"
FORMAT_VERSION = 1
#: File name of the shipped tumor-mask weights in ``napari_uam/weights/``.
DEFAULT_TUMOR_WEIGHTS = "tumor_mask.pt"
#: Default working pixel size of the region models (um/px).
WORK_MPP = 2.0


def default_tumor_weights_path() -> Path:
    """Path of the shipped tumor-mask checkpoint (may be absent in a source checkout)."""
    return Path(__file__).resolve().parent / "weights" / DEFAULT_TUMOR_WEIGHTS


def tumor_weights_available(path=None) -> bool:
    """Whether a tumor-mask checkpoint exists at ``path`` (default: the shipped one)."""
    return Path(path or default_tumor_weights_path()).is_file()


def save_tumor_checkpoint(
    path,
    model,
    *,
    work_mpp: float,
    cell_encoder: dict | None,
    training: dict | None = None,
    metrics: dict | None = None,
    model_id: str | None = None,
    half: bool = False,
) -> str:
    """Write a tumor-mask checkpoint atomically; returns its SHA-256.

    Args:
        path: destination ``.pt``.
        model: a :class:`~napari_uam.models.multimodal.TumorRegionNet`.
        work_mpp: pixel size the model works at.
        cell_encoder: the UAM cell-classifier checkpoint dict (required when the model uses cells).
        training, metrics: model-card dicts.
        half: store the floating-point weights as float16 (half the file; they load back
            into the float32 model). Re-measure held-out metrics on the stored file when
            using it (``benchmarks/multimodal_bench.py --half-weights`` does).
    """
    import torch

    if model.use_cells and cell_encoder is None:
        raise ValueError("a multimodal tumor model needs its cell_encoder checkpoint")
    cfg = _plain(model.config)
    cfg["encoder"]["backend"] = "auto"  # a runtime choice, not architecture
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": cfg,
        "state_dict": {k: _stored(v, half) for k, v in model.state_dict().items()},
        "stored_dtype": "float16" if half else "float32",
        "work_mpp": float(work_mpp),
        "cell_encoder": cell_encoder if model.use_cells else None,
        "training": _plain(training or {}),
        "metrics": _plain(metrics or {}),
        "model_id": model_id or Path(path).stem,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def _stored(t, half: bool):
    import torch

    t = t.detach().to("cpu")
    return t.to(torch.float16) if half and t.is_floating_point() else t.clone()


def read_tumor_checkpoint(path) -> dict:
    """Load and validate a tumor-mask checkpoint dict.

    Raises:
        CheckpointError: missing, damaged or of another format / version.
    """
    return load_checkpoint_dict(
        path,
        what="tumor-mask checkpoint",
        fmt=FORMAT,
        version=FORMAT_VERSION,
        hint="Retrain it (python benchmarks/multimodal_bench.py --train).",
    )


class TumorMaskModel:
    """A loaded tumor-region model (image-only or multimodal) for inference.

    Attributes:
        model: the :class:`~napari_uam.models.multimodal.TumorRegionNet` (eval mode).
        cell_encoder: the stored UAM :class:`~napari_uam.classify.checkpoint.CellClassifier`
            (None for image-only models).
        work_mpp: working pixel size (um/px).
        uses_cells: whether predictions need a measured cell table.
        card: the checkpoint without its weights.
    """

    def __init__(self, ckpt: dict, device: str = "auto", backend: str | None = None, path=None):
        from .models.multimodal import TumorRegionNet
        from .models.ssm import set_ssm_backend

        self.device = resolve_device(device)
        try:
            self.model = TumorRegionNet(**ckpt["config"])
            self.model.load_state_dict(ckpt["state_dict"], strict=True)
        except (TypeError, RuntimeError, KeyError) as err:
            raise CheckpointError(f"The tumor-mask weights do not fit the model ({err}); retrain them.") from err
        if backend is not None:
            set_ssm_backend(self.model, backend)
        self.model = self.model.eval().to(self.device)
        self.uses_cells = bool(ckpt["config"].get("use_cells"))
        self.cell_encoder = (
            CellClassifier(ckpt["cell_encoder"], device=self.device, backend=backend) if self.uses_cells else None
        )
        self.work_mpp = float(ckpt["work_mpp"])
        self.model_id = ckpt.get("model_id", "tumor_mask")
        self.card = {k: v for k, v in ckpt.items() if k not in ("state_dict", "cell_encoder")}
        self.path = None if path is None else str(path)

    def __repr__(self) -> str:
        kind = "multimodal" if self.uses_cells else "image-only"
        return f"TumorMaskModel({self.model_id!r}, {kind}, work_mpp={self.work_mpp}, device={self.device!r})"

    def cell_inputs(self, table):
        """(n, F_c) UAM cell vectors and (n, 2) centroids (y, x, image pixels) of a measured table."""
        from .models.multimodal import uam_cell_inputs

        if table is None or not {"y", "x"} <= set(table.columns):
            raise InvalidLabelsError("The multimodal tumor model needs the measured cell table (Measure cells first).")
        vec = uam_cell_inputs(self.cell_encoder, table[self.cell_encoder.feature_names])
        return vec, table[["y", "x"]].to_numpy(dtype=np.float32)

    def predict(self, image, mpp: float, table=None, cell_vectors=None, cell_yx=None) -> np.ndarray:
        """Tumor probability of every pixel.

        Args:
            image: (H, W, 3) RGB H&E image.
            mpp: its pixel size (um/px).
            table: measured cell table (label, y, x, features...) of this image; needed by
                multimodal models unless ``cell_vectors`` / ``cell_yx`` are given.
            cell_vectors: optional precomputed (n, F_c) UAM cell vectors.
            cell_yx: (n, 2) centroids in image pixels for ``cell_vectors``.

        Returns:
            (H, W) float32 probabilities in [0, 1].
        """
        rgb = as_rgb_uint8(image)
        if self.uses_cells and cell_vectors is None:
            cell_vectors, cell_yx = self.cell_inputs(table)
        return predict_probability(self.model, rgb, float(mpp), self.work_mpp, cell_vectors, cell_yx, self.device)


def predict_probability(
    model, rgb: np.ndarray, mpp: float, work_mpp: float, cell_vectors=None, cell_yx=None, device: str = "cpu"
) -> np.ndarray:
    """Run a :class:`TumorRegionNet` on one whole image; (H, W) float32 probabilities.

    The image is resampled to ``work_mpp`` (area-averaged), reflect-padded to a multiple of
    32, and the probabilities are cropped and upsampled bilinearly to the input size.
    """
    import torch
    import torch.nn.functional as F

    from .models.multimodal import standardise

    h, w = rgb.shape[:2]
    f = mpp / work_mpp
    hw, ww = max(int(round(h * f)), 1), max(int(round(w * f)), 1)
    x = torch.from_numpy(np.array(rgb, dtype=np.float32)).permute(2, 0, 1)[None]
    x = (
        F.interpolate(x, size=(hw, ww), mode="area")
        if f < 1
        else F.interpolate(x, size=(hw, ww), mode="bilinear", align_corners=False)
    )
    ph, pw = -hw % 32, -ww % 32
    x = standardise(x)
    # Reflect padding needs pad < size; tiny images fall back to replicate.
    mode = "reflect" if ph < hw and pw < ww else "replicate"
    x = F.pad(x, (0, pw, 0, ph), mode=mode).to(device)
    kwargs = {}
    if model.use_cells:
        n = 0 if cell_vectors is None else len(cell_vectors)
        vec = torch.from_numpy(
            np.array(cell_vectors if n else np.zeros((0, model.config["cell_features"])), dtype=np.float32)
        )
        pos = torch.from_numpy(np.array(cell_yx if n else np.zeros((0, 2)), dtype=np.float32))
        pos = (pos + 0.5) * torch.tensor([hw / h, ww / w]) - 0.5
        kwargs = {
            "cell_pos": pos[None].to(device),
            "cell_feat": vec[None].to(device),
            "cell_valid": torch.ones(1, n, dtype=torch.bool, device=device),
        }
    with torch.no_grad():
        logits, _ = model(x, **kwargs)
        p = torch.sigmoid(logits[..., :hw, :ww].float())
        p = F.interpolate(p, size=(h, w), mode="bilinear", align_corners=False)
    return p[0, 0].clamp(0, 1).cpu().numpy().astype(np.float32)


def load_tumor_model(path=None, device: str = "auto") -> TumorMaskModel:
    """Load a tumor-mask checkpoint (default: the shipped weights), cached per file identity/device.

    Raises:
        WeightsNotFoundError: no path given and no shipped weights.
        CheckpointError: damaged or foreign file.
    """
    if path is None:
        path = default_tumor_weights_path()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"The tumor-mask weights are not installed ({path} is missing). Reinstall "
                "napari-uam (`pip install --force-reinstall napari-uam`) or choose a tumor-mask checkpoint."
            )
    device = resolve_device(device)
    return weights_cache.get(
        "tumor_mask",
        path,
        device,
        lambda: TumorMaskModel(read_tumor_checkpoint(str(path)), device=device, path=str(path)),
    )


def predict_tumor_mask(
    image,
    mpp: float,
    table=None,
    *,
    model=None,
    device: str = "auto",
    progress: Optional[Callable[[str, float], None]] = None,
) -> np.ndarray:
    """Per-pixel tumor probability of an H&E image at its own resolution.

    Args:
        image: (H, W, 3) RGB.
        mpp: microns per pixel of ``image``.
        table: the image's measured cell table (``label, y, x, ...features``); required by
            multimodal models.
        model: None (shipped weights), a checkpoint path or a loaded :class:`TumorMaskModel`.
        device: ``"auto"``, ``"cuda"`` or ``"cpu"``.
        progress: optional ``progress("tumor mask", fraction)``.

    Returns:
        (H, W) float32 probabilities; threshold at 0.5 for a mask.
    """
    if progress is not None:
        progress("tumor mask", 0.0)
    tm = model if isinstance(model, TumorMaskModel) else load_tumor_model(model, device)
    prob = tm.predict(image, mpp, table)
    if progress is not None:
        progress("tumor mask", 1.0)
    return prob


def cells_in_mask(labels: np.ndarray, mask: np.ndarray):
    """The paper's image-based cell classification: a nucleus is tumor (1) when more than
    50 % of its pixels lie in ``mask`` (the one home of this rule: training labels from region
    masks, annotation from a drawn region and the Figure 4 comparison all use it).

    Args:
        labels: (H, W) int instance map.
        mask: (H, W) bool (or 0/255) tumor region, same shape.

    Returns:
        int Series indexed by label.
    """
    lab = np.asarray(labels).ravel()
    inside = (np.asarray(mask) > 0).ravel()
    keep = lab > 0
    n = int(lab.max()) + 1 if lab.size else 1
    total = np.bincount(lab[keep], minlength=n)
    hit = np.bincount(lab[keep], weights=inside[keep].astype(np.float64), minlength=n)
    ids = np.flatnonzero(total)
    return pd.Series((hit[ids] / total[ids] > 0.5).astype(np.int64), index=pd.Index(ids, name="label"))
