"""Nucleus-segmentation recipes: the nucleus-set dataset layer and the LOSO training run."""
