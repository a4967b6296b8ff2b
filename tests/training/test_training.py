"""Training harness on real CoNSeP cells: every architecture learns, checkpoints round-trip,
schema and file errors are clear (CPU)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from napari_uam.errors import CheckpointError, SchemaMismatchError, WeightsNotFoundError
from napari_uam.models import build_model, list_models
from napari_uam.classify import checkpoint as ckpt_mod
from napari_uam.classify.checkpoint import load_classifier, read_checkpoint, save_checkpoint
from napari_uam.training.metrics import classification_metrics
from napari_uam.classify.normalize import Normalizer
from napari_uam.training.splits import CLASS_NAMES, group_split
from napari_uam.errors import CancelledError
from research.cells.trainer import TrainConfig, train_model

IMAGES = ["train_1", "train_2", "train_3"]


@pytest.fixture(scope="session")
def cell_table(consep_dir) -> pd.DataFrame:
    """Cells of three real CoNSeP images with their default-schema features (~2.5 K cells)."""
    from research.cells.datasets import consep_image_table

    return pd.concat([consep_image_table(consep_dir, i) for i in IMAGES], ignore_index=True)


@pytest.fixture(scope="session")
def arrays(cell_table):
    from napari_uam.radiomics import DEFAULT_SCHEMA

    feats = list(DEFAULT_SCHEMA.feature_names)
    tr, va = group_split(cell_table["image"], 1 / 3, seed=0)
    norm = Normalizer.fit(cell_table.loc[tr, feats].to_numpy())
    x = norm.transform(cell_table[feats].to_numpy())
    y = cell_table["target"].to_numpy()
    return {"norm": norm, "feats": feats, "x": x, "y": y, "train": tr, "val": va}


@pytest.fixture(scope="session")
def trained(arrays):
    """A small UAM trained one epoch on two images (validated on the third)."""
    torch.set_num_threads(1)
    a = arrays
    idx = np.flatnonzero(a["train"])[:600]
    cfg = TrainConfig(arch="uam", max_epochs=1, batch_size=64, seed=0)
    return train_model(a["x"][idx], a["y"][idx], a["x"][a["val"]], a["y"][a["val"]], 2, cfg)


def test_table_is_real_and_labelled(cell_table):
    from napari_uam.radiomics import DEFAULT_SCHEMA

    assert set(cell_table["image"]) == set(IMAGES)
    assert set(DEFAULT_SCHEMA.feature_names) <= set(cell_table.columns)
    assert set(cell_table["target"]) == {0, 1}
    assert (cell_table.loc[cell_table["target"] == 1, "cell_class"] == "epithelial").all()
    assert len(cell_table) > 1000


@pytest.mark.parametrize("arch", list_models())
def test_every_architecture_learns_real_cells(arch, arrays):
    torch.manual_seed(0)
    torch.set_num_threads(1)
    a = arrays
    idx = np.flatnonzero(a["train"])[:256]
    x = torch.from_numpy(a["x"][idx])
    y = torch.from_numpy(a["y"][idx]).long()
    model = build_model(arch, x.shape[1], 2)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        (loss + 0.01 * model.aux_loss).backward()
        opt.step()
        losses.append(loss.item())
    assert np.isfinite(losses).all()
    assert losses[-1] < 0.9 * losses[0], losses


def test_training_is_deterministic_and_cancellable(arrays):
    a = arrays
    idx = np.flatnonzero(a["train"])[:300]
    cfg = TrainConfig(arch="trans", max_epochs=1, seed=3)
    r1 = train_model(a["x"][idx], a["y"][idx], a["x"][idx], a["y"][idx], 2, cfg)
    r2 = train_model(a["x"][idx], a["y"][idx], a["x"][idx], a["y"][idx], 2, cfg)
    for k, v in r1.model.state_dict().items():
        assert torch.equal(v, r2.model.state_dict()[k]), k
    seen = []
    with pytest.raises(CancelledError):
        train_model(
            a["x"][idx], a["y"][idx], a["x"][idx], a["y"][idx], 2, cfg, cancel=lambda: seen.append(1) or len(seen) > 2
        )


def _save(trained, arrays, path):
    from napari_uam.radiomics import DEFAULT_SCHEMA

    return save_checkpoint(
        path,
        trained.model,
        feature_names=arrays["feats"],
        schema_id=DEFAULT_SCHEMA.schema_id,
        mpp=DEFAULT_SCHEMA.mpp,
        class_names=CLASS_NAMES,
        tumor_class=1,
        normalizer=arrays["norm"],
        training={"note": "test"},
        metrics={"val": trained.val_metrics},
    )


def test_checkpoint_round_trip_gives_identical_outputs(trained, arrays, cell_table, tmp_path):
    path = tmp_path / "m.pt"
    sha = _save(trained, arrays, path)
    assert [p.name for p in tmp_path.iterdir()] == ["m.pt"]  # atomic: no temp file left
    raw = torch.load(path, weights_only=True)  # plain types and tensors only
    assert raw["arch"] == "uam" and raw["schema_id"] == "uam-radiomics-v2"
    clf = load_classifier(path, device="cpu")
    assert clf.sha256 == sha and clf.tumor_class == 1 and clf.class_names == CLASS_NAMES
    assert clf.arch == "uam" and clf.model_id == "m" and "state_dict" not in clf.card
    feats = cell_table[arrays["feats"]]
    proba = clf.predict_proba(feats.iloc[:, ::-1], batch_size=100)  # column order does not matter
    with torch.no_grad():
        ref = torch.softmax(trained.model.cpu()(torch.from_numpy(arrays["x"])), -1).numpy()
    np.testing.assert_array_equal(proba, ref)
    np.testing.assert_allclose(proba.sum(1), 1.0, rtol=1e-6)


def test_features_of_another_schema_raise_a_clear_error(trained, arrays, cell_table, tmp_path):
    path = tmp_path / "m.pt"
    _save(trained, arrays, path)
    clf = load_classifier(path, device="cpu")
    feats = cell_table[arrays["feats"]]
    other = feats.drop(columns=feats.columns[:3]).assign(grey_firstorder_Mean=1.0)
    with pytest.raises(SchemaMismatchError) as err:
        clf.predict_proba(other)
    msg = str(err.value)
    assert "uam-radiomics-v2" in msg and "3 missing" in msg and feats.columns[0] in msg
    assert "1 extra: grey_firstorder_Mean" in msg
    tagged = feats.copy()
    tagged.attrs["schema_id"] = "other-schema-v9"
    with pytest.raises(SchemaMismatchError, match="other-schema-v9"):
        clf.predict_proba(tagged)


def test_damaged_or_foreign_checkpoints_raise_checkpoint_error(trained, arrays, tmp_path):
    good = tmp_path / "good.pt"
    _save(trained, arrays, good)
    data = good.read_bytes()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated, corrupted"):
        load_classifier(cut)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError):
        read_checkpoint(junk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"weights": torch.zeros(2)}, foreign)
    with pytest.raises(CheckpointError, match="not a napari-uam"):
        read_checkpoint(foreign)
    newer = tmp_path / "newer.pt"
    raw = torch.load(good, weights_only=True)
    raw["format_version"] = 99
    torch.save(raw, newer)
    with pytest.raises(CheckpointError, match="version 99"):
        read_checkpoint(newer)
    with pytest.raises(CheckpointError, match="does not exist"):
        read_checkpoint(tmp_path / "absent.pt")


def test_missing_default_weights_raise_weights_not_found(monkeypatch, tmp_path):
    monkeypatch.setattr(ckpt_mod, "default_weights_path", lambda: tmp_path / "uam_default.pt")
    with pytest.raises(WeightsNotFoundError, match="not installed"):
        load_classifier()


def test_shipped_default_weights_classify_real_cells(cell_table):
    path = ckpt_mod.default_weights_path()
    if not path.is_file():
        pytest.skip(f"default weights not built yet ({path})")
    assert path.stat().st_size < 1_000_000
    clf = load_classifier(device="cpu")
    assert clf.schema_id == "uam-radiomics-v2" and clf.class_names[clf.tumor_class] == "tumor"
    proba = clf.predict_proba(cell_table[clf.feature_names])
    assert proba.shape == (len(cell_table), 2)
    m = classification_metrics(cell_table["target"], proba)
    assert m["auc"] > 0.7  # these images are in its training data: a sanity check, not a score


def test_region_targets_majority_rule():
    from napari_uam.tumor import cells_in_mask

    labels = np.zeros((4, 6), int)
    labels[:, :2] = 1  # 8 px, 6 inside
    labels[:, 2:4] = 2  # 8 px, 4 inside (exactly half: not tumor)
    labels[:, 4:] = 3  # 8 px, 0 inside
    mask = np.zeros((4, 6), np.uint8)
    mask[1:, :2] = 255
    mask[:2, 2:4] = 255
    t = cells_in_mask(labels, mask)
    assert t.to_dict() == {1: 1, 2: 0, 3: 0}


def test_group_split_keeps_groups_whole():
    groups = np.repeat(["a", "b", "c", "d", "e"], 4)
    keep, held = group_split(groups, 0.4, seed=1)
    assert set(groups[keep]).isdisjoint(groups[held]) and len(set(groups[held])) == 2


def test_normalizer_imputes_and_round_trips():
    x = np.array([[1.0, -5.0], [np.nan, 0.0], [3.0, 1e6], [np.inf, 2.0]])
    n = Normalizer.fit(x)
    z = n.transform(x)
    assert z.dtype == np.float32 and np.isfinite(z).all() and np.abs(z).max() <= 8
    assert z[1, 0] == 0.0  # NaN -> training median
    np.testing.assert_array_equal(Normalizer.from_dict(n.to_dict()).transform(x), z)


def test_metrics_binary():
    m = classification_metrics([0, 1, 1, 0], np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]]), CLASS_NAMES)
    assert m["accuracy"] == 0.5 and m["auc"] == 0.75 and m["per_class"]["tumor"]["support"] == 2


def test_training_leaves_subnormal_floats_working():
    """Training flushes denormals for speed; the process (a napari session) must get IEEE
    arithmetic back afterwards, or later float code silently loses tiny values."""
    from research.cells.trainer import TrainConfig, train_model

    rng = np.random.default_rng(0)
    x = rng.normal(size=(128, 8)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64)
    train_model(x[:96], y[:96], x[96:], y[96:], 2, TrainConfig(arch="trans", max_epochs=1, seed=0))
    tiny = np.array([1e-310]) * np.array([1.0])
    assert tiny[0] != 0.0, "flush-to-zero left on after training"
    assert float(torch.tensor([1e-310], dtype=torch.float64) * 1.0) != 0.0
