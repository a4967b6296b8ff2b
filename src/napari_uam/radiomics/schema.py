"""The versioned per-cell feature schema and the RGB -> measurement-channel conversion.

A :class:`FeatureSchema` fixes everything a feature value depends on: the measurement
channel(s), the grey-level discretisation, the texture neighbourhood and the pixel size the
image must have. Its ``schema_id`` is stored with every feature table and every model
checkpoint, so features computed under one schema are never fed to a model trained on another.

The channel conversion is a 2**24-entry lookup table built once in NumPy float64 and applied
by integer indexing: both backends (and every device) therefore see bit-identical integer
images, which makes the pyradiomics discretisation (``floor((v - low) / bin_width) + 1``)
exact on both sides.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

from ..errors import SchemaMismatchError, UAMError
from .context import context_names

#: pyradiomics' 2-D shape features (deprecated SphericalDisproportion left out), in order.
SHAPE_FEATURES = (
    "MeshSurface", "PixelSurface", "Perimeter", "PerimeterSurfaceRatio", "Sphericity",
    "MaximumDiameter", "MajorAxisLength", "MinorAxisLength", "Elongation",
)  # fmt: skip

#: Texture / intensity families and their features, in pyradiomics' default (non-deprecated) set.
FAMILY_FEATURES = {
    "firstorder": (
        "Energy", "TotalEnergy", "Entropy", "Minimum", "10Percentile", "90Percentile",
        "Maximum", "Mean", "Median", "InterquartileRange", "Range", "MeanAbsoluteDeviation",
        "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness", "Kurtosis", "Variance",
        "Uniformity",
    ),
    "glcm": (
        "Autocorrelation", "JointAverage", "ClusterProminence", "ClusterShade",
        "ClusterTendency", "Contrast", "Correlation", "DifferenceAverage", "DifferenceEntropy",
        "DifferenceVariance", "JointEnergy", "JointEntropy", "Imc1", "Imc2", "Idm", "MCC",
        "Idmn", "Id", "Idn", "InverseVariance", "MaximumProbability", "SumAverage",
        "SumEntropy", "SumSquares",
    ),
    "glrlm": (
        "ShortRunEmphasis", "LongRunEmphasis", "GrayLevelNonUniformity",
        "GrayLevelNonUniformityNormalized", "RunLengthNonUniformity",
        "RunLengthNonUniformityNormalized", "RunPercentage", "GrayLevelVariance",
        "RunVariance", "RunEntropy", "LowGrayLevelRunEmphasis", "HighGrayLevelRunEmphasis",
        "ShortRunLowGrayLevelEmphasis", "ShortRunHighGrayLevelEmphasis",
        "LongRunLowGrayLevelEmphasis", "LongRunHighGrayLevelEmphasis",
    ),
    "glszm": (
        "SmallAreaEmphasis", "LargeAreaEmphasis", "GrayLevelNonUniformity",
        "GrayLevelNonUniformityNormalized", "SizeZoneNonUniformity",
        "SizeZoneNonUniformityNormalized", "ZonePercentage", "GrayLevelVariance",
        "ZoneVariance", "ZoneEntropy", "LowGrayLevelZoneEmphasis", "HighGrayLevelZoneEmphasis",
        "SmallAreaLowGrayLevelEmphasis", "SmallAreaHighGrayLevelEmphasis",
        "LargeAreaLowGrayLevelEmphasis", "LargeAreaHighGrayLevelEmphasis",
    ),
    "gldm": (
        "SmallDependenceEmphasis", "LargeDependenceEmphasis", "GrayLevelNonUniformity",
        "DependenceNonUniformity", "DependenceNonUniformityNormalized", "GrayLevelVariance",
        "DependenceVariance", "DependenceEntropy", "LowGrayLevelEmphasis",
        "HighGrayLevelEmphasis", "SmallDependenceLowGrayLevelEmphasis",
        "SmallDependenceHighGrayLevelEmphasis", "LargeDependenceLowGrayLevelEmphasis",
        "LargeDependenceHighGrayLevelEmphasis",
    ),
    "ngtdm": ("Coarseness", "Contrast", "Busyness", "Complexity", "Strength"),
}  # fmt: skip

# Ruifrok & Johnston's H&E(-DAB) stain vectors (rows: haematoxylin, eosin, DAB; columns: R, G, B
# optical densities), as used by scikit-image's rgb2hed, normalised to unit length.
_STAIN_RGB = np.array([[0.65, 0.70, 0.29], [0.07, 0.99, 0.11], [0.27, 0.57, 0.78]])
_STAIN_RGB = _STAIN_RGB / np.linalg.norm(_STAIN_RGB, axis=1, keepdims=True)
_RGB_TO_STAIN = np.linalg.inv(_STAIN_RGB)

#: Integer steps per unit of stain optical density: 255 covers OD 0..1.275, which holds the
#: 99.9th percentile of nuclear haematoxylin in CoNSeP (about 1.0).
OD_SCALE = 200.0


def _od(values: np.ndarray) -> np.ndarray:
    """Optical density (log10) of 8-bit intensities, with +1 so that black stays finite."""
    return -np.log10((values.astype(np.float64) + 1.0) / 256.0)


def _stain_lut(row: int) -> np.ndarray:
    """uint8 lookup table over the 2**24 RGB colours for one stain's scaled concentration."""
    od = _od(np.arange(256))
    w = _RGB_TO_STAIN[:, row]
    lut = np.empty(1 << 24, dtype=np.uint8)
    gb = (w[1] * od[:, None] + w[2] * od[None, :]).ravel()  # (G, B) plane, G major
    for r in range(256):  # one R plane at a time keeps the float64 temporary at 0.5 MB
        conc = w[0] * od[r] + gb
        lut[r << 16 : (r + 1) << 16] = np.clip(np.rint(conc * OD_SCALE), 0, 255).astype(np.uint8)
    return lut


