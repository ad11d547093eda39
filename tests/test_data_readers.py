"""Both folder readers on small files: correct reading, and a clear DataError for each bad input."""
from __future__ import annotations

import json
import warnings
from pathlib import Path

import numpy as np
import pytest

from ckdlab.data import DataError, DataWarning, detect_layout, load, read_lattice, read_mmrec

N_ITEMS = 6  # item 5 has no interaction, like TikTok's cold items

# (user, item, x_label); lines 2.. of the .inter file
ROWS = [
    (0, 0, 0), (0, 1, 0), (0, 2, 1), (0, 3, 2),
    (1, 1, 0), (1, 4, 0), (1, 0, 2),
    (2, 2, 0), (2, 3, 0), (2, 4, 1),
    (3, 0, 0), (3, 3, 0),
]


def write_features(folder: Path, n_items: int = N_ITEMS, dims: dict | None = None, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    feats = {m: rng.normal(size=(n_items, d)) for m, d in (dims or {"text": 3, "image": 4}).items()}
    for m, f in feats.items():
        np.save(folder / f"{m}_feat.npy", f)  # float64 on disk: the reader converts
    return feats


def write_inter(folder: Path, rows=ROWS, header=("userID", "itemID", "x_label"), name: str = "toy",
                extra: dict | None = None) -> Path:
    """An .inter file; ``extra`` maps column -> value written for every row (e.g. rating)."""
    extra = extra or {}
    columns = list(header) + list(extra)
    lines = ["\t".join(columns)]
    for row in rows:
        cells = dict(zip(("userID", "itemID", "x_label"), row))
        lines.append("\t".join(str(cells.get(c, extra.get(c))) for c in columns))
    path = folder / f"{name}.inter"
    path.write_text("\n".join(lines) + "\n")
    return path


def mmrec_folder(tmp_path: Path, rows=ROWS, **kw) -> Path:
    folder = tmp_path / "mm"
    folder.mkdir(exist_ok=True)
    write_inter(folder, rows, **kw)
    write_features(folder)
    return folder


def lattice_folder(tmp_path: Path, rows=ROWS, splits: dict | None = None) -> Path:
    """A LATTICE folder with the same content as ``rows`` (or explicit per-file JSON objects)."""
    folder = tmp_path / "lat"
    (folder / "5-core").mkdir(parents=True, exist_ok=True)
    if splits is None:
        splits = {}
        for code, fname in enumerate(("train.json", "val.json", "test.json")):
            obj: dict = {}
            for u, i, x in rows:
                if x == code:
                    obj.setdefault(str(u), []).append(i)
            splits[fname] = obj
    for fname, obj in splits.items():
        (folder / "5-core" / fname).write_text(obj if isinstance(obj, str) else json.dumps(obj))
    write_features(folder)
    return folder


def expect_error(fn, *fragments):
    """Call ``fn`` expecting a DataError whose message contains every fragment."""
    with pytest.raises(DataError) as info:
        fn()
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, f"{fragment!r} not in {message!r}"
    return message


def sorted_pairs(arr: np.ndarray) -> np.ndarray:
    return arr[np.lexsort((arr[:, 1], arr[:, 0]))]


# ------------------------------------------------------------- good input

def test_mmrec_reads_sizes_splits_and_features(tmp_path):
    folder = mmrec_folder(tmp_path)
    ds = read_mmrec(folder)
    assert (ds.name, ds.n_users, ds.n_items) == ("toy", 4, N_ITEMS)
    assert ds.modalities == ("image", "text")  # sorted by name
    assert {m: f.shape for m, f in ds.features.items()} == {"image": (N_ITEMS, 4), "text": (N_ITEMS, 3)}
    assert all(f.dtype == np.float32 for f in ds.features.values())
    np.testing.assert_allclose(ds.features["text"], np.load(folder / "text_feat.npy").astype(np.float32))
    rows = np.array(ROWS)
    for code, s in enumerate(("train", "valid", "test")):
        assert ds.split(s).dtype == np.int64
        np.testing.assert_array_equal(ds.split(s), rows[rows[:, 2] == code][:, :2])
    assert ds.notes == {"duplicates_removed": 0, "excluded_eval_users": {"valid": 0, "test": 0}}
    assert ds.item_category is None and ds.source == str(folder)
    assert ds.summary()["interactions"] == {"train": 8, "valid": 2, "test": 2}


def test_mmrec_ignores_extra_columns_in_any_order(tmp_path):
    folder = mmrec_folder(tmp_path, header=("userID", "itemID", "x_label"),
                          extra={"rating": 4.5, "timestamp": 1388534400})
    plain = read_mmrec(folder)
    # Full MMRec files put x_label last, after rating and timestamp; column order is free.
    body = ["\t".join([str(i), str(u), "5", "1388534400", str(x)]) for u, i, x in ROWS]
    (folder / "toy.inter").write_text("\n".join(["itemID\tuserID\trating\ttimestamp\tx_label"] + body) + "\n")
    reordered = read_mmrec(folder)
    assert reordered.fingerprint == plain.fingerprint


def test_mmrec_tolerates_blank_lines_and_crlf(tmp_path):
    folder = mmrec_folder(tmp_path)
    expected = read_mmrec(folder).fingerprint
    lines = (folder / "toy.inter").read_text().splitlines()
    (folder / "toy.inter").write_text("\r\n".join(lines[:4] + [""] + lines[4:]) + "\r\n")
    assert read_mmrec(folder).fingerprint == expected


def test_item_category_is_read_and_checked(tmp_path):
    folder = mmrec_folder(tmp_path)
    np.save(folder / "item_category.npy", np.array([0, 1, 1, 2, 0, 2]))
    assert read_mmrec(folder).item_category.tolist() == [0, 1, 1, 2, 0, 2]
    np.save(folder / "item_category.npy", np.array([0, 1, 1]))
    expect_error(lambda: read_mmrec(folder), "item_category.npy", "3 entries")


def test_lattice_matches_mmrec_and_load_detects_both(tmp_path):
    mm, lat = mmrec_folder(tmp_path), lattice_folder(tmp_path)
    assert detect_layout(mm) == "mmrec" and detect_layout(lat) == "lattice"
    a, b = load(mm), load(lat)
    assert b.name == "lat" and (b.n_users, b.n_items) == (4, N_ITEMS)
    for s in ("train", "valid", "test"):
        np.testing.assert_array_equal(sorted_pairs(a.split(s)), sorted_pairs(b.split(s)))
    assert a.modalities == b.modalities


def test_lattice_accepts_users_missing_from_some_splits(tmp_path):
    folder = lattice_folder(tmp_path, splits={"train.json": {"0": [0, 1], "7": [2]}, "val.json": {"0": []},
                                              "test.json": {"7": [3]}})
    ds = read_lattice(folder)
    assert ds.n_users == 8 and len(ds.train) == 3 and len(ds.valid) == 0 and len(ds.test) == 1


# ------------------------------------------------------- duplicates, cold users

def test_duplicates_are_removed_keeping_the_earliest_split(tmp_path):
    rows = ROWS + [
        (0, 0, 0),  # same split again
        (0, 0, 2),  # train pair again in test
        (2, 4, 2),  # valid pair again in test
    ]
    rows = [(1, 4, 1)] + rows  # a valid row before its train duplicate: train wins anyway
    folder = mmrec_folder(tmp_path, rows=rows)
    with pytest.warns(DataWarning, match="removed 4 duplicate"):
        ds = read_mmrec(folder)
    assert ds.notes["duplicates_removed"] == 4
    keys = {s: set(map(tuple, ds.split(s).tolist())) for s in ("train", "valid", "test")}
    assert (0, 0) in keys["train"] and (0, 0) not in keys["test"]
    assert (1, 4) in keys["train"] and (1, 4) not in keys["valid"]
    assert (2, 4) in keys["valid"] and (2, 4) not in keys["test"]
    assert len(ds.train) == 8 and len(ds.valid) == 2 and len(ds.test) == 2


def test_lattice_duplicates_across_files_warn(tmp_path):
    folder = lattice_folder(tmp_path, splits={"train.json": {"0": [0, 1, 1]}, "val.json": {"0": [1]},
                                              "test.json": {"0": [2]}})
    with pytest.warns(DataWarning, match="removed 2 duplicate"):
        ds = read_lattice(folder)
    assert ds.notes["duplicates_removed"] == 2 and len(ds.valid) == 0


def test_eval_users_without_training_are_counted_and_warned_once(tmp_path):
    folder = mmrec_folder(tmp_path, rows=ROWS + [(4, 1, 2), (5, 2, 1), (5, 3, 2)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = read_mmrec(folder)
    messages = [str(w.message) for w in caught if issubclass(w.category, DataWarning)]
    assert len(messages) == 1 and "1 validation and 2 test user(s)" in messages[0]
    assert ds.notes["excluded_eval_users"] == {"valid": 1, "test": 2}
    assert ds.n_users == 6 and 4 not in ds.eval_users("test")


# ------------------------------------------------------------- bad folders

def test_missing_folder_and_unknown_layout(tmp_path):
    expect_error(lambda: load(tmp_path / "nope"), "nope", "no such folder")
    expect_error(lambda: read_mmrec(tmp_path / "nope"), "no such folder")
    (tmp_path / "empty").mkdir()
    expect_error(lambda: load(tmp_path / "empty"), "empty", ".inter", "5-core/train.json")


def test_mmrec_needs_exactly_one_inter_file(tmp_path):
    folder = tmp_path / "f"
    folder.mkdir()
    write_features(folder)
    expect_error(lambda: read_mmrec(folder), "exactly one", "found none")
    write_inter(folder, name="a")
    write_inter(folder, name="b")
    expect_error(lambda: read_mmrec(folder), "a.inter, b.inter")


def test_missing_feature_files(tmp_path):
    folder = mmrec_folder(tmp_path)
    for p in folder.glob("*_feat.npy"):
        p.unlink()
    expect_error(lambda: read_mmrec(folder), "no item feature files", "_feat.npy")


def test_lattice_missing_split_file(tmp_path):
    folder = lattice_folder(tmp_path)
    (folder / "5-core" / "val.json").unlink()
    expect_error(lambda: read_lattice(folder), "5-core/val.json")


def test_both_layouts_need_an_explicit_choice(tmp_path):
    folder = lattice_folder(tmp_path)
    write_inter(folder)
    expect_error(lambda: load(folder), "layout=")
    assert load(folder, layout="mmrec").name == "toy"
    assert load(folder, layout="lattice").name == "lat"


# ------------------------------------------------------------ bad .inter rows

def replace_line(folder: Path, line_no: int, text: str) -> None:
    path = folder / "toy.inter"
    lines = path.read_text().splitlines()
    lines[line_no - 1] = text
    path.write_text("\n".join(lines) + "\n")


def test_missing_column(tmp_path):
    folder = mmrec_folder(tmp_path, header=("userID", "itemID", "label"))
    expect_error(lambda: read_mmrec(folder), "toy.inter", "missing column(s) x_label", "label")


@pytest.mark.parametrize("line, fragments", [
    ("abc\t1\t0", ["toy.inter line 5", "userID", "'abc'"]),
    ("1\t1.5\t0", ["toy.inter line 5", "itemID", "'1.5'"]),
    ("1\t\t0", ["toy.inter line 5", "itemID", "empty cell"]),
    ("1\t-2\t0", ["toy.inter line 5", "itemID -2", "negative"]),
    ("-1\t2\t0", ["toy.inter line 5", "userID -1", "negative"]),
    ("1\t2\t3", ["toy.inter line 5", "x_label 3"]),
    ("1\t2\ttrain", ["toy.inter line 5", "x_label", "'train'"]),
    ("1\t6\t0", ["toy.inter line 5", "itemID 6", "out of range", "6 rows"]),
])
def test_bad_inter_rows_name_file_line_and_value(tmp_path, line, fragments):
    folder = mmrec_folder(tmp_path)
    replace_line(folder, 5, line)
    expect_error(lambda: read_mmrec(folder), *fragments)


def test_line_numbers_count_blank_lines(tmp_path):
    folder = mmrec_folder(tmp_path)
    lines = (folder / "toy.inter").read_text().splitlines()
    lines[6] = "2\tx\t0"
    (folder / "toy.inter").write_text("\n".join(lines[:3] + ["", ""] + lines[3:]) + "\n")
    expect_error(lambda: read_mmrec(folder), "toy.inter line 9", "'x'")


def test_feature_matrix_with_fewer_rows_than_items(tmp_path):
    folder = mmrec_folder(tmp_path)
    for m, d in (("image", 4), ("text", 3)):
        np.save(folder / f"{m}_feat.npy", np.zeros((4, d)))
    expect_error(lambda: read_mmrec(folder), "toy.inter line", "itemID 4", "image_feat.npy", "only 4 rows")


def test_empty_train_split(tmp_path):
    folder = mmrec_folder(tmp_path, rows=[(u, i, 2 if x == 0 else x) for u, i, x in ROWS])
    expect_error(lambda: read_mmrec(folder), "toy.inter", "train split is empty")
    folder = mmrec_folder(tmp_path, rows=[])
    expect_error(lambda: read_mmrec(folder), "toy.inter", "train split is empty")
    (folder / "toy.inter").write_text("")
    expect_error(lambda: read_mmrec(folder), "toy.inter", "empty file")


# ---------------------------------------------------------- bad feature files

@pytest.mark.parametrize("bad, row", [(np.nan, 3), (np.inf, 0), (-np.inf, 5)])
def test_non_finite_features_name_file_and_row(tmp_path, bad, row):
    folder = mmrec_folder(tmp_path)
    feats = np.load(folder / "text_feat.npy")
    feats[row, 1] = bad
    feats[5, 2] = np.nan  # a later bad row: the first one is reported
    np.save(folder / "text_feat.npy", feats)
    expect_error(lambda: read_mmrec(folder), "text_feat.npy", f"row {row}", repr(bad))


def test_values_beyond_float32_range_are_caught(tmp_path):
    folder = mmrec_folder(tmp_path)
    feats = np.load(folder / "image_feat.npy")
    feats[2, 0] = 1e300
    np.save(folder / "image_feat.npy", feats)
    expect_error(lambda: read_mmrec(folder), "image_feat.npy", "row 2")


@pytest.mark.parametrize("writer, fragment", [
    (lambda p: np.save(p, np.zeros(N_ITEMS)), "2-D"),
    (lambda p: np.save(p, np.zeros((N_ITEMS, 2, 2))), "2-D"),
    (lambda p: np.save(p, np.zeros((N_ITEMS, 0))), "at least one"),
    (lambda p: np.save(p, np.array([[{"a": 1}]] * N_ITEMS, dtype=object), allow_pickle=True), "object array"),
    (lambda p: np.save(p, np.full((N_ITEMS, 2), "x")), "not numeric"),
    (lambda p: np.save(p, np.ones((N_ITEMS, 2), dtype=complex)), "not numeric"),
    (lambda p: p.write_text("1,2,3\n4,5,6\n"), "not a readable .npy"),
    (lambda p: p.write_bytes(b""), "not a readable .npy"),
    (lambda p: p.write_bytes(np.lib.format.MAGIC_PREFIX + b"\x01\x00garbage"), "not a readable .npy"),
    (lambda p: np.save(p, np.zeros((N_ITEMS, 2)))  # truncated: header intact, data cut short
     or p.write_bytes(p.read_bytes()[:-10]), "not a readable .npy"),
    (lambda p: np.savez(p.with_suffix(".npz"), np.zeros((N_ITEMS, 2)))
     or p.write_bytes(p.with_suffix(".npz").read_bytes()), "not a readable .npy"),
])
def test_feature_file_that_is_not_a_numeric_matrix(tmp_path, writer, fragment):
    folder = mmrec_folder(tmp_path)
    writer(folder / "image_feat.npy")
    expect_error(lambda: read_mmrec(folder), "image_feat.npy", fragment)


def test_feature_files_disagreeing_on_rows(tmp_path):
    folder = mmrec_folder(tmp_path)
    np.save(folder / "text_feat.npy", np.zeros((N_ITEMS + 2, 3)))
    expect_error(lambda: read_mmrec(folder), "disagree", "image_feat.npy has 6", "text_feat.npy has 8")


def test_integer_and_float16_features_become_float32(tmp_path):
    folder = mmrec_folder(tmp_path)
    np.save(folder / "image_feat.npy", np.arange(N_ITEMS * 2, dtype=np.int32).reshape(N_ITEMS, 2))
    np.save(folder / "text_feat.npy", np.ones((N_ITEMS, 3), dtype=np.float16))
    ds = read_mmrec(folder)
    assert all(f.dtype == np.float32 for f in ds.features.values())
    assert ds.features["image"][5, 1] == 11


# ------------------------------------------------------------ bad JSON splits

@pytest.mark.parametrize("content, fragments", [
    ('{"0": [0, 1', ["5-core/train.json", "not valid JSON", "line 1"]),
    ("[[0, 1]]", ["5-core/train.json", "JSON list"]),
    ({"zero": [0]}, ["5-core/train.json", "user key 'zero'"]),
    ({"-1": [0]}, ["5-core/train.json", "user key '-1'"]),
    ({"0": [0], "3": [1, "x"]}, ["5-core/train.json user '3'", "'x'"]),
    ({"0": [0], "3": [1, 2.5]}, ["5-core/train.json user '3'", "2.5"]),
    ({"0": [0], "3": [1, [2]]}, ["5-core/train.json user '3'", "[2]"]),
    ({"0": [0], "3": 4}, ["5-core/train.json user '3'", "list of item ids"]),
    ({"0": [0], "3": [1, -4]}, ["5-core/train.json user '3'", "item -4", "negative"]),
    ({"0": [0], "3": [1, 9]}, ["5-core/train.json user '3'", "item 9", "out of range"]),
    ({}, ["5-core/train.json", "train split is empty"]),
])
def test_bad_lattice_train_file(tmp_path, content, fragments):
    splits = {"train.json": content, "val.json": {"0": [2]}, "test.json": {"1": [3]}}
    folder = lattice_folder(tmp_path, splits=splits)
    expect_error(lambda: read_lattice(folder), *fragments)


def test_out_of_range_item_in_test_json_names_that_file(tmp_path):
    splits = {"train.json": {"0": [0]}, "val.json": {"0": [2]}, "test.json": {"12": [1, 3], "13": [40]}}
    expect_error(lambda: read_lattice(lattice_folder(tmp_path, splits=splits)),
                 "5-core/test.json user '13'", "item 40")
