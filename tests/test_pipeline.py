"""The headless pipeline end to end on real H&E: contract of the result, accuracy, bad input."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest

from napari_uam import pipeline
from napari_uam.errors import InvalidImageError, NoNucleiError, SchemaMismatchError
from napari_uam.sample_data import SAMPLE_MPP, sample_image


@pytest.fixture(scope="module")
def sample_result():
    return pipeline.run(sample_image(), SAMPLE_MPP, device="cpu")


def test_result_contract_on_sample(sample_result):
    res = sample_result
    img = sample_image()
    assert res.labels.shape == img.shape[:2] and res.labels.dtype == np.int32
    ids = np.unique(res.labels)[1:]
    assert 100 < ids.size < 3000, "a 465x465 20x breast patch holds hundreds of nuclei"
    t = res.table
    assert list(t.columns[:6]) == ["label", "y", "x", "area_um2", "class", "tumor_probability"]
    assert np.array_equal(t["label"].to_numpy(), ids), "one row per label, in label order"
    assert not t.isna().any().any(), "no NaN anywhere in the cell table"
    assert t["tumor_probability"].between(0, 1).all()
    assert set(t["class"]) <= {"tumor", "non-tumor"}
    # Centroids lie inside their own nucleus' bounding region.
    yy = np.clip(np.round(t["y"]).astype(int), 0, img.shape[0] - 1)
    xx = np.clip(np.round(t["x"]).astype(int), 0, img.shape[1] - 1)
    assert (res.labels[yy, xx] == t["label"]).mean() > 0.9
    for key in ("model_id", "model_sha256", "schema_id", "segment_backend", "versions", "timings"):
        assert key in res.provenance
    tumor = res.tumor_cells
    kept = set(np.unique(tumor)[1:])
    assert kept == set(t.loc[t["class"] == "tumor", "label"])


def test_stages_one_by_one_equal_run(sample_result):
    img = sample_image()
    labels = pipeline.segment_nuclei(img, SAMPLE_MPP)
    assert np.array_equal(labels, sample_result.labels)
    table = pipeline.measure_cells(img, labels, SAMPLE_MPP, device="cpu")
    classified = pipeline.classify_cells(table, device="cpu")
    pd.testing.assert_frame_equal(classified, sample_result.table)


def test_classifies_real_tumor_cells_accurately(brca_dir):
    """Tumor vs non-tumor accuracy of the whole pipeline against BRCA-M2C val point labels."""
    from PIL import Image

    from napari_uam.segment.metrics import match_points

    correct = total = 0
    for jpg in sorted((brca_dir / "val").glob("*.jpg"))[:4]:
        img = np.asarray(Image.open(jpg).convert("RGB"))
        pts = pd.read_csv(jpg.with_name(jpg.stem + "_points.csv"))
        res = pipeline.run(img, 0.5, device="cpu")
        t = res.table
        pi, ti = match_points(t[["y", "x"]].to_numpy(), pts[["y", "x"]].to_numpy(), 3.0 / 0.5)
        pred_tumor = t["class"].to_numpy()[pi] == "tumor"
        true_tumor = pts["class"].to_numpy()[ti] == "tumor"
        correct += int((pred_tumor == true_tumor).sum())
        total += len(pi)
    assert total > 500
    assert correct / total > 0.75, f"pipeline accuracy {correct / total:.3f} on BRCA-M2C val"


@pytest.mark.parametrize("backend", ["watershed", "learned"])
def test_pixel_size_changes_nothing_for_a_resampled_image(backend):
    """The same tissue at 40x and 20x gives about the same number of nuclei with one backend."""
    from napari_uam.scale import rescale_image

    img = sample_image()
    n20 = pipeline.segment_nuclei(img, 0.5, backend=backend).max()
    n40 = pipeline.segment_nuclei(rescale_image(img, 2.0), 0.25, backend=backend).max()
    assert abs(int(n40) - int(n20)) <= 0.1 * n20


def test_bad_inputs_raise_typed_errors():
    with pytest.raises(InvalidImageError, match="grayscale"):
        pipeline.run(sample_image()[..., 0], 0.5)
    with pytest.raises(InvalidImageError, match="Pixel size"):
        pipeline.run(sample_image(), 0.0)
    with pytest.raises(NoNucleiError, match="No nuclei"):
        pipeline.run(np.full((256, 256, 3), 245, np.uint8), 0.5)
    with pytest.raises(NoNucleiError):
        pipeline.measure_cells(sample_image(), np.zeros((465, 465), np.int32), 0.5)


def test_model_refuses_features_of_another_schema(sample_result):
    table = sample_result.table.drop(columns=["class", "tumor_probability"])
    wrong = table.rename(columns={table.columns[5]: "some_other_feature"})
    with pytest.raises(SchemaMismatchError):
        pipeline.classify_cells(wrong, device="cpu")


def test_cancel_stops_before_work():
    from napari_uam.errors import CancelledError

    with pytest.raises(CancelledError):
        pipeline.run(sample_image(), SAMPLE_MPP, cancel=lambda: True)


def test_halving_fast_path_is_bit_identical(consep_dir):
    """40x -> 0.5 um/px takes an integer fast path; it must give the general path's pixels
    exactly (the shipped classifiers were trained on features of the general path)."""
    from PIL import Image

    from napari_uam.scale import _halve_uint8, _rescale_filtered, rescale_image

    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted(consep_dir.glob("*.jpg"))]
    rng = np.random.default_rng(0)
    images += [rng.integers(0, 256, s).astype(np.uint8) for s in ((2, 2, 3), (6, 8, 3), (10, 4), (100, 202, 3))]
    for img in images:
        want = _rescale_filtered(img, 0.5)
        np.testing.assert_array_equal(_halve_uint8(img), want)
        np.testing.assert_array_equal(rescale_image(img, 0.5), want)
    odd = rng.integers(0, 256, (11, 8, 3)).astype(np.uint8)  # odd size: the general path
    np.testing.assert_array_equal(rescale_image(odd, 0.5), _rescale_filtered(odd, 0.5))


def test_warm_up_runs_the_whole_pipeline_and_keeps_the_models():
    """warm_up classifies the cells of a crop of the shipped sample, leaving the classifier
    and the tumor-mask model in their caches for the user's first run."""
    from napari_uam.classify.checkpoint import default_weights_path
    from napari_uam.classify.cache import weights_cache
    from napari_uam.tumor import tumor_weights_available

    if not default_weights_path().is_file():
        pytest.skip("default UAM weights not installed")
    weights_cache.clear()
    info = pipeline.warm_up("cpu")
    assert info["device"] == "cpu" and info["cells"] >= 50, info
    assert weights_cache.size("classifier") == 1
    assert weights_cache.size("tumor_mask") == (1 if tumor_weights_available() else 0)


