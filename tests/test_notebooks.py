"""The notebooks: parameters, committed outputs, and execution through papermill and ``ckdlab.report``.

The end-to-end tests run every notebook on a tiny dataset folder (MMRec layout)
with a temporary cache, twice: the second run must read every result from the
cache, which each notebook reports in its ``cache-status`` cell
("cached runs: k/n"). (The committed notebooks' checked outputs are validated
separately by nbval, see ``notebooks/nbval_sanitize.cfg``.)
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import nbformat
import pytest

from conftest import make_tiny_dataset, write_mmrec

from ckdlab import report

NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
REQUIRED = {"backbone", "dataset", "seeds", "max_epochs", "device", "cache_dir", "figures_dir", "threads"}
CACHE_STATUS = re.compile(r"cached runs: (\d+)/(\d+)")


def tiny_params(cache_dir) -> dict:
    return {"seeds": [0], "max_epochs": 2, "teacher_epochs": 1, "device": "cpu", "cache_dir": str(cache_dir),
            "threads": 1, "train_params": {"batch_size": 64}}




def cache_status(nb) -> tuple[int, int]:
    """``(cached, total)`` from the output of the notebook's cell tagged ``cache-status``."""
    for cell in nb.cells:
        if "cache-status" in cell.get("metadata", {}).get("tags", []):
            text = "".join(o.get("text", "") for o in cell.get("outputs", []) if o.get("output_type") == "stream")
            match = CACHE_STATUS.search(text)
            assert match, f"no cache status in {text!r}"
            return int(match.group(1)), int(match.group(2))
    raise AssertionError("no cell tagged cache-status")


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_notebook_declares_the_parameters(name):
    import papermill as pm

    params = pm.inspect_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"))
    assert REQUIRED <= set(params), REQUIRED - set(params)
    if name != "pilot":
        assert "teacher_epochs" in params
    if name in ("main_table", "unimodal_table", "ablation"):
        assert "backbones" in params


@pytest.mark.parametrize("name", report.NOTEBOOKS)
def test_committed_notebook_carries_outputs_and_checked_cells(name):
    nb = nbformat.read(str(NOTEBOOK_DIR / f"{name}.ipynb"), as_version=4)
    code_cells = [c for c in nb.cells if c.cell_type == "code"]
    assert all(c.get("execution_count") is not None for c in code_cells), "commit the notebook executed"
    assert not [o for c in code_cells for o in c.outputs if o.output_type == "error"]
    checked = [c for c in code_cells if c.source.startswith("# NBVAL_CHECK_OUTPUT")]
    assert checked and all(c.outputs for c in checked)
    assert sum("parameters" in c.metadata.get("tags", []) for c in code_cells) == 1
    cache_status(nb)  # present and printed


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    return write_mmrec(make_tiny_dataset(n_users=40, n_items=50), tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="module")
def first_report(tiny_folder, tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    cache = root / "cache"
    out = root / "reports"
    manifests = report.report([str(tiny_folder)], out=out, overrides=tiny_params(cache), log=lambda msg: None)
    return {"out": out, "cache": cache, "manifests": manifests}


def test_report_executes_every_notebook_and_renders_html(first_report, tiny_folder):
    out = first_report["out"]
    (manifest,) = first_report["manifests"]
    failed = [(r["notebook"], r["error"]) for r in manifest["notebooks"] if not r["ok"]]
    assert not failed
    folder = out / "tiny"
    for name in report.NOTEBOOKS:
        assert (folder / f"{name}.ipynb").is_file() and (folder / f"{name}.html").is_file()
        assert "<html" in (folder / f"{name}.html").read_text()[:2000].lower()
    for stem in ("pilot-VBPR", "dynamics-VBPR"):
        assert (folder / f"{stem}.png").is_file() and (folder / f"{stem}.svg").is_file()
    stored = json.loads((folder / "report.json").read_text())
    assert stored["dataset"] == "tiny" and "dataset" not in stored["parameters"]
    assert stored["parameters"]["max_epochs"] == 2
    # no folder of this machine in anything committed: the data and cache paths stay out
    machine_paths = (str(tiny_folder.resolve()), str(first_report["cache"].resolve()), str(out.resolve()))
    for path in [folder / "report.json", out / "index.html", *folder.glob("*.ipynb"), *folder.glob("*.html")]:
        text = path.read_text()
        assert not [p for p in machine_paths if p in text], f"{path.name} names a machine path"
        assert "/ipykernel_" not in text, f"{path.name} names a kernel's temporary cell file"
    from ckdlab.provenance import NUMBERS_VERSION

    assert all(r["code"]["numbers_version"] == NUMBERS_VERSION for r in stored["notebooks"])
    index = (out / "index.html").read_text()
    assert all(f'href="tiny/{name}.html"' in index for name in report.NOTEBOOKS)
    assert f"numbers v{NUMBERS_VERSION}" in index  # each notebook's code version is on the index
    status = {name: cache_status(nbformat.read(str(folder / f"{name}.ipynb"), as_version=4))
              for name in report.NOTEBOOKS}
    # the report executes pilot and dynamics first (report.EXECUTION_ORDER): their runs record the
    # channels' validation curves, so they serve the later notebooks, which do not ask for them
    assert status["pilot"] == (0, 3)  # the first notebook ran on an empty cache
    assert status["dynamics"] == (0, 1)
    # quickstart's two runs are the pilot's multimodal model and the dynamics' CKD run: nothing trained again
    assert status["quickstart"] == (2, 2)
    # Table 2 is Table 1's runs, Table 3's full-CKD row is Table 1's CKD run
    assert status["unimodal_table"] == (4, 4)
    assert status["ablation"] == (1, 5)


@pytest.mark.parametrize("names", [("quickstart", "pilot")])
def test_second_run_reads_every_result_from_the_cache(first_report, tiny_folder, tmp_path, names):
    import papermill as pm

    params = {**tiny_params(first_report["cache"]), "dataset": str(tiny_folder)}
    for name in names:
        target = tmp_path / f"{name}.ipynb"
        declared = report.notebook_parameters(NOTEBOOK_DIR / f"{name}.ipynb")
        pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(target), cwd=str(tmp_path),
                            parameters={k: v for k, v in params.items() if k in declared}, progress_bar=False)
        cached, total = cache_status(nbformat.read(str(target), as_version=4))
        assert total > 0 and cached == total, f"{name}: {cached}/{total} runs read from the cache"


