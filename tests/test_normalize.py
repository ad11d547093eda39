"""Feature normalisation in the loader: standardize / l2, per modality, fingerprint and summary."""
import hashlib

import numpy as np
import pytest

from conftest import make_tiny_dataset, write_mmrec

from ckdlab.cli import main
from ckdlab.data import load, normalize_dataset, parse_normalize
from ckdlab.data.dataset import SPLITS
from ckdlab.data.normalize import l2_rows, standardize_columns
from ckdlab.experiments import load_dataset


def unnormalised_fingerprint(ds) -> str:
    """The fingerprint as computed before normalisation existed (ids, splits, features, categories)."""
    h = hashlib.sha256()
    h.update(f"{ds.n_users}:{ds.n_items}".encode())
    for s in SPLITS:
        h.update(s.encode())
        h.update(np.ascontiguousarray(ds.split(s), dtype=np.int64).tobytes())
    for m, f in ds.features.items():
        h.update(m.encode())
        h.update(np.ascontiguousarray(f, dtype=np.float32).tobytes())
    if ds.item_category is not None:
        h.update(np.ascontiguousarray(ds.item_category, dtype=np.int64).tobytes())
    return h.hexdigest()[:16]


@pytest.fixture
def folder(tmp_path):
    ds = make_tiny_dataset()
    ds.features["image"][:, 3] = 7.5  # a constant column
    ds.features["text"][5] = 0.0  # an all-zero row
    return write_mmrec(ds, tmp_path / "tiny")


def test_standardize_gives_zero_mean_unit_std_and_zeros_for_constant_columns(folder):
    raw = load(folder, normalize=None)
    ds = load(folder, normalize="standardize")
    for m in ds.modalities:
        x = ds.features[m].astype(np.float64)
        varying = raw.features[m].std(0) > 0
        np.testing.assert_allclose(x.mean(0), 0.0, atol=1e-6)
        np.testing.assert_allclose(x.std(0)[varying], 1.0, rtol=1e-5)
        assert np.isfinite(x).all() and ds.features[m].dtype == np.float32
    assert np.all(ds.features["image"][:, 3] == 0.0)
    assert ds.normalization == {"image": "standardize", "text": "standardize"}


def test_l2_gives_unit_rows_and_keeps_zero_rows(folder):
    ds = load(folder, normalize="l2")
    norms = np.linalg.norm(ds.features["text"].astype(np.float64), axis=1)
    assert norms[5] == 0.0
    np.testing.assert_allclose(np.delete(norms, 5), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(ds.features["image"], axis=1), 1.0, rtol=1e-6)


def test_per_modality_leaves_the_others_as_read(folder):
    raw = load(folder, normalize=None)
    ds = load(folder, normalize={"image": "standardize"})
    assert np.array_equal(ds.features["text"], raw.features["text"])
    np.testing.assert_allclose(ds.features["image"], standardize_columns(raw.features["image"]))
    mixed = load(folder, normalize={"image": "l2", "text": "standardize"})
    np.testing.assert_allclose(mixed.features["image"], l2_rows(raw.features["image"]))
    assert mixed.normalization == {"image": "l2", "text": "standardize"}


def test_fingerprint_and_summary_record_it_only_when_set(folder):
    raw = load(folder, normalize=None)
    assert raw.normalization is None and "normalization" not in raw.summary()
    assert raw.fingerprint == unnormalised_fingerprint(raw)
    prints = {raw.fingerprint}
    for spec in ("standardize", "l2", {"image": "l2"}, {"text": "l2"}):
        ds = load(folder, normalize=spec)
        prints.add(ds.fingerprint)
        assert ds.summary()["normalization"] == ds.normalization
    assert len(prints) == 5
    # the record itself enters the fingerprint, not only the changed numbers
    same_numbers = load(folder, normalize=None)
    same_numbers.normalization = {"image": "l2"}
    assert same_numbers.fingerprint != raw.fingerprint


def test_synthetic_and_in_memory_datasets(folder):
    syn = load("synthetic", n_users=40, n_items=60, normalize="l2")
    assert syn.normalization == {m: "l2" for m in syn.modalities}
    raw = load(folder, normalize=None)
    assert load_dataset(raw) is raw
    assert load_dataset(raw, normalize="l2").fingerprint == load(folder, normalize="l2").fingerprint
    with pytest.raises(ValueError, match="normalised already"):
        normalize_dataset(load(folder, normalize="l2"), "standardize")


def test_bad_specs_are_errors(folder):
    with pytest.raises(ValueError, match="lacks"):
        load(folder, normalize={"audio": "l2"})
    with pytest.raises(ValueError, match="unknown normalisation"):
        load(folder, normalize="minmax")
    assert parse_normalize("none") is None and parse_normalize(None) is None
    assert parse_normalize("l2") == "l2"
    assert parse_normalize("image=standardize, text=l2") == {"image": "standardize", "text": "l2"}
    assert parse_normalize('{"image": "l2"}') == {"image": "l2"}
    with pytest.raises(ValueError):
        parse_normalize("image=")


def test_cli_train_normalize(folder, tmp_path, capsys):
    assert main(["train", "--data", str(folder), "--backbone", "MF", "--epochs", "1", "--no-cache", "--quiet",
                 "--device", "cpu", "--normalize", "image=standardize", "--out", str(tmp_path / "r.json")]) == 0
    import json

    result = json.loads((tmp_path / "r.json").read_text())
    assert result["dataset"]["normalization"] == {"image": "standardize"}
    assert main(["train", "--data", str(folder), "--normalize", "image=minmax", "--quiet"]) == 2


def test_the_loader_standardises_a_folder_by_default_and_keeps_the_as_read_fingerprint(folder):
    from ckdlab.data import default_normalization
    from ckdlab.data.normalize import DEFAULT_NORMALIZE

    raw = load(folder, normalize=None)
    default = load(folder)
    assert DEFAULT_NORMALIZE == "standardize" and default_normalization(folder) == "standardize"
    assert default.normalization == {m: "standardize" for m in raw.modalities}
    assert default.fingerprint == load(folder, normalize="standardize").fingerprint != raw.fingerprint
    assert default.raw_fingerprint == raw.fingerprint == raw.raw_fingerprint and raw.as_read_fingerprint is None
    assert load_dataset(str(folder)).fingerprint == default.fingerprint
    assert parse_normalize("default") == "default" and load(folder, normalize="default").fingerprint == \
        default.fingerprint
    # the generated dataset's features are drawn centred: as generated unless asked
    assert default_normalization("synthetic") is None and load("synthetic", n_users=40, n_items=60).normalization is None
