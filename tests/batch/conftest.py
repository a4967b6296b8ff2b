"""Fixtures of the batch tests that run ``napari-uam`` in a subprocess."""

from _cli_run import patch  # noqa: F401  (a fixture: a small real H&E patch as a PNG)
