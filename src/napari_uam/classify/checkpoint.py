"""The one model-checkpoint format of napari-uam, and the inference wrapper the pipeline uses.

A checkpoint is a ``dict`` saved with ``torch.save`` that holds only plain Python types and
tensors, so it loads with ``torch.load(weights_only=True)`` (no pickled code runs). It is a
model card as much as weights:

=================  ==============================================================
key                content
=================  ==============================================================
format             ``"napari-uam/cell-classifier"``
format_version     :data:`FORMAT_VERSION`
arch, config       registry name and full config (``build_model(arch, **config)``)
state_dict         the weights (fp32 tensors)
schema_id          feature schema the model was trained on
feature_names      the schema's feature columns, in model input order
mpp                pixel size (um/px) the features were measured at
class_names        output classes; ``tumor_class`` is the index of the tumor class
normalization      per-feature statistics (see :class:`~.normalize.Normalizer`)
training           data summary: datasets, images, cells per class, epochs, seed, ...
metrics            validation / test metrics
model_id           short name of this checkpoint
calibration        optional ``{"temperature": T, "logit_offset": [b_0, ...], ...}``:
                   softmax((logits + b) / T). ``b`` (one per class, absent = 0) moves the
                   decision: the shipped model's is chosen by its leave-one-source-out
                   worst-source accuracy (research/cells/decision.py), ``T`` is then fitted on
                   the same predictions; a fine-tuned model has no offset and ``T`` from its
                   validation cells (:func:`~.calibration.fit_temperature`); absent: T = 1
domain             optional trust-signal statistics (:class:`napari_uam.domain.DomainModel`;
                   a fine-tuned checkpoint adds its annotated images as ``anchors``);
                   absent: the domain status of every image is "unknown"
created, versions  ISO date; napari-uam / torch / python versions
n_parameters       trainable weights
=================  ==============================================================

Usage::

    clf = load_classifier()                      # shipped default weights
    proba = clf.predict_proba(feature_table)     # (n_cells, n_classes)
    is_tumor = proba[:, clf.tumor_class] > 0.5

Importing this module does not import ``mamba_ssm`` (nor build any model).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
import platform
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from .. import __version__
from ..device import resolve_device, retry_smaller_on_oom
from ..domain import DomainModel
from ..errors import CheckpointError, SchemaMismatchError, WeightsNotFoundError
from ..radiomics.schema import CLASSIFIER_SCHEMAS, schema_serves
from .normalize import Normalizer

FORMAT = "napari-uam/cell-classifier"
FORMAT_VERSION = 1

#: Smallest batch (cells) tried after a GPU out-of-memory error before falling back to the CPU.
MIN_OOM_BATCH = 256

#: File name of the shipped default weights in ``napari_uam/weights/``.
DEFAULT_WEIGHTS = "uam_default.pt"

_REQUIRED = (
    "format", "format_version", "arch", "config", "state_dict", "schema_id", "feature_names",
    "class_names", "tumor_class", "normalization",
)  # fmt: skip


def default_weights_path() -> Path:
    """Path of the shipped default checkpoint (it may be absent in a source checkout)."""
    return Path(__file__).resolve().parents[1] / "weights" / DEFAULT_WEIGHTS


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_identity(path: str | os.PathLike) -> tuple[int, int, str] | None:
    """(size, mtime_ns, sha256) of a weights file, or None when it cannot be read.

    The key of every weights cache: a file rewritten at the same path (retraining into the
    same checkpoint) is another model. The hash too: a copy with the source's size and
    modification time (cp -p) is still another file; weights files here are small.
    """
    try:
        st = os.stat(path)
        return (st.st_size, st.st_mtime_ns, file_sha256(path))
    except OSError:  # missing or unreadable: the loader says so, and nothing is cached
        return None


def _versions() -> dict:
    import torch

    return {"napari_uam": str(__version__), "torch": str(torch.__version__), "python": platform.python_version()}


def _plain(obj: Any) -> Any:
    """Recursively convert numpy scalars/arrays and tuples to plain Python types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return obj