def _grey_lut() -> np.ndarray:
    """uint8 lookup table of ITU-R 601 luma (what PIL's ``convert('L')`` computes), inverted
    so that dark chromatin is high, like the stain channels."""
    gb = (np.arange(256)[:, None] * 587 + np.arange(256)[None, :] * 114).ravel()
    lut = np.empty(1 << 24, dtype=np.uint8)
    for r in range(256):  # per R plane: integer rounding of (299 R + 587 G + 114 B) / 1000
        luma = (r * 299 + gb + 500) // 1000
        lut[r << 16 : (r + 1) << 16] = (255 - luma).astype(np.uint8)
    return lut


_CHANNEL_BUILDERS = {
    "hematoxylin": lambda: _stain_lut(0),
    "eosin": lambda: _stain_lut(1),
    "grey": _grey_lut,
}

#: Measurement channels a schema may name.
CHANNELS = tuple(_CHANNEL_BUILDERS)


@lru_cache(maxsize=None)
def channel_lut(channel: str) -> np.ndarray:
    """The (2**24,) uint8 lookup table mapping packed RGB (``R<<16 | G<<8 | B``) to ``channel``.

    Built once per process (about 0.3 s) and cached; read-only.
    """
    if channel not in _CHANNEL_BUILDERS:
        raise UAMError(f"Unknown measurement channel {channel!r}; choose one of {', '.join(CHANNELS)}.")
    lut = _CHANNEL_BUILDERS[channel]()
    lut.setflags(write=False)
    return lut


def pack_rgb(image: np.ndarray) -> np.ndarray:
    """Pack an (..., 3) uint8 RGB array into (...) int32 codes ``R<<16 | G<<8 | B``."""
    img = image.astype(np.int32, copy=False)
    return (img[..., 0] << 16) | (img[..., 1] << 8) | img[..., 2]


def to_channel(image: np.ndarray, channel: str) -> np.ndarray:
    """Convert an (H, W, 3) uint8 RGB image to the (H, W) uint8 measurement channel.

    Higher values mean more stain (or darker, for ``grey``). Both backends call this (or index
    the same lookup table on their device), so they measure identical integers.
    """
    return channel_lut(channel)[pack_rgb(image)]


