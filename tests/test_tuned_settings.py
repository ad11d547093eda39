"""The shipped tuned-settings table (ckdlab.tuned): lookup by fingerprint, precedence, ``tune --ship``, CLI."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import write_mmrec  # noqa: E402

from ckdlab import tuned  # noqa: E402
from ckdlab.config import DEFAULT_LR, TrainConfig  # noqa: E402
from ckdlab.data import load, normalize_dataset  # noqa: E402


@pytest.fixture(scope="module")
def small():
    return load("synthetic", n_users=120, n_items=100)


def entry(data, backbone="VBPR", method="none", **settings):
    return tuned.TunedEntry(data.name, data.fingerprint, backbone, method,
                            settings or {"lr": 0.005, "reg_weight": 0.01, "max_epochs": 7}, {"study": "s"})


def test_the_shipped_table_loads_and_names_real_fingerprints():
    table = tuned.load_table()
    for e in table:
        assert len(e.fingerprint) >= 12 and e.settings and e.source.get("study")
        assert e.source.get("numbers_version") is not None and e.source.get("commit")
        assert "trials" in e.source and "valid_recall@20" in e.source  # where it came from
    keys = [(e.fingerprint, e.backbone.lower(), e.method) for e in table]
    assert len(keys) == len(set(keys))


def test_lookup_matches_fingerprint_backbone_and_method_only(small, tmp_path):
    path = tuned.record(entry(small), tmp_path / "t.json")
    table = tuned.load_table(path)
    assert tuned.lookup(small, "vbpr", "none", table) is not None  # backbone case-insensitive
    assert tuned.lookup(small, "VBPR", "ckd", table) is None
    assert tuned.lookup(small, "MGCN", "none", table) is None
    other = load("synthetic", n_users=120, n_items=100, seed=5)  # same name, other content: no match
    assert other.name == small.name and other.fingerprint != small.fingerprint
    assert tuned.lookup(other, "VBPR", "none", table) is None
    standardized = normalize_dataset(small, "standardize")  # entries are keyed by the data as read ...
    assert standardized.raw_fingerprint == small.fingerprint
    assert tuned.lookup(standardized, "VBPR", "none", table) is None  # ... and say how they normalised
    row = tuned.TunedEntry(small.name, small.fingerprint, "VBPR", "ckd", {"lr": 0.004}, {"study": "s"},
                           dict(standardized.normalization))
    assert tuned.lookup(standardized, "VBPR", "ckd", [row]) is row and tuned.lookup(small, "VBPR", "ckd", [row]) is row


def test_apply_tuned_sets_fields_backbone_and_method_params(small):
    table = [entry(small, "MGCN", "ckd", lr=0.005, reg_weight=0.001, max_epochs=9, **{
        "backbone.knn_k": 5, "method.lambda_kd": 0.1, "method.teacher": {"max_epochs": 9}})]
    cfg, found = tuned.apply_tuned(TrainConfig(backbone="MGCN", method="ckd"), small, table=table)
    assert found is table[0]
    assert (cfg.lr, cfg.reg_weight, cfg.max_epochs) == (0.005, 0.001, 9)
    assert cfg.backbone_params == {"knn_k": 5}
    assert cfg.method_params == {"lambda_kd": 0.1, "teacher": {"max_epochs": 9}}
    same, none = tuned.apply_tuned(TrainConfig(backbone="VBPR"), small, table=table)
    assert none is None and same == TrainConfig(backbone="VBPR")


def test_record_replaces_the_same_row_and_keeps_others(small, tmp_path):
    path = tmp_path / "t.json"
    tuned.record(entry(small), path)
    tuned.record(entry(small, method="ckd"), path)
    tuned.record(entry(small, lr=0.001), path)
    table = tuned.load_table(path)
    assert [(e.method, e.settings.get("lr")) for e in table] == [("ckd", 0.005), ("none", 0.001)]


def test_a_damaged_table_is_a_clear_error(tmp_path):
    bad = tmp_path / "t.json"
    bad.write_text(json.dumps({"format": 99, "entries": []}))
    with pytest.raises(ValueError, match="t.json: not a tuned-settings table"):
        tuned.load_table(bad)


def test_cli_train_uses_tuned_settings_and_flags_override_them(small, tmp_path, monkeypatch, capsys):
    from ckdlab import cli

    folder = write_mmrec(small, tmp_path / "small")
    data = load(str(folder), normalize=None)
    table = tmp_path / "t.json"
    tuned.record(entry(data, lr=0.004, reg_weight=0.002, max_epochs=2), table)
    monkeypatch.setattr(tuned, "TABLE_PATH", table)
    seen = []
    monkeypatch.setattr("ckdlab.experiments.run", lambda cfg, ds, **kw: seen.append(cfg) or _stop())
    common = ["train", "--data", str(folder), "--backbone", "VBPR", "--quiet"]
    for extra in ([], ["--set", "lr=0.003", "--epochs", "4"], ["--no-tuned"]):
        with pytest.raises(_Stop):
            cli.main(common + extra)
    assert [(c.lr, c.reg_weight, c.max_epochs) for c in seen] == [
        (0.004, 0.002, 2), (0.003, 0.002, 4), (DEFAULT_LR, TrainConfig.reg_weight, TrainConfig.max_epochs)]
    out = capsys.readouterr().out
    assert out.count("tuned settings") == 2 and "study s" in out


class _Stop(Exception):
    pass


def _stop():
    raise _Stop


def test_tune_ship_records_the_choice_and_train_reproduces_its_final_run(small, tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    from ckdlab import cli

    from ckdlab import shipping

    monkeypatch.setattr(shipping, "defaults_validation", lambda *a, **k: 0.0)  # the search wins (see below)
    folder = write_mmrec(small, tmp_path / "small")
    table = tmp_path / "t.json"
    cache = str(tmp_path / "cache")
    assert cli.main(["tune", "--data", str(folder), "--backbone", "VBPR", "--method", "none", "--trials", "2",
                     "--epochs-budget", "2", "--set", "batch_size=512", "--cache-dir", cache, "--quiet",
                     "--ship", str(table)]) == 0
    out = capsys.readouterr().out
    assert "shipped small/VBPR/none" in out and "the defaults 0.0000" in out
    [shipped] = tuned.load_table(table)
    final_test = float(out.split("final seed 0: test recall@20 ")[1].split(",")[0])
    assert shipped.settings["max_epochs"] == 2 and shipped.settings["batch_size"] == 512  # a fixed --set too
    # only what differs from the defaults (a searched value equal to its default is not repeated)
    assert set(shipped.settings) <= {"lr", "reg_weight", "max_epochs", "batch_size"}
    assert "evaluate_test" not in shipped.settings
    monkeypatch.setattr(tuned, "TABLE_PATH", table)
    result_json = tmp_path / "r.json"
    assert cli.main(["train", "--data", str(folder), "--backbone", "VBPR", "--cache-dir", cache,
                     "--quiet", "--out", str(result_json)]) == 0
    assert json.loads(result_json.read_text())["test"]["recall@20"] == pytest.approx(final_test, abs=5e-5)


def test_a_choice_the_defaults_beat_on_validation_is_not_shipped_and_an_old_entry_is_withdrawn(
        small, tmp_path, monkeypatch, capsys):
    pytest.importorskip("optuna")
    from ckdlab import cli, shipping

    folder = write_mmrec(small, tmp_path / "small")
    table = tmp_path / "t.json"
    args = ["tune", "--data", str(folder), "--backbone", "VBPR", "--method", "none", "--trials", "1",
            "--epochs-budget", "1", "--cache-dir", str(tmp_path / "cache"), "--quiet", "--ship", str(table)]
    monkeypatch.setattr(shipping, "defaults_validation", lambda *a, **k: 0.0)
    assert cli.main(args) == 0 and len(tuned.load_table(table)) == 1
    monkeypatch.setattr(shipping, "defaults_validation", lambda *a, **k: 1.0)  # above any Recall@20
    capsys.readouterr()
    assert cli.main(args) == 0
    assert "not shipped: the package defaults score 1.0000" in capsys.readouterr().out
    assert tuned.load_table(table) == []


def test_the_defaults_baseline_never_reads_the_test_split(small, monkeypatch):
    from ckdlab import shipping

    seen = []
    monkeypatch.setattr(shipping, "run", lambda config, data, cache_dir=None: seen.append(config) or
                        type("R", (), {"valid": {"recall@20": 0.5}})())
    assert shipping.defaults_validation(small, "MGCN", "ckd", seed=3) == 0.5
    [config] = seen
    assert (config.backbone, config.method, config.seed, config.evaluate_test) == ("MGCN", "ckd", 3, False)
    assert config.lr == TrainConfig().lr and config.reg_weight == TrainConfig().reg_weight


def test_an_entry_says_how_to_normalise_and_a_given_normalisation_wins(monkeypatch, capsys):
    from ckdlab import cli

    default = load("synthetic")
    row = tuned.TunedEntry(default.name, default.fingerprint, "VBPR", "none", {"lr": 0.004}, {"study": "s"},
                           {m: "standardize" for m in default.modalities})
    monkeypatch.setattr(tuned, "TABLE_PATH", None)
    seen = []
    monkeypatch.setattr("ckdlab.tuned.load_table", lambda path=None: [row])
    monkeypatch.setattr("ckdlab.experiments.run", lambda cfg, ds, **kw: seen.append((cfg, ds)) or _stop())
    for extra in ([], ["--normalize", "standardize"], ["--normalize", "none"], ["--normalize", "l2"]):
        with pytest.raises(_Stop):
            cli.main(["train", "--data", "synthetic", "--quiet", "--set", "seed=0"] + extra)
    used = [(cfg.lr, sorted(set((ds.normalization or {"-": "as read"}).values()))) for cfg, ds in seen]
    assert used == [(0.004, ["standardize"]), (0.004, ["standardize"]), (DEFAULT_LR, ["as read"]),
                    (DEFAULT_LR, ["l2"])]
    assert "features {" in capsys.readouterr().out


def test_notebook_configs_use_an_entry_only_for_the_runs_it_covers(small, monkeypatch):
    from ckdlab import experiments as ex

    row = entry(small, "VBPR", "ckd", lr=0.004, max_epochs=3, **{"method.lambda_kd": 0.1})
    monkeypatch.setattr("ckdlab.tuned.load_table", lambda path=None: [row])
    configs = ex.table_configs(["VBPR"], ["none", "ckd"], [0, 1], tuned=small, max_epochs=9, lr=0.002)
    plain, ckd = [c for c in configs if c.method == "none"], [c for c in configs if c.method == "ckd"]
    assert {(c.lr, c.max_epochs) for c in plain} == {(0.002, 9)}  # no entry: the notebook's settings
    assert {(c.lr, c.max_epochs, c.method_params["lambda_kd"]) for c in ckd} == {(0.004, 3, 0.1)}
    assert [c.seed for c in ckd] == [0, 1]
    assert ex.table_configs(["VBPR"], ["ckd"], [0], max_epochs=9, lr=0.002)[0].lr == 0.002  # tuned=None
    variants = dict(ex.ablation_configs("VBPR", [0], tuned=small, max_epochs=9))
    assert variants["CKD"] == ckd[0] and variants["w/o re-weight"].lr == 0.004
    assert variants["w/o re-weight"].method_params["lambda_kd"] == 0.1
    dyn = ex.tuned_config("VBPR", "ckd", small, seed=0, eval_by_modality=True, lr=0.002)
    assert dyn.eval_by_modality and dyn.lr == 0.004
    other = normalize_dataset(small, "l2")  # another normalisation than the entry's: not covered
    assert ex.tuned_config("VBPR", "ckd", other, lr=0.002).lr == 0.002