def save_checkpoint(
    path: str | os.PathLike,
    model,
    *,
    feature_names,
    schema_id: str,
    mpp: float,
    class_names,
    tumor_class: int,
    normalizer: Normalizer,
    training: dict | None = None,
    metrics: dict | None = None,
    model_id: str | None = None,
    calibration: dict | None = None,
    domain: dict | None = None,
) -> str:
    """Write a checkpoint atomically (temp file in the same folder, then ``os.replace``).

    Args:
        path: destination ``.pt`` file.
        model: a model of :mod:`napari_uam.models` (has ``name`` and ``config``).
        feature_names: input columns, in order.
        schema_id: id of the feature schema.
        mpp: pixel size of the schema.
        class_names: output class names.
        tumor_class: index of the tumor class in ``class_names``.
        normalizer: the fitted feature normalisation.
        training: data / run summary for the model card.
        metrics: evaluation results for the model card.
        model_id: short name; defaults to the file stem.
        calibration: ``{"temperature": T, "logit_offset": [...]}`` applied to the logits at
            inference (softmax((logits + offset) / T); each optional).
        domain: :meth:`napari_uam.domain.DomainModel.to_dict` of the training images.

    Returns:
        The SHA-256 of the written file.
    """
    import torch

    path = Path(path)
    feature_names = [str(f) for f in feature_names]
    if len(feature_names) != model.config["n_features"]:
        raise ValueError(f"{len(feature_names)} feature names for a model of {model.config['n_features']} inputs")
    if not 0 <= int(tumor_class) < len(class_names):
        raise ValueError(f"tumor_class {tumor_class} out of range for classes {list(class_names)}")
    ckpt = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "arch": model.name,
        # The SSM backend is a runtime choice, not architecture: checkpoints load with "auto".
        "config": _plain({**model.config, "backend": "auto"}),
        "state_dict": {k: v.detach().to("cpu", torch.float32).clone() for k, v in model.state_dict().items()},
        "schema_id": str(schema_id),
        "feature_names": feature_names,
        "mpp": float(mpp),
        "class_names": [str(c) for c in class_names],
        "tumor_class": int(tumor_class),
        "normalization": normalizer.to_dict(),
        "training": _plain(training or {}),
        "metrics": _plain(metrics or {}),
        "model_id": model_id or path.stem,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "n_parameters": int(sum(p.numel() for p in model.parameters())),
    }
    if calibration:
        ckpt["calibration"] = _plain(calibration)
    if domain:
        ckpt["domain"] = _plain(domain)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; weights are package data others must read
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return file_sha256(path)


def _refuse_non_torch_file(path: Path, what: str) -> None:
    """Refuse a file that is no ``torch.save`` output at all (a CSV, an image, a text note).

    torch.save writes a zip archive (``PK``) or, in the legacy format, a pickle (``0x80``).
    Anything else would reach PyTorch's unpickler, whose "Weights only load failed ..."
    message means nothing to the person who picked the wrong file.
    """
    try:
        with open(path, "rb") as fh:
            head = fh.read(512)
    except OSError:
        return  # torch.load below reports it (permission denied, ...)
    if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" or not head:
        return
    kind = "an empty file"
    try:
        text = head.decode("utf-8")
        first = text.splitlines()[0] if text.splitlines() else ""
        kind = "a CSV / text table" if ("," in first or "\t" in first or ";" in first) else "a text file"
        kind += f" (first line {first[:60]!r})"
    except UnicodeDecodeError:
        kind = "a binary file of another kind"
        if head[:8] == b"\x89PNG\r\n\x1a\n" or head[:3] == b"\xff\xd8\xff" or head[:2] in (b"II", b"MM"):
            kind = "an image"
    raise CheckpointError(
        f"{path} is not a {what}: it is {kind}, not a PyTorch .pt file. Choose the .pt file "
        "written by napari-uam (Train dock or napari-uam train)."
    )


def validate_checkpoint(ckpt: dict, path) -> None:
    """Check the entries of a cell-classifier checkpoint dict, so that a bad file is refused
    when it is loaded, not on every image after segmenting and measuring it.

    Raises:
        CheckpointError: one line naming the bad entry.
    """

    def bad(what: str):
        return CheckpointError(
            f"{path}: {what}; the checkpoint is damaged or was not written by napari-uam. Retrain it "
            "or choose another file."
        )

    def is_int(v) -> bool:
        return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))

    cfg = ckpt["config"]
    if not isinstance(cfg, dict) or not is_int(cfg.get("n_features")) or not is_int(cfg.get("n_classes")):
        raise bad(f"'config' is {cfg!r:.60}, not a model configuration with n_features and n_classes")
    if not isinstance(ckpt["arch"], str) or not isinstance(ckpt["schema_id"], str):
        raise bad("'arch' and 'schema_id' must be names (text)")
    names = ckpt["feature_names"]
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise bad("'feature_names' is not a list of feature names")
    if len(names) != cfg["n_features"]:
        raise bad(f"{len(names)} feature names for a model of {cfg['n_features']} inputs")
    classes = ckpt["class_names"]
    if not isinstance(classes, (list, tuple)) or not classes or not all(isinstance(c, str) and c for c in classes):
        raise bad(f"'class_names' is {classes!r:.60}, not a non-empty list of class names")
    if len(classes) != cfg["n_classes"]:
        raise bad(f"{len(classes)} class names for a model of {cfg['n_classes']} outputs")
    tc = ckpt["tumor_class"]
    if not is_int(tc) or not 0 <= int(tc) < len(classes):
        raise bad(f"'tumor_class' {tc!r:.30} is not the index of one of the classes {list(classes)}")
    norm = ckpt["normalization"]
    if not isinstance(norm, dict) or norm.get("method") != "signed_log_robust":
        method = norm.get("method") if isinstance(norm, dict) else norm
        raise bad(f"unknown feature normalisation {method!r:.60} (this napari-uam knows 'signed_log_robust')")
    try:
        ok = all(len(norm[k]) == len(names) for k in ("center", "scale")) and float(norm["clip"]) > 0
    except (KeyError, TypeError, ValueError):
        ok = False
    if not ok:
        raise bad("the feature normalisation statistics are incomplete or do not match the features")