def test_parameters_layering(tmp_path):
    params = report.parameters_for("/x/tiktok", params_file={"all": {"max_epochs": 7},
                                                             "tiktok": {"notebooks": {"pilot": {"seeds": [4]}}}},
                                   overrides={"device": "cpu"})
    assert params["max_epochs"] == 7 and params["device"] == "cpu" and params["dataset"] == "/x/tiktok"
    assert params["backbones"] == report.ALL_BACKBONES  # from the preset
    assert params["notebooks"]["pilot"] == {"backbones": ["VBPR", "EgoGCN", "MGCN"], "seeds": [4]}  # merged
    assert params["notebooks"]["ablation"]["backbones"] == ["VBPR", "MMGCN", "EgoGCN"]
    # a later shared value overrides an earlier per-notebook one
    later = report.parameters_for("/x/tiktok", overrides={"backbones": ["VBPR"]})
    assert "backbones" not in later["notebooks"].get("ablation", {})
    assert report.parameters_for("synthetic", preset=False) == {"dataset": "synthetic"}
    assert report.parse_setting("seeds=[0, 1]") == ("seeds", [0, 1])
    assert report.parse_setting("device=cuda") == ("device", "cuda")


def test_rerunning_some_notebooks_keeps_the_others_in_the_index(first_report, tiny_folder):
    out = first_report["out"]
    report.report([str(tiny_folder)], notebooks=["unimodal_table"], out=out,
                  overrides=tiny_params(first_report["cache"]), log=lambda msg: None)
    stored = json.loads((out / "tiny" / "report.json").read_text())
    assert [r["notebook"] for r in stored["notebooks"]] == list(report.NOTEBOOKS)
    assert all(r.get("generated") for r in stored["notebooks"])
    index = (out / "index.html").read_text()
    assert all(f'href="tiny/{name}.html"' in index for name in report.NOTEBOOKS)
    assert index.count("<summary>parameters</summary>") == len(report.NOTEBOOKS)


@pytest.fixture(scope="module")
def per_backbone_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("per-backbone-cache")


@pytest.mark.parametrize("name", report.NOTEBOOKS)
@pytest.mark.parametrize("backbone", ["DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN"])
def test_every_notebook_runs_with_every_backbone(name, backbone, tiny_folder, per_backbone_cache, tmp_path):
    """`papermill notebooks/X.ipynb out.ipynb -p backbone NAME` (VBPR runs in the report tests above)."""
    import papermill as pm

    params = {**tiny_params(per_backbone_cache), "max_epochs": 1, "dataset": str(tiny_folder),
              "backbone": backbone}
    declared = report.notebook_parameters(NOTEBOOK_DIR / f"{name}.ipynb")
    target = tmp_path / f"{name}.ipynb"
    pm.execute_notebook(str(NOTEBOOK_DIR / f"{name}.ipynb"), str(target), cwd=str(tmp_path),
                        parameters={k: v for k, v in params.items() if k in declared}, progress_bar=False)
    nb = nbformat.read(str(target), as_version=4)
    assert not [o for c in nb.cells if c.cell_type == "code" for o in c.outputs if o.output_type == "error"]
    cached, total = cache_status(nb)
    assert total >= 1


def test_executed_notebook_loses_its_machine_paths(tmp_path):
    nb = nbformat.v4.new_notebook()
    nb.metadata["papermill"] = {"input_path": "/home/me/ckdlab/notebooks/pilot.ipynb",
                                "output_path": "/home/me/ckdlab/reports/tiktok/pilot.ipynb"}
    cell = nbformat.v4.new_code_cell("x = 1")
    cell.outputs = [nbformat.v4.new_output("stream", name="stderr",
                                           text="/tmp/ipykernel_4711/123456.py:2: DataWarning: 5 users excluded\n"
                                                "/root/.pyenv/lib/python3.11/concurrent/futures/process.py:261: "
                                                "DataWarning\n")]
    nb.cells.append(cell)
    path = tmp_path / "pilot.ipynb"
    nbformat.write(nb, str(path))
    report._relative_papermill_paths(path, "pilot")
    text = path.read_text()
    assert "/home/me" not in text and "/tmp/ipykernel" not in text and "/root/" not in text
    assert "123456.py:2: DataWarning" in text and '"input_path": "notebooks/pilot.ipynb"' in text
