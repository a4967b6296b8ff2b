"""napari widgets of napari-uam: the only Qt code of the package."""

from .annotate import AnnotateWidget
from .classifier import ClassifierWidget
from .train import TrainWidget

__all__ = ["AnnotateWidget", "ClassifierWidget", "TrainWidget"]