@dataclass(frozen=True)
class FeatureSchema:
    """A fixed, versioned definition of the per-cell feature vector.

    Attributes:
        schema_id: stable identifier stored with feature tables and model checkpoints.
        channels: measurement channels (see :data:`CHANNELS`) the intensity and texture
            families are computed on; shape features are computed once.
        families: texture/intensity families, in column order (keys of ``FAMILY_FEATURES``).
        excluded: ``"family_Feature"`` names left out of the schema (see the docs for why).
        bin_width: pyradiomics ``binWidth`` on the 0..255 channel scale (fixed-width bins
            anchored at each cell's minimum, as pyradiomics does).
        glcm_distance: GLCM / GLDM / NGTDM neighbour distance in pixels (pyradiomics
            ``distances=[1]``); the 4 in-plane angles 0, 45, 90, 135 degrees are used.
        mpp: pixel size in microns the image must be resampled to; shape features are in um.
        normalised_channels: channels measured again (every family but shape) after per-image
            stain normalisation (:mod:`.stain_norm`), columns ``norm_<channel>_<family>_<F>``.
        ring_channels: channels whose first-order statistics are measured in a ring of
            ``ring_um`` around each nucleus (its cytoplasm / immediate surround), on the
            stain-normalised image when ``normalised_channels`` is set; columns
            ``ring_<channel>_firstorder_<F>``.
        ring_um: width of that ring in microns.
        context: add the neighbourhood columns of :mod:`.context` (``ctx_*``: density,
            nearest-neighbour distance, the k nearest cells' mean of a few features and the
            cell's difference from it).
    """

    schema_id: str
    channels: tuple[str, ...] = ("hematoxylin",)
    families: tuple[str, ...] = ("firstorder", "glcm", "glrlm", "glszm", "gldm", "ngtdm")
    excluded: tuple[str, ...] = ()
    bin_width: int = 8
    glcm_distance: int = 1
    mpp: float = 0.5
    normalised_channels: tuple[str, ...] = ()
    ring_channels: tuple[str, ...] = ()
    ring_um: float = 2.0
    context: bool = False

    def __post_init__(self):
        for ch in self.channels + self.normalised_channels + self.ring_channels:
            if ch not in CHANNELS:
                raise UAMError(f"Schema {self.schema_id!r} names unknown channel {ch!r}.")
        for fam in self.families:
            if fam not in FAMILY_FEATURES:
                raise UAMError(f"Schema {self.schema_id!r} names unknown feature family {fam!r}.")
        if self.glcm_distance != 1:
            raise UAMError("Only the 1-pixel neighbourhood (glcm_distance=1) is implemented.")
        if not (isinstance(self.bin_width, int) and self.bin_width >= 1):
            raise UAMError("bin_width must be a positive integer on the 0..255 channel scale.")

    @property
    def family_features(self) -> dict[str, tuple[str, ...]]:
        """Family -> its features kept in this schema (exclusions applied)."""
        out = {"shape2D": tuple(f for f in SHAPE_FEATURES if f"shape2D_{f}" not in self.excluded)}
        for fam in self.families:
            out[fam] = tuple(f for f in FAMILY_FEATURES[fam] if f"{fam}_{f}" not in self.excluded)
        return out

    def _plain(self, suffix: str, channels: tuple[str, ...], families: tuple[str, ...]) -> "FeatureSchema":
        """A schema without views, measuring ``channels`` x ``families`` like this one."""
        return FeatureSchema(
            schema_id=f"{self.schema_id}#{suffix}", channels=channels, families=families, excluded=self.excluded,
            bin_width=self.bin_width, glcm_distance=self.glcm_distance, mpp=self.mpp,
        )  # fmt: skip

    @property
    def base(self) -> "FeatureSchema":
        """The plain radiomics part (shape + ``channels``) that the backends compute."""
        if not (self.normalised_channels or self.ring_channels or self.context):
            return self
        return self._plain("base", self.channels, self.families)

    @property
    def normalised_view(self) -> "FeatureSchema | None":
        """The radiomics the backends compute on the stain-normalised image (None: none)."""
        return self._plain("norm", self.normalised_channels, self.families) if self.normalised_channels else None

    @property
    def ring_view(self) -> "FeatureSchema | None":
        """The first-order radiomics the backends compute on the ring label map (None: none)."""
        return self._plain("ring", self.ring_channels, ("firstorder",)) if self.ring_channels else None

    @property
    def feature_names(self) -> tuple[str, ...]:
        """Column names in their fixed order: ``shape2D_<F>``, ``<channel>_<family>_<F>``, then
        ``norm_*``, ``ring_*`` and ``ctx_*`` columns when the schema has them."""
        fams = self.family_features
        names = [f"shape2D_{f}" for f in fams["shape2D"]]
        for ch in self.channels:
            for fam in self.families:
                names += [f"{ch}_{fam}_{f}" for f in fams[fam]]
        for ch in self.normalised_channels:
            for fam in self.families:
                names += [f"norm_{ch}_{fam}_{f}" for f in fams[fam]]
        for ch in self.ring_channels:
            names += [f"ring_{ch}_firstorder_{f}" for f in fams.get("firstorder", FAMILY_FEATURES["firstorder"])]
        if self.context:
            names += list(context_names(self))
        return tuple(names)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    @property
    def pyradiomics_settings(self) -> dict:
        """The pyradiomics settings this schema corresponds to (for the reference backend)."""
        return {
            "binWidth": self.bin_width,
            "distances": [self.glcm_distance],
            "force2D": True,
            "force2Ddimension": 0,
            "symmetricalGLCM": True,
            "gldm_a": 0,
            "voxelArrayShift": 0,
            "label": 1,
        }