def load_checkpoint_dict(path, *, what: str, fmt: str, version: int, hint: str) -> dict:
    """Load a napari-uam checkpoint dict of format ``fmt`` / ``version`` with clear errors.

    Shared by the cell-classifier and the tumor-mask checkpoints (``what`` names the kind in
    the messages, ``hint`` says how to get a good file).

    Raises:
        CheckpointError: a folder, missing, unreadable, truncated, corrupted, or of another
            format / version.
    """
    import torch

    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{what.capitalize()} {path} is a folder; choose the .pt file inside it.")
    if not path.is_file():
        raise CheckpointError(f"{what.capitalize()} {path} does not exist; check the path.")
    _refuse_non_torch_file(path, what)
    try:
        # map_location: a checkpoint saved from a GPU loads on a machine without one.
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError as err:
        raise CheckpointError(
            f"Cannot read {what} {path}: permission denied. Ask for read access or copy "
            "the file somewhere you can read it."
        ) from err
    except Exception as err:  # zip/pickle/EOF errors of a damaged file, or non-plain content
        raise CheckpointError(
            f"Cannot read {what} {path}: the file is damaged (truncated, corrupted) or not a "
            f"napari-uam checkpoint ({type(err).__name__}: {str(err)[:200]}). {hint}"
        ) from err
    if not isinstance(ckpt, dict) or ckpt.get("format") != fmt:
        raise CheckpointError(
            f"{path} is not a napari-uam {what} (format "
            f"{ckpt.get('format') if isinstance(ckpt, dict) else type(ckpt).__name__!r}); "
            "use a file written by napari-uam."
        )
    if ckpt.get("format_version") != version:
        raise CheckpointError(
            f"{path} has {what} format version {ckpt.get('format_version')!r}; this napari-uam reads "
            f"version {version}. Upgrade napari-uam or retrain the model."
        )
    return ckpt


