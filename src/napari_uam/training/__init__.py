"""What fine-tuning from the dock and ``napari-uam train`` need: cell sets from annotated
layers and projects (:mod:`.finetune`), one training loop (:mod:`.trainer`), the split rule
(:mod:`.splits`), metrics and temperature calibration. Checkpoints are written through
:mod:`napari_uam.classify`; the recipes that made the shipped weights live in ``research/``.
"""