# ------------------------------------------- the classifier cache follows the file (issue 18)
def test_retrained_checkpoint_at_the_same_path_is_used(tmp_path):
    import pandas as pd
    import torch

    from napari_uam import pipeline
    from napari_uam.classify.checkpoint import default_weights_path

    src = default_weights_path()
    if not src.is_file():
        pytest.skip("default UAM weights not installed")
    path = tmp_path / "model.pt"
    # Both versions written by torch.save of the same structure: they then have one size. The
    # copy keeps the temperature but not the decision offset, so that negated logits swap the
    # two probabilities exactly (with an offset b, sigmoid(-z + b) is not 1 - sigmoid(z + b)).
    shipped = torch.load(src, map_location="cpu", weights_only=True)
    shipped["calibration"] = {"temperature": shipped["calibration"]["temperature"]}
    torch.save(shipped, path)
    clf = pipeline.get_classifier(path, "cpu")
    rng = np.random.default_rng(0)
    table = pd.DataFrame(rng.normal(size=(200, len(clf.feature_names))), columns=clf.feature_names)
    before = pipeline.classify_cells(table, model=path, device="cpu")

    # "Retrain" into the same path: the last layer negated swaps the two classes' logits.
    # Same size, and the modification time set back: only the content differs.
    st = path.stat()
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    last = [k for k, v in ckpt["state_dict"].items() if v.ndim == 2][-1]
    ckpt["state_dict"][last] = -ckpt["state_dict"][last]
    ckpt["state_dict"][last.replace("weight", "bias")] = -ckpt["state_dict"][last.replace("weight", "bias")]
    torch.save(ckpt, path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert path.stat().st_size == st.st_size

    after = pipeline.classify_cells(table, model=path, device="cpu")
    assert pipeline.get_classifier(path, "cpu").sha256 != clf.sha256
    np.testing.assert_allclose(after["tumor_probability"], 1 - before["tumor_probability"], atol=1e-5)
