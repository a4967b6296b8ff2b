"""Typed errors raised by napari-uam's compute code.

Every error says what is wrong and what to do. Widgets show ``str(err)`` to the user;
headless callers catch the type. All derive from :class:`UAMError` (a ``ValueError``)
so that ``except ValueError`` keeps working for callers that do not know the types.
"""


class UAMError(ValueError):
    """Base class of every napari-uam error with an actionable message."""


class InvalidImageError(UAMError):
    """The image cannot be used as an H&E patch (dtype, channels, size, values)."""


class InvalidLabelsError(UAMError):
    """A labels array is not usable (dtype, shape mismatch with the image)."""


class NoNucleiError(UAMError):
    """Segmentation found no nucleus in the image."""


class SchemaMismatchError(UAMError):
    """Features were computed with another schema than the model was trained on."""


class CheckpointError(UAMError):
    """A model checkpoint is missing, truncated, corrupted or of an unknown format."""


class WeightsNotFoundError(CheckpointError):
    """The requested model weights are not installed."""


class DeviceError(UAMError):
    """The requested compute device is not available."""


class MissingDependencyError(UAMError):
    """An optional library a requested output needs is not installed (the message says how)."""


class CancelledError(Exception):
    """A run was cancelled by the user; nothing was written."""


def raise_if_cancelled(cancel, message: str = "Run cancelled; no result was produced.") -> None:
    """Raise :class:`CancelledError` when the optional ``cancel() -> bool`` says so."""
    if cancel is not None and cancel():
        raise CancelledError(message)
