"""What the cell classifiers' training and fine-tuning share: seeding and batched prediction.
The training loop of the recipes (early stopping on a validation split) is
``research/cells/trainer.py``; fine-tuning from the dock has its own loop (:mod:`.finetune`)."""

from __future__ import annotations


import numpy as np
import torch


def set_seed(seed: int) -> None:
    """Seed Python-visible RNGs that training uses (torch CPU/CUDA and numpy)."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


@torch.no_grad()
def predict_proba(model, x: np.ndarray, device: str = "cpu", batch: int = 8192) -> np.ndarray:
    """(n, F) normalised features -> (n, n_classes) probabilities (eval mode)."""
    model.eval()
    out = []
    for lo in range(0, len(x), batch):
        xb = torch.from_numpy(np.ascontiguousarray(x[lo : lo + batch])).to(device)
        out.append(torch.softmax(model(xb).float(), -1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 2), np.float32)
