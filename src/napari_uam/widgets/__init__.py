"""napari widgets of napari-uam: the only Qt code of the package."""

from .classifier import ClassifierWidget

__all__ = ["ClassifierWidget"]