def read_checkpoint(path: str | os.PathLike) -> dict:
    """Load and validate a checkpoint dict (no model is built).

    Raises:
        CheckpointError: missing, truncated, corrupted or of an unknown format / version.
    """
    ckpt = load_checkpoint_dict(
        path,
        what="cell-classifier checkpoint",
        fmt=FORMAT,
        version=FORMAT_VERSION,
        hint="Reinstall napari-uam for the shipped weights, or fine-tune a new checkpoint (Train dock or `napari-uam train`).",
    )
    missing = [k for k in _REQUIRED if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks the entries {missing}; the file is incomplete. Retrain it.")
    validate_checkpoint(ckpt, path)
    return ckpt


def build_from_checkpoint(ckpt: dict, backend: str | None = None):
    """Build the model of a checkpoint dict and load its weights (CPU, eval mode).

    Raises:
        CheckpointError: unknown architecture or weights that do not fit it.
    """
    from ..models import build_model

    cfg = dict(ckpt["config"])
    n_features, n_classes = cfg.pop("n_features"), cfg.pop("n_classes")
    if backend is not None:
        cfg["backend"] = backend
    try:
        model = build_model(ckpt["arch"], n_features, n_classes, **cfg)
        model.load_state_dict(ckpt["state_dict"], strict=True)
    except (ValueError, RuntimeError, KeyError, TypeError) as err:
        raise CheckpointError(
            f"The checkpoint's weights do not fit architecture {ckpt['arch']!r} ({err}); "
            "it was written by an incompatible napari-uam. Retrain it."
        ) from err
    return model.eval()


class CellClassifier:
    """A trained cell classifier ready for inference on feature tables.

    Attributes:
        class_names: output classes (list of str).
        tumor_class: index of the tumor class.
        schema_id: feature schema id the model expects.
        feature_names: expected feature columns, in order.
        arch: architecture name.
        model_id: checkpoint name.
        sha256: SHA-256 of the checkpoint file (or None when built in memory).
        card: the checkpoint without its weights (the model card).
        device: ``"cpu"`` or ``"cuda[:i]"``.
        path: checkpoint file (or None).
    """

    def __init__(self, ckpt: dict, device: str = "auto", path=None, sha256=None, backend=None):
        self.device = resolve_device(device)
        self.model = build_from_checkpoint(ckpt, backend=backend).to(self.device)
        self.normalizer = Normalizer.from_dict(ckpt["normalization"])
        self.class_names = list(ckpt["class_names"])
        self.tumor_class = int(ckpt["tumor_class"])
        self.schema_id = ckpt["schema_id"]
        self.feature_names = list(ckpt["feature_names"])
        self.arch = ckpt["arch"]
        self.model_id = ckpt.get("model_id", self.arch)
        self.card = {k: v for k, v in ckpt.items() if k != "state_dict"}
        self.path = None if path is None else str(path)
        self.sha256 = sha256
        temperature = float((ckpt.get("calibration") or {}).get("temperature", 1.0))
        if not (np.isfinite(temperature) and temperature > 0):
            raise CheckpointError(
                f"Checkpoint {self.model_id!r} has an invalid calibration temperature {temperature!r}."
            )
        self.temperature = temperature
        self.logit_offset = _logit_offset(ckpt.get("calibration"), len(self.class_names), self.model_id)
        self.domain = DomainModel.from_dict(ckpt["domain"]) if ckpt.get("domain") else None

    def check_domain(self, features, stain: dict | None):
        """How far an image lies from the training data (None when the checkpoint has no
        domain statistics): a :class:`napari_uam.domain.DomainCheck`."""
        if self.domain is None:
            return None
        x = self.normalizer.transform(self.check_features(features))
        return self.domain.score(stain, x)

    def __repr__(self) -> str:
        return (
            f"CellClassifier({self.model_id!r}, arch={self.arch!r}, schema={self.schema_id!r}, "
            f"classes={self.class_names}, device={self.device!r})"
        )

    def check_features(self, features) -> np.ndarray:
        """The (n, F) raw feature matrix of a table, columns in model order.

        Raises:
            SchemaMismatchError: missing or extra feature columns, or a table tagged with
                another schema id (``features.attrs["schema_id"]``).
        """
        cols = [str(c) for c in features.columns]
        table_schema = getattr(features, "attrs", {}).get("schema_id")
        missing = [f for f in self.feature_names if f not in set(cols)]
        # A table of a schema that holds the model's columns (v2 holds v1's) serves it: the
        # model reads its own columns by name. An untagged table must match exactly.
        compatible = table_schema is not None and schema_serves(table_schema, self.schema_id)
        extra = [] if compatible else [c for c in cols if c not in set(self.feature_names)]
        if missing or extra or (table_schema is not None and not compatible):

            def _list(names):
                shown = ", ".join(names[:8])
                return shown + (f", ... ({len(names)} in all)" if len(names) > 8 else "")

            parts = []
            if missing:
                parts.append(f"{len(missing)} missing: {_list(missing)}")
            if extra:
                parts.append(f"{len(extra)} extra: {_list(extra)}")
            raise SchemaMismatchError(
                f"The feature table does not match model {self.model_id!r}: it was trained on "
                f"schema {self.schema_id!r} ({len(self.feature_names)} features) but the table "
                f"has schema {table_schema or 'unknown'!r}"
                + (f" ({'; '.join(parts)})" if parts else "")
                + f". Recompute the features with schema {self.schema_id!r} "
                "(napari_uam.radiomics.extract with that schema), or load a model trained on "
                "the table's schema."
            )
        return features[self.feature_names].to_numpy(dtype=np.float64, copy=False)

    def predict_proba(self, features, batch_size: int | None = None) -> np.ndarray:
        """Class probabilities of every cell (row) of a feature table.

        Args:
            features: pandas DataFrame with exactly the checkpoint's feature columns
                (any order; NaN allowed, imputed with the training median).
            batch_size: cells per forward pass (default 65536 on CUDA, 1024 on CPU: measured fastest).

        Returns:
            (n_cells, n_classes) float32 probabilities, rows in table order.

        On a GPU out-of-memory error the batch shrinks 4-fold per retry down to
        :data:`MIN_OOM_BATCH` cells, then the classifier moves to the CPU; each step issues a
        ``RuntimeWarning`` saying so.
        """
        x = self.normalizer.transform(self.check_features(features))
        if batch_size is None:
            batch_size = 65536 if self.device.startswith("cuda") else 1024

        def retry_message(size):
            return f"{self.device} ran out of memory classifying {len(x)} cells; retrying with batches of {size} cells."

        def on_cpu(size, err):
            if self.device == "cpu":
                raise err
            warnings.warn(
                f"{self.device} ran out of memory even with batches of {size} cells; "
                "classifying on the CPU instead (slower). This classifier stays on the CPU; "
                "free GPU memory and load it again to use the GPU.",
                RuntimeWarning,
                stacklevel=3,
            )
            self.model = self.model.to("cpu")
            self.device = "cpu"
            return retry_smaller_on_oom(lambda b: self._forward(x, b), size, MIN_OOM_BATCH, retry_message, on_cpu)

        proba = retry_smaller_on_oom(lambda b: self._forward(x, b), batch_size, MIN_OOM_BATCH, retry_message, on_cpu)
        # NaN inputs are imputed, so non-finite outputs come from the model itself (NaN/inf
        # weights or statistics): argmax would then silently name every cell the first class.
        if not np.all(np.isfinite(proba)):
            raise CheckpointError(
                f"Model {self.model_id!r} ({self.path or 'in memory'}) gives NaN or infinite class "
                "probabilities: its weights or normalisation statistics are not finite (a diverged "
                "or damaged training run). Retrain the model or use another checkpoint."
            )
        return proba

    def _forward(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Softmax outputs of the model on normalised features ``x``, ``batch_size`` rows at a time."""
        import torch

        out = np.empty((len(x), len(self.class_names)), dtype=np.float32)
        offset = torch.as_tensor(self.logit_offset, dtype=torch.float32, device=self.device)
        with torch.no_grad():
            for lo in range(0, len(x), batch_size):
                xb = torch.from_numpy(x[lo : lo + batch_size]).to(self.device)
                logits = (self.model(xb).float() + offset) / self.temperature
                out[lo : lo + batch_size] = torch.softmax(logits, -1).cpu().numpy()
        return out

    def predict(self, features, batch_size: int | None = None) -> np.ndarray:
        """(n_cells,) int index of the most probable class."""
        return self.predict_proba(features, batch_size).argmax(axis=1)


def _logit_offset(calibration: dict | None, n_classes: int, model_id: str) -> np.ndarray:
    """The per-class logit offset of a checkpoint's calibration (zeros when it has none)."""
    raw = (calibration or {}).get("logit_offset")
    if raw is None:
        return np.zeros(n_classes, np.float32)
    try:
        offset = np.asarray(raw, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        offset = np.full(0, np.nan)
    if offset.shape != (n_classes,) or not np.all(np.isfinite(offset)):
        raise CheckpointError(
            f"Checkpoint {model_id!r} has an invalid calibration logit offset {raw!r}: it needs one finite "
            f"number per class ({n_classes})."
        )
    return offset.astype(np.float32)


def load_classifier(
    path: str | os.PathLike | None = None, device: str = "auto", backend: str | None = None
) -> CellClassifier:
    """Load a checkpoint for inference.

    Args:
        path: checkpoint file; None -> the shipped default (:func:`default_weights_path`).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        backend: SSM backend override (``"torch"`` / ``"mamba_ssm"``); None keeps ``"auto"``.

    Raises:
        WeightsNotFoundError: ``path`` is None and no default weights are installed.
        CheckpointError: the file is missing, damaged or of an unknown format.
    """
    if path is None:
        path = default_weights_path()
        if not path.is_file():
            raise WeightsNotFoundError(
                f"The default UAM weights are not installed ({path} is missing). Reinstall "
                "napari-uam (`pip install --force-reinstall napari-uam`), or choose a checkpoint "
                "file (Model: in the dock, --model on the command line)."
            )
    ckpt = read_checkpoint(path)
    if ckpt["schema_id"] not in CLASSIFIER_SCHEMAS:
        raise SchemaMismatchError(
            f"{path} was trained on feature schema {ckpt['schema_id']!r}, which this napari-uam no "
            f"longer classifies with (it measures {', '.join(CLASSIFIER_SCHEMAS)}: stain-normalised "
            "nucleus, cytoplasm-ring and neighbourhood features). Fine-tune or retrain the model on "
            "cells measured by this version (Train dock or `napari-uam train`)."
        )
    return CellClassifier(ckpt, device=device, path=path, sha256=file_sha256(path), backend=backend)
