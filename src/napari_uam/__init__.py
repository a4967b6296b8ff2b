"""napari-uam: nuclei segmentation, per-cell radiomics and UAM tumor-cell classification.

Data flows one way: image -> nuclei labels -> cell feature table -> model -> cell classes
(+ tumor mask) -> layers / files. Nothing in this package outside ``widgets/`` imports Qt.
"""

__version__ = "0.1.0"
