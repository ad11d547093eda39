"""Backbones from outside the package: a file, a module, a decorator, an entry point.

They resolve by themselves in every process (a spawned grid worker too), train
with CKD through the CLI, and are keyed by name + source sha256; built-in keys
are exactly those of before plug-ins existed.
"""
from __future__ import annotations

import hashlib
import json
import linecache
import subprocess
import sys
import textwrap

import pytest

from conftest import make_tiny_dataset, write_mmrec
from plugin_sources import model_source, write_distribution, write_model

import ckdlab
from ckdlab import experiments as ex
from ckdlab.backbones import Backbone, available, build_backbone, resolve_backbone
from ckdlab.backbones.specs import entry_point_names
from ckdlab.cli import main
from ckdlab.config import TrainConfig
from ckdlab.store import entry_key


def sha256(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# -- built-ins: keys unchanged --------------------------------------------------------------------

#: entry_key(config=identity()) of these configurations: what plug-in support must not change. Pinned before
#: plug-ins existed; re-pinned when ``eval_by_modality`` left the identity (it changes no trained number).
#: ``reg_weight`` is given as the default it had then (1e-4), so a later change of the default moves no pin;
#: MMGCN's ``lr`` likewise (1e-3, before MMGCN got its own default rate).
BUILT_IN_KEYS = [
    (dict(reg_weight=1e-4), "51d5a1496f0c664f87d2"),
    (dict(backbone="mmgcn", method="ckd", seed=3, ablate=("text",), backbone_params={"n_layers": 3},
          method_params={"lambda_kd": 0.1}, reg_weight=1e-4, lr=1e-3), "7d886b0a7fba80ce23a7"),
    (dict(backbone="Pop", reg_weight=1e-4), "459ea0d6efc51969dc14"),
]


@pytest.mark.parametrize("fields, key", BUILT_IN_KEYS)
def test_built_in_backbones_keep_their_keys(fields, key):
    config = TrainConfig(**fields)
    assert entry_key(config=config.identity()) == key
    assert config.backbone_source is None and config.backbone_sha256 is None
    assert "backbone_source" not in config.to_dict() and "backbone_sha256" not in config.to_dict()
    assert config.backbone == fields.get("backbone", "VBPR")  # the spelling given is kept (it is in the key)


# -- a file ----------------------------------------------------------------------------------------

def test_a_file_backbone_is_keyed_by_name_and_source_hash_not_location(tmp_path):
    path = write_model(tmp_path / "a", "FileNet")
    config = TrainConfig(backbone=f"{path}:FileNet", seed=2)
    assert config.backbone == "FileNet"
    assert config.backbone_source == f"{path.resolve()}:FileNet"
    assert config.backbone_sha256 == sha256(path)
    identity = config.identity()
    assert identity["backbone"] == "FileNet" and identity["backbone_sha256"] == sha256(path)
    assert "backbone_source" not in identity
    assert TrainConfig.from_dict(config.to_dict()) == config
    assert type(build_backbone(f"{path}:FileNet", make_tiny_dataset())).__name__ == "FileNet"

    moved = write_model(tmp_path / "b", "FileNet")  # the same bytes elsewhere: the same key
    with pytest.warns(UserWarning, match="now means"):
        elsewhere = TrainConfig(backbone=f"{moved}:FileNet", seed=2)
    assert entry_key(config=elsewhere.identity()) == entry_key(config=identity)

    write_model(tmp_path / "b", "FileNet", comment="edited")  # new bytes: a new key
    with pytest.raises(RuntimeError, match="changed since this configuration was made"):
        elsewhere.identity()  # made before the edit: its key would describe other code
    stale = elsewhere.to_dict()
    edited = TrainConfig(backbone=f"{moved}:FileNet", seed=2)
    assert edited.backbone_sha256 == sha256(moved) != identity["backbone_sha256"]
    assert entry_key(config=edited.identity()) != entry_key(config=identity)
    with pytest.raises(ValueError, match="changed since this configuration was made"):
        TrainConfig.from_dict(stale)  # what a spawned worker does with a config made before the edit


def test_switching_a_plugin_config_to_a_built_in_forgets_the_source(tmp_path):
    path = write_model(tmp_path, "SwitchNet")
    config = TrainConfig(backbone=f"{path}:SwitchNet", lr=0.01)
    for other in (config.replace(backbone="VBPR"), config.with_settings(["backbone=VBPR"])):
        assert other.backbone_source is None and "backbone_sha256" not in other.identity()
        assert other.identity() == TrainConfig(lr=0.01).identity()


def test_bad_specs_say_what_is_wrong(tmp_path):
    with pytest.raises(KeyError, match="unknown backbone 'NoSuchNet'.*path/to/file.py:ClassName"):
        TrainConfig(backbone="NoSuchNet")
    with pytest.raises(FileNotFoundError, match="no file"):
        TrainConfig(backbone=f"{tmp_path}/missing.py:Net")
    (tmp_path / "plain.py").write_text("class Net:\n    pass\n")
    with pytest.raises(TypeError, match="not a subclass of ckdlab.backbones.Backbone"):
        TrainConfig(backbone=f"{tmp_path}/plain.py:Net")
    with pytest.raises(AttributeError, match="has no 'Other'"):
        TrainConfig(backbone=f"{tmp_path}/plain.py:Other")
    with pytest.raises(ImportError, match="cannot import 'no_such_module_xyz'"):
        TrainConfig(backbone="no_such_module_xyz:Net")
    with pytest.raises(ValueError, match="expected 'path/to/file.py:ClassName'"):
        TrainConfig(backbone="nothing:")
    assert main(["train", "--backbone", f"{tmp_path}/missing.py:Net", "--epochs", "1"]) == 2


def test_check_backbone_command(tmp_path, capsys):
    path = write_model(tmp_path, "CheckNet")
    assert main(["check-backbone", f"{path}:CheckNet", "--param", "embedding_dim=4"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("check_backbone(CheckNet): ") and "0 failed" in out
    assert main(["check-backbone", "MF"]) == 1  # no content: unablated_uses_features fails
    assert "FAILED  unablated_uses_features" in capsys.readouterr().out


def test_names_are_path_safe_and_built_in_names_are_taken():
    with pytest.raises(ValueError, match="is taken"):
        ckdlab.register_backbone("VBPR")(type("Impostor", (Backbone,), {}))
    with pytest.raises(ValueError, match="must start with a letter"):
        ckdlab.register_backbone("my/net")
    assert "VBPR" in available()


# -- a decorator, a module, an entry point ------------------------------------------------------------

def test_a_decorated_class_in_a_module_resolves_by_name_and_by_module_spec(tmp_path, monkeypatch):
    package = tmp_path / "ckdtest_deco"
    source = "import ckdlab\n" + model_source("DecoNet").replace(
        "\nclass DecoNet", '\n@ckdlab.register_backbone("Deco-Net")\nclass DecoNet')
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "nets.py").write_text(source)
    monkeypatch.syspath_prepend(str(tmp_path))
    by_spec = TrainConfig(backbone="ckdtest_deco.nets:DecoNet")
    assert by_spec.backbone == "Deco-Net"  # the decorator's name
    assert by_spec.backbone_source == "ckdtest_deco.nets:DecoNet"
    assert by_spec.backbone_sha256 == sha256(package / "nets.py")
    assert TrainConfig(backbone="deco-net").identity() == by_spec.identity()  # registered on import
    assert "Deco-Net" in available()

    (package / "nets.py").write_text(source + "\n# edited after the import\n")
    with pytest.raises(RuntimeError, match="changed on disk since it was imported"):
        TrainConfig(backbone="Deco-Net")


def test_an_entry_point_backbone_trains_with_ckd_through_the_cli(tmp_path, monkeypatch, capsys):
    models = write_distribution(tmp_path / "site", "ckdtest_ep", "EPNet")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    assert "EPNet" in entry_point_names()
    resolved = resolve_backbone("epnet")  # case-insensitive, like every backbone name
    assert (resolved.name, resolved.source, resolved.sha256) == ("EPNet", "ckdtest_ep.models:EPNet", sha256(models))

    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    out = tmp_path / "ep.json"
    assert main(["train", "--data", str(folder), "--backbone", "EPNet", "--method", "ckd", "--epochs", "1",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet", "--set", "batch_size=64",
                 "--set", 'method.teacher={"max_epochs": 1}', "--out", str(out)]) == 0
    assert capsys.readouterr().out.startswith("EPNet + ckd on tiny")
    result = json.loads(out.read_text())
    assert result["config"]["backbone_sha256"] == sha256(models)
    assert set(result["teachers"]) == {"image", "text"}  # CKD trained one teacher per modality


# -- the command line with a file, caching -------------------------------------------------------------

def test_the_cli_trains_a_file_backbone_with_ckd_and_caches_it_by_source_hash(tmp_path, capsys):
    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    path = write_model(tmp_path / "x", "CliNet")
    cache, out = tmp_path / "cache", tmp_path / "result.json"
    argv = ["train", "--data", str(folder), "--backbone", f"{path}:CliNet", "--method", "ckd", "--epochs", "1",
            "--cache-dir", str(cache), "--quiet", "--set", "batch_size=64",
            "--set", 'method.teacher={"max_epochs": 1}', "--out", str(out)]

    assert main(argv) == 0
    first = capsys.readouterr().out
    assert first.startswith("CliNet + ckd on tiny") and "[cached result]" not in first
    result = json.loads(out.read_text())
    assert result["config"]["backbone"] == "CliNet"
    assert result["config"]["backbone_sha256"] == sha256(path)
    assert result["config"]["backbone_source"] == f"{path.resolve()}:CliNet"
    # teachers live in the cache under the (path-safe) name, one per modality
    teachers = sorted(p.name.split("-")[:2] for p in (cache / "teachers").glob("*.pt"))
    assert teachers == [["clinet", "image"], ["clinet", "text"]]

    assert main(argv) == 0
    assert "[cached result]" in capsys.readouterr().out

    write_model(tmp_path / "x", "CliNet", comment="a comment changes the source hash")
    assert main(argv) == 0
    assert "[cached result]" not in capsys.readouterr().out  # editing the model invalidated its results
    assert json.loads(out.read_text())["config"]["backbone_sha256"] == sha256(path)
    assert len(list((cache / "results").glob("*.json"))) == 2


# -- other processes ------------------------------------------------------------------------------------

def test_spawned_grid_workers_resolve_a_file_backbone_themselves(tmp_path):
    path = write_model(tmp_path / "x", "GridNet")
    data = make_tiny_dataset(n_users=30, n_items=40)
    configs = [ex.make_config(f"{path}:GridNet", "none", seed=s, max_epochs=1, device="cpu", batch_size=64,
                              progress=False) for s in (0, 1)]
    frame = ex.grid(configs, data, tmp_path / "cache", progress=False, workers=2)
    assert list(frame["status"]) == ["ok", "ok"] and list(frame["backbone"]) == ["GridNet", "GridNet"]
    assert list(frame["key"]) == [ex.result_key(c, data) for c in configs]


def test_a_class_defined_in_a_notebook_fails_clearly_in_another_process():
    code = textwrap.dedent("""
        from ckdlab.config import TrainConfig
        TrainConfig.from_dict({"backbone": "NbNet", "backbone_source": "__main__:NbNet"})
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "was defined in __main__ of another process" in done.stderr
    assert "path/to/file.py:NbNet" in done.stderr and "executor='inline'" in done.stderr


def _run_cell(source: str, cell: str) -> dict:
    """Execute ``source`` in __main__ as IPython runs a notebook cell: its text known only to linecache."""
    linecache.cache[cell] = (len(source), None, source.splitlines(True), cell)
    namespace = {"__name__": "__main__"}
    exec(compile(source, cell, "exec"), namespace)
    return namespace


def test_a_class_defined_in_a_notebook_cell_is_keyed_by_its_source_text():
    first = ckdlab.register_backbone("CellNet")(_run_cell(model_source("CellNet"), "<cell-1>")["CellNet"])
    config = TrainConfig(backbone="CellNet")
    assert config.backbone_source == "__main__:CellNet" and len(config.backbone_sha256) == 64
    assert build_backbone("CellNet", make_tiny_dataset()).__class__ is first
    # the cell edited and run again: the same name, new code, a new key (and no warning: same origin)
    edited = model_source("CellNet").replace("embedding_dim=8", "embedding_dim=6")
    ckdlab.register_backbone("CellNet")(_run_cell(edited, "<cell-2>")["CellNet"])
    again = TrainConfig(backbone="CellNet")
    assert again.backbone_sha256 != config.backbone_sha256
    with pytest.raises(RuntimeError, match="changed since this configuration was made"):
        config.identity()


# -- tuning a plug-in ---------------------------------------------------------------------------------------

def test_ckdlab_tune_searches_a_file_backbone_with_ckd(tmp_path, capsys):
    folder = write_mmrec(make_tiny_dataset(n_users=30, n_items=40), tmp_path / "tiny")
    path = write_model(tmp_path / "x", "TuneNet")
    out = tmp_path / "search.json"
    assert main(["tune", "--data", str(folder), "--backbone", f"{path}:TuneNet", "--method", "ckd", "--trials", "2",
                 "--epochs-budget", "1", "--seeds", "0", "--set", "batch_size=64", "--pruner", "none",
                 "--cache-dir", str(tmp_path / "cache"), "--quiet", "--out", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert saved["spent"]["trials"] == 2 and saved["spent"]["complete"] == 2
    (final,) = saved["final"]  # the chosen settings, scored on the test split once (seed 0)
    assert final["seed"] == 0 and "recall@20" in final["test"]
    entry = json.loads((tmp_path / "cache" / "results" / f"{final['key']}.json").read_text())["payload"]
    assert entry["config"]["backbone"] == "TuneNet" and entry["config"]["backbone_sha256"] == sha256(path)
    assert entry["config"]["method"] == "ckd"