#: Release 0.1's schema: shape and hematoxylin radiomics of the nucleus.
SCHEMA_V1 = FeatureSchema(schema_id="uam-radiomics-v1")

#: Schema v2: v1's columns (so models trained on v1, such as the tumor model's cell encoder,
#: still find theirs), eosin, the same radiomics after per-image stain normalisation, the
#: cytoplasm ring and the neighbourhood context. A model uses the subset of these columns that
#: leave-one-source-out validation paid for (its checkpoint lists them).
SCHEMA_V2 = FeatureSchema(
    schema_id="uam-radiomics-v2",
    channels=("hematoxylin", "eosin"),
    normalised_channels=("hematoxylin", "eosin"),
    ring_channels=("hematoxylin", "eosin"),
    context=True,
)

#: The schema every model of this release is trained on.
DEFAULT_SCHEMA = SCHEMA_V2

_SCHEMAS = {s.schema_id: s for s in (SCHEMA_V1, SCHEMA_V2)}

#: Schemas a cell classifier of this release may be trained on (v1 models are refused: their
#: nucleus-only, stain-dependent features did not carry to new hospitals, see docs/results.md).
CLASSIFIER_SCHEMAS = (SCHEMA_V2.schema_id,)


def schema_serves(table_schema: str, model_schema: str) -> bool:
    """Whether a feature table of ``table_schema`` holds, with the same values, every column
    of ``model_schema`` (the same schema, or v2 for v1: v2 measures v1's columns unchanged)."""
    if table_schema == model_schema:
        return True
    t, m = _SCHEMAS.get(table_schema), _SCHEMAS.get(model_schema)
    if t is None or m is None:
        return False
    same_measure = (t.bin_width, t.glcm_distance, t.mpp, t.families) == (
        m.bin_width,
        m.glcm_distance,
        m.mpp,
        m.families,
    )
    return same_measure and set(m.feature_names) <= set(t.feature_names)


def get_schema(schema_id: str | FeatureSchema | None = None) -> FeatureSchema:
    """Return the registered schema with this id (``None`` -> :data:`DEFAULT_SCHEMA`).

    Raises:
        SchemaMismatchError: for an id this version of napari-uam does not know.
    """
    if schema_id is None:
        return DEFAULT_SCHEMA
    if isinstance(schema_id, FeatureSchema):
        return schema_id
    if schema_id not in _SCHEMAS:
        raise SchemaMismatchError(
            f"Unknown feature schema {schema_id!r}; this napari-uam knows {', '.join(sorted(_SCHEMAS))}. "
            "Upgrade napari-uam or recompute the features with a known schema."
        )
    return _SCHEMAS[schema_id]
