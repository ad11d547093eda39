"""notebooks/custom_backbone.ipynb, and a backbone from a file through the notebooks (papermill ``-p backbone``).

The tutorial notebook is not in ``report.NOTEBOOKS`` (it makes no paper figure),
so these tests do for it what tests/test_notebooks.py does for the report's
notebooks; nbval checks its committed outputs.
"""
from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nbformat
import pytest
import torch

from conftest import make_tiny_dataset, write_mmrec
from plugin_sources import write_model

from ckdlab import experiments as ex, report
from ckdlab.config import TrainConfig

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
NOTEBOOK = NOTEBOOKS / "custom_backbone.ipynb"
REQUIRED = {"backbone", "dataset", "seeds", "max_epochs", "teacher_epochs", "device", "cache_dir", "figures_dir",
            "threads"}
CACHE_STATUS = re.compile(r"cached runs: (\d+)/(\d+)")


def tiny_params(cache_dir, folder) -> dict:
    return {"seeds": [0], "max_epochs": 2, "teacher_epochs": 1, "device": "cpu", "cache_dir": str(cache_dir),
            "threads": 1, "train_params": {"batch_size": 64}, "dataset": str(folder)}


def execute(notebook: Path, target: Path, params: dict):
    import papermill as pm

    declared = report.notebook_parameters(notebook)
    pm.execute_notebook(str(notebook), str(target), cwd=str(target.parent), progress_bar=False,
                        parameters={k: v for k, v in params.items() if k in declared})
    nb = nbformat.read(str(target), as_version=4)
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    return nb


def cell_text(cell) -> str:
    return "".join(o.get("text", "") or o.get("data", {}).get("text/plain", "") for o in cell.outputs)


def cache_status(nb) -> tuple[int, int]:
    (cell,) = [c for c in nb.cells if "cache-status" in c.metadata.get("tags", [])]
    cached, total = CACHE_STATUS.search(cell_text(cell)).groups()
    return int(cached), int(total)


def test_the_notebook_declares_the_parameters_of_every_notebook():
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK))
    assert REQUIRED <= set(params), REQUIRED - set(params)
    assert "custom_backbone" not in report.NOTEBOOKS  # a tutorial: the report's notebooks make the paper's figures


def test_the_committed_notebook_is_executed_and_its_checked_cells_hold_no_trained_numbers():
    nb = nbformat.read(str(NOTEBOOK), as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") is not None for c in code), "commit the notebook executed"
    assert not [o for c in code for o in c.outputs if o.output_type == "error"]
    assert sum("parameters" in c.metadata.get("tags", []) for c in code) == 1
    checked = [c for c in code if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert len(checked) >= 3 and all(c.outputs for c in checked)
    for cell in checked:  # names, statuses, shapes and counts only: the same on every CPU
        assert not re.search(r"\d\.\d", cell_text(cell)), cell.source
    report_text = cell_text(next(c for c in checked if "check_backbone(" in c.source))
    assert "0 failed" in report_text and "PASSED  ablation_removes_features" in report_text
    assert cache_status(nb)[1] > 0


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_mmrec(make_tiny_dataset(n_users=40, n_items=50), tmp_path_factory.mktemp("data") / "tiny")


def test_the_notebook_runs_a_file_backbone_and_a_second_run_reads_the_cache(tiny_folder, tmp_path):
    path = write_model(tmp_path / "models", "NotebookNet")
    params = {**tiny_params(tmp_path / "cache", tiny_folder), "backbone": f"{path}:NotebookNet"}
    nb = execute(NOTEBOOK, tmp_path / "first.ipynb", params)
    texts = [cell_text(c) for c in nb.cells if c.cell_type == "code"]
    assert any("NotebookNet: class NotebookNet, a plug-in keyed by name + source sha256" in t for t in texts)
    assert any(t.startswith("check_backbone(NotebookNet):") and "0 failed" in t for t in texts)
    cached, total = cache_status(nb)
    # none + ckd, then the pilot's runs: its multimodal one is the none run, trained again because the pilot
    # asks for the channels' validation curves (eval_by_modality), which Table 1's run does not record
    assert total == 5 and cached == 0
    cached, total = cache_status(execute(NOTEBOOK, tmp_path / "second.ipynb", params))
    assert cached == total == 5


def test_pilot_notebook_takes_a_file_backbone_and_keys_its_runs_by_name_and_source_hash(tiny_folder, tmp_path,
                                                                                         monkeypatch):
    """``papermill notebooks/pilot.ipynb out.ipynb -p backbone path/to/model.py:PilotNet``."""
    path = write_model(tmp_path / "models", "PilotNet")
    cache = tmp_path / "cache"
    params = {**tiny_params(cache, tiny_folder), "backbone": f"{path}:PilotNet", "max_epochs": 1}
    execute(NOTEBOOKS / "pilot.ipynb", tmp_path / "pilot.ipynb", params)

    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    dataset = ex.load_dataset(str(tiny_folder))
    monkeypatch.setattr(torch, "get_num_threads", lambda: params["threads"])  # the keys of the notebook's runs
    entries = sorted((cache / "results").glob("*.json"))
    assert len(entries) == 3  # the multimodal model and one uni-modal model per modality
    for entry in entries:
        config = json.loads(entry.read_text())["payload"]["config"]
        assert config["backbone"] == "PilotNet" and config["backbone_sha256"] == sha
        assert ex.result_key(TrainConfig.from_dict(config), dataset) == entry.stem
