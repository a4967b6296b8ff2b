"""Training, evaluation and the checkpoint format of the cell classifiers.

Light to import: only the checkpoint / inference API is imported here; the trainer, datasets
and experiments modules import torch, scikit-learn and the feature engine when used.
"""

from .checkpoint import (
    CellClassifier,
    default_weights_path,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
)

__all__ = ["CellClassifier", "default_weights_path", "load_classifier", "read_checkpoint", "save_checkpoint"]
