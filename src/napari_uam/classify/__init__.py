"""Inference side of the cell classifiers: the checkpoint format (which records the feature
schema, so a model is never fed features it was not trained on), the feature normaliser, the
loaders and the weights cache keyed on file identity. Nothing here imports ``training/``:
fine-tuning writes checkpoints through this package, inference only reads them.
"""

from .checkpoint import (
    CellClassifier,
    default_weights_path,
    file_identity,
    load_classifier,
    read_checkpoint,
    save_checkpoint,
)

__all__ = [
    "CellClassifier",
    "default_weights_path",
    "file_identity",
    "load_classifier",
    "read_checkpoint",
    "save_checkpoint",
]
