"""Training loop shared by every architecture: AdamW, class-weighted cross-entropy + MoE
balance loss, early stopping on validation AUC, seeded and deterministic on the CPU.

The recipes' loop (LOSO, the shipped classifier, the paper's tables); cancelling raises the
package's one :class:`napari_uam.errors.CancelledError`."""

from __future__ import annotations

import contextlib

import copy
import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from napari_uam.errors import CancelledError
from napari_uam.models import build_model
from napari_uam.training.metrics import classification_metrics
from napari_uam.training.trainer import predict_proba, set_seed

__all__ = ["TrainConfig", "TrainResult", "predict_proba", "set_seed", "train_model"]


@dataclass
class TrainConfig:
    """Settings of one training run.

    Attributes:
        arch: registry name of the model.
        model: overrides of the model config (see ``napari_uam.models.DEFAULT_CONFIG``).
        lr: AdamW learning rate. The paper uses 1e-4; for these ~10^4-weight models 1e-3
            reaches a better validation AUC within the few epochs we can afford (chosen on
            validation, see docs/results.md).
        weight_decay: AdamW weight decay.
        batch_size: cells per step (the paper's 64).
        max_epochs: upper bound on epochs.
        patience: epochs without validation improvement before stopping.
        aux_weight: weight of the MoE load-balancing loss.
        class_weights: weight the cross-entropy by inverse class frequency.
        seed: seeds weights init and batch order.
        device: "cpu" / "cuda" / "auto".
        eval_batch: cells per forward pass at evaluation.
        max_seconds: wall-clock budget of the run: when crossed, the current epoch ends early,
            is evaluated, and training stops (None: no limit).
    """

    arch: str = "uam"
    model: dict = field(default_factory=dict)
    lr: float = 1e-3
    weight_decay: float = 0.01
    batch_size: int = 64
    max_epochs: int = 30
    patience: int = 5
    aux_weight: float = 0.01
    class_weights: bool = True
    seed: int = 0
    device: str = "cpu"
    eval_batch: int = 8192
    max_seconds: float | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    """Outcome of :func:`train_model`: the best model (by validation) and its history."""

    model: torch.nn.Module
    history: list
    best_epoch: int
    val_metrics: dict
    seconds: float
    epoch_seconds: float
    config: dict


@contextlib.contextmanager
def flush_denormals():
    """Flush denormal floats to zero while training, then restore IEEE behaviour.

    Tiny decays of the SSM scan otherwise hit slow denormal paths; the setting is global CPU
    state, so leaving it on would change every later float computation of the process (the
    napari session of a user who trained from the dock, or hypothesis' subnormal floats).
    """
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def train_model(*args, **kwargs) -> TrainResult:
    """Train ``config.arch`` with early stopping (see :func:`_train_model` for the arguments)."""
    with flush_denormals():
        return _train_model(*args, **kwargs)


def _train_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    n_classes: int,
    config: TrainConfig,
    progress: Callable[[dict], None] | None = None,
    cancel: Callable[[], bool] | None = None,
    positive: int = 1,
) -> TrainResult:
    """Train ``config.arch`` with early stopping; returns the weights of the best validation epoch.

    Args:
        x_train, x_val: (n, F) float32 normalised features.
        y_train, y_val: (n,) int labels in 0..n_classes-1.
        n_classes: number of classes.
        config: the run settings.
        progress: called after every epoch with a dict (epoch, loss, aux, val metrics, seconds).
        cancel: polled between steps; returning True raises :class:`~napari_uam.errors.CancelledError`.
        positive: class whose AUC drives early stopping (the tumor class).

    Returns:
        :class:`TrainResult` (model in eval mode, on ``config.device``).
    """
    from napari_uam.device import resolve_device

    device = resolve_device(config.device)
    set_seed(config.seed)
    model = build_model(config.arch, x_train.shape[1], n_classes, **config.model).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    counts = np.bincount(y_train, minlength=n_classes).astype(np.float64)
    if config.class_weights:
        w = len(y_train) / (n_classes * np.maximum(counts, 1.0))
    else:
        w = np.ones(n_classes)
    weight = torch.tensor(w, dtype=torch.float32, device=device)
    xt = torch.from_numpy(np.ascontiguousarray(x_train, dtype=np.float32)).to(device)
    yt = torch.from_numpy(np.array(y_train, dtype=np.int64)).to(device)
    rng = np.random.default_rng(config.seed)
    history, best, best_state, best_epoch, bad = [], -np.inf, None, 0, 0
    t0 = time.perf_counter()
    epoch_times = []

    def out_of_time() -> bool:
        return config.max_seconds is not None and time.perf_counter() - t0 > config.max_seconds

    for epoch in range(1, config.max_epochs + 1):
        te = time.perf_counter()
        model.train()
        order = torch.from_numpy(rng.permutation(len(xt))).to(device)
        # Sums stay on the device: a .item() per step would synchronise CUDA every step.
        tot, tot_aux, nb = torch.zeros((), device=device), torch.zeros((), device=device), 0
        for lo in range(0, len(order), config.batch_size):
            if cancel is not None and cancel():
                raise CancelledError(f"training of {config.arch} cancelled at epoch {epoch}")
            if out_of_time():
                break  # evaluate the partial epoch, then stop
            idx = order[lo : lo + config.batch_size]
            logits = model(xt[idx])
            loss = F.cross_entropy(logits, yt[idx], weight=weight)
            total = loss + config.aux_weight * model.aux_loss
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            tot += loss.detach()
            tot_aux += model.aux_loss.detach()
            nb += 1
        # Per full epoch even when the time budget cut this one short.
        steps_per_epoch = -(-len(order) // config.batch_size)
        epoch_times.append((time.perf_counter() - te) * steps_per_epoch / max(nb, 1))
        proba = predict_proba(model, x_val, device, config.eval_batch)
        m = classification_metrics(y_val, proba, positive=positive)
        score = m["auc"] if np.isfinite(m["auc"]) else m["balanced_accuracy"]
        rec = {
            "epoch": epoch, "loss": tot.item() / max(nb, 1), "aux": tot_aux.item() / max(nb, 1),
            "val_accuracy": m["accuracy"], "val_f1": m["f1"], "val_auc": m["auc"],
            "seconds": time.perf_counter() - t0,
        }  # fmt: skip
        history.append(rec)
        if progress is not None:
            progress(rec)
        if score > best + 1e-4:
            best, best_epoch, bad = score, epoch, 0
            best_state = copy.deepcopy(model.state_dict())
            best_metrics = m
        else:
            bad += 1
            if bad >= config.patience:
                break
        if out_of_time():
            break
    model.load_state_dict(best_state)
    model.eval()
    return TrainResult(
        model=model,
        history=history,
        best_epoch=best_epoch,
        val_metrics=best_metrics,
        seconds=time.perf_counter() - t0,
        epoch_seconds=float(np.mean(epoch_times)),
        config=config.to_dict(),
    )
