"""``ckdlab report``: execute every notebook per dataset and render it to HTML.

For each dataset, each notebook in ``notebooks/`` is executed with papermill
into ``<out>/<dataset>/<notebook>.ipynb`` (working directory: that folder, so
figures are written next to it as PNG and SVG), then rendered to
``<notebook>.html`` with nbconvert. ``<out>/<dataset>/report.json`` records the
parameters, the timing and the outcome of every notebook, and
``<out>/index.html`` links every report found under ``<out>``.

Every run behind a report is recorded in ``<out>/<dataset>/runs/`` (compact,
gzip-compressed, no weights: :mod:`ckdlab.records`), so the report travels with
its evidence: ``ckdlab report --from-records`` rebuilds it from those records on
any machine without training, and a report continued on another machine never
retrains a recorded run.

Parameters reach the notebooks' ``parameters`` cells in this order (later wins):
the notebook's own defaults, the preset for the dataset (:data:`PRESETS`, keyed
by the dataset's folder name; ``--no-preset`` skips it), a JSON file
(``--params-file``: ``{"all": {...}, "<dataset>": {...}}``), then ``-p NAME=VALUE``.
A parameter set may carry ``"notebooks": {"<notebook>": {...}}`` for values that
apply to one notebook only. Only the parameters a notebook declares are passed to it.

Examples::

    ckdlab report                                   # synthetic, notebook defaults
    ckdlab report --data ../shared/data/tiktok ../shared/data/baby
    ckdlab report --data synthetic -p max_epochs=5 -p 'seeds=[0]' --notebooks pilot dynamics
    ckdlab report --data ../shared/data/tiktok --from-records   # no training: the committed runs
"""
from __future__ import annotations

import argparse
import contextlib
import datetime as _dt
import html
import json
import os
import re
import sys
import time
from pathlib import Path

from . import records
from .config import parse_setting as parse_config_setting
from .result import atomic_write_text

#: Notebooks in reading order.
NOTEBOOKS = ("quickstart", "pilot", "main_table", "unimodal_table", "ablation", "dynamics")
#: The order a report executes them in: the notebooks whose runs record per-modality validation
#: curves (pilot, dynamics) first, so that Tables 1-3 read those runs instead of training them again
#: (a run without the curves cannot stand in for one that needs them; the reverse holds).
EXECUTION_ORDER = ("pilot", "dynamics", "quickstart", "main_table", "unimodal_table", "ablation")
TITLES = {
    "quickstart": "Quick start: one backbone with and without CKD",
    "pilot": "Pilot study (Figure 1): under-optimised modalities",
    "main_table": "Table 1: overall performance, CKD vs GB and OGM",
    "unimodal_table": "Table 2: per-modality performance",
    "ablation": "Table 3: CKD ablation",
    "dynamics": "CKD training dynamics: rho and lambda",
}
NOTEBOOK_DIR = Path(__file__).resolve().parents[1] / "notebooks"
#: Sub-folder of ``<out>/<dataset>/`` holding the report's run records (:mod:`ckdlab.records`).
RUNS_FOLDER = "runs"

ALL_BACKBONES = ["VBPR", "DeepStyle", "MMGCN", "GRCN", "EgoGCN", "MGCN"]

#: Per-dataset parameter sets (keyed by the dataset's folder name); notebook defaults fill the rest.
#: The real-data sets follow the paper's protocol: early stopping with patience 10 on validation
#: Recall@20 ends every run (the epoch cap of 200 is a guard; a run that reaches it is marked in
#: Table 1), the shipped tuned settings where they match the data, else the package defaults.
#: Seeds: TikTok 5, Baby 3 (the order of work when time is short: TikTok first, Baby seeds cut first).
_REAL_DATA = {
    "backbones": ALL_BACKBONES,
    "seeds": [0, 1, 2],
    "max_epochs": 200,
    "teacher_epochs": 200,
    "device": "auto",
    "threads": 1,
    "tuned": True,
    "train_params": {},  # TrainConfig defaults
    "notebooks": {
        "ablation": {"backbones": ["VBPR", "MMGCN", "EgoGCN"]},  # the paper's Table 3
        "pilot": {"backbones": ["VBPR", "EgoGCN", "MGCN"]},      # the paper's Figure 1 pair and one more
    },
}
PRESETS: dict[str, dict] = {
    "synthetic": {},
    "tiktok": {**_REAL_DATA, "seeds": [0, 1, 2, 3, 4]},
    "baby": dict(_REAL_DATA),
}


def dataset_label(spec: str) -> str:
    """``"synthetic"`` or the dataset folder's name (``../shared/data/tiktok`` -> ``"tiktok"``)."""
    return "synthetic" if spec == "synthetic" else Path(spec).expanduser().resolve().name


def _absolute(spec):
    """Folders and cache paths become absolute: the notebooks run inside the report folder."""
    if spec is None or spec == "synthetic":
        return spec
    return str(Path(spec).expanduser().resolve())


def parse_setting(item: str) -> tuple[str, object]:
    """``"name=value"`` with the value parsed as JSON when possible (``seeds=[0,1]``, ``device=cpu``)."""
    return parse_config_setting(item, flag="-p")


def parameters_for(dataset: str, *, preset: bool = True, params_file: dict | None = None,
                   overrides: dict | None = None) -> dict:
    """The parameters of one dataset's report (before filtering per notebook)."""
    label = dataset_label(dataset)
    params: dict = {}
    per_notebook: dict = {}
    layers = ([PRESETS.get(label, {})] if preset else []) + (
        [params_file.get("all", {}), params_file.get(label, {})] if params_file else []) + [overrides or {}]
    for layer in layers:
        shared = {k: v for k, v in layer.items() if k != "notebooks"}
        for values in per_notebook.values():  # a later shared value wins over an earlier per-notebook one
            for k in shared:
                values.pop(k, None)
        params.update(shared)
        for nb, values in (layer.get("notebooks") or {}).items():
            per_notebook.setdefault(nb, {}).update(values)
    if per_notebook:
        params["notebooks"] = per_notebook
    params["dataset"] = _absolute(dataset)
    if params.get("cache_dir") is not None:
        params["cache_dir"] = _absolute(params["cache_dir"])
    return params


def notebook_parameters(path: Path) -> dict:
    """The parameters a notebook declares (name -> default as written), via papermill."""
    import papermill as pm

    return {name: info.get("default") for name, info in pm.inspect_notebook(str(path)).items()}


def code_version() -> dict:
    """The code a report notebook ran: numbers-version and git commit (its runs' own provenance says more)."""
    from .provenance import NUMBERS_VERSION, git_commit

    return {"numbers_version": NUMBERS_VERSION, "git_commit": git_commit()}


def code_label(code: dict | None) -> str:
    """``numbers v2, 63865cc`` for the index; older records carry no code version."""
    if not code:
        return "numbers v1 (before provenance was recorded)"
    commit = code.get("git_commit") or "no git checkout"
    short = commit[:7] + ("-dirty" if commit.endswith("-dirty") else "") if code.get("git_commit") else commit
    return f"numbers v{code.get('numbers_version')}, {short}"


def _portable(parameters: dict, out_dir: Path) -> dict:
    """Parameters without machine paths: the dataset folder relative to ``out_dir``, no cache folder.

    The notebook runs in ``out_dir``, so a relative dataset path resolves the same; the
    cache folder reaches it through ``$CKDLAB_CACHE`` instead (see :func:`_run_environment`),
    so neither the committed notebook nor its HTML names a folder of this machine.
    """
    out = {k: v for k, v in parameters.items() if k != "cache_dir"}
    dataset = out.get("dataset")
    if dataset and dataset != "synthetic" and Path(dataset).is_absolute():
        out["dataset"] = os.path.relpath(dataset, out_dir)
    return out


@contextlib.contextmanager
def _environment(values: dict):
    """Environment variables set (a value) or unset (None) while a notebook kernel starts and runs."""
    old = {name: os.environ.get(name) for name in values}
    try:
        _set_environment(values)
        yield
    finally:
        _set_environment(old)


def _set_environment(values: dict) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = str(value)


def _run_environment(cache_dir, runs_dir, from_records: bool) -> dict:
    """``$CKDLAB_CACHE`` (absolute, when given), the records folder and whether runs come from it only."""
    values = {records.RECORDS_ENV: None if runs_dir is None else str(Path(runs_dir).resolve()),
              records.ONLY_ENV: "1" if from_records else None}
    if cache_dir is not None:
        values["CKDLAB_CACHE"] = str(Path(cache_dir).expanduser().resolve())
    return values


def execute_notebook(name: str, out_dir: Path, parameters: dict, *, notebook_dir: Path = NOTEBOOK_DIR,
                     kernel_name: str | None = None, timeout: int | None = None, runs_dir: Path | None = None,
                     from_records: bool = False) -> dict:
    """Run one notebook with papermill into ``out_dir``; returns a record of what ran.

    Only the parameters the notebook declares are passed; ``figures_dir`` is
    ``"."``: the notebook runs in ``out_dir`` and saves its figures there (a
    relative path keeps machine-specific paths out of the committed reports). The executed
    notebook is written even when a cell fails (papermill marks the failing cell).
    ``runs_dir``: the run records folder of its runs (:mod:`ckdlab.records`); ``from_records``:
    its runs come from there only (nothing trains).
    """
    import papermill as pm

    cache_dir = parameters.get("cache_dir")
    source = Path(notebook_dir) / f"{name}.ipynb"
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    target = out_dir / f"{name}.ipynb"
    declared = notebook_parameters(source)
    parameters = _portable(parameters, out_dir)
    params = {k: v for k, v in {**parameters, "figures_dir": "."}.items() if k in declared}
    ignored = sorted(k for k in parameters if k not in declared and k != "figures_dir")
    record = {"notebook": name, "parameters": params, "ignored_parameters": ignored, "ok": True, "error": None,
              "code": code_version()}
    start = time.perf_counter()
    try:
        with _environment(_run_environment(cache_dir, runs_dir, from_records)):
            pm.execute_notebook(str(source), str(target), parameters=params, cwd=str(out_dir), kernel_name=kernel_name,
                                progress_bar=False, log_output=False, execution_timeout=timeout)
    except Exception as exc:  # noqa: BLE001 -- recorded, the report goes on with the next notebook
        record["ok"] = False
        record["error"] = f"{type(exc).__name__}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else ''}"
    record["seconds"] = round(time.perf_counter() - start, 1)
    record["ipynb"] = target.name
    if target.exists():
        _relative_papermill_paths(target, name)
    return record


#: An absolute path to a Python file in a warning (a kernel's cell file ``/tmp/ipykernel_123/456.py``,
#: the interpreter's ``/root/.pyenv/.../process.py``): only the file name is kept.
_PYTHON_FILE_PATH = re.compile(r"(?:/[^\s/:'\"]+)+/([^\s/:'\"]+\.py)")


def _relative_papermill_paths(ipynb: Path, name: str) -> None:
    """No machine paths in an executed notebook: papermill's input/output paths, kernel cell files."""
    import nbformat

    nb = nbformat.read(str(ipynb), as_version=4)
    meta = nb.metadata.get("papermill")
    if meta is not None:
        meta["input_path"] = f"notebooks/{name}.ipynb"
        meta["output_path"] = ipynb.name
    for cell in nb.cells:
        for output in cell.get("outputs", []):
            if output.get("output_type") == "stream":
                output["text"] = _PYTHON_FILE_PATH.sub(r"\1", output["text"])
    nbformat.write(nb, str(ipynb))


def as_terminal_shows(text: str) -> str:
    """Stream text as a terminal leaves it: each carriage return overwrites its line.

    Progress bars redraw themselves with ``\\r``; a stored notebook keeps every
    redraw, which HTML would show as one line each. Only the final state is kept.
    """
    lines = [line.rsplit("\r", 1)[-1] for line in text.split("\n")]
    return "\n".join(line for i, line in enumerate(lines) if line or i == len(lines) - 1)


def merged_streams(outputs: list) -> list:
    """Consecutive stdout (or stderr) outputs joined into one, as a terminal would show it."""
    merged = []
    for output in outputs:
        if output.get("output_type") != "stream":
            merged.append(output)
            continue
        last = merged[-1] if merged else None
        if last is not None and last.get("output_type") == "stream" and last.get("name") == output.get("name"):
            last["text"] = last["text"] + output["text"]
        else:
            merged.append(dict(output))
    for output in merged:
        if output.get("output_type") == "stream":
            output["text"] = as_terminal_shows(output["text"])
    return merged


def render_html(ipynb: Path) -> Path:
    """``<name>.ipynb`` -> ``<name>.html`` next to it (nbconvert's lab template, inputs shown)."""
    import nbformat
    from nbconvert import HTMLExporter

    ipynb = Path(ipynb)
    nb = nbformat.read(str(ipynb), as_version=4)
    for cell in nb.cells:
        if "outputs" in cell:
            cell["outputs"] = merged_streams(cell["outputs"])
    body, _ = HTMLExporter().from_notebook_node(nb)
    target = ipynb.with_suffix(".html")
    _write_public(target, body)
    return target


def _write_public(path: Path, text: str) -> None:
    """Atomic write, readable by everyone (reports are meant to be served or shared)."""
    atomic_write_text(path, text)
    Path(path).chmod(0o644)


def _figures(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.suffix in (".png", ".svg"))


def _summary_cell(entry: dict | None, link: str) -> str:
    """One cell of the summary page: CKD's improvement with its interval, coloured by what the interval says."""
    if entry is None or entry.get("improv_pct") is None:
        return "<td>–</td>"
    low, high = entry.get("ci_low_pct"), entry.get("ci_high_pct")
    if low is None or high is None:
        colour, interval = "#eeeeee", f"n={entry.get('n_pairs', 1)}: no interval"
    else:
        colour = "#c8e6c9" if low > 0 else "#ffcdd2" if high < 0 else "#eeeeee"
        interval = f"[{low:+.1f}%, {high:+.1f}%]"
    holm = entry.get("p_holm")
    p_text = "" if holm is None else f"<br><small>p (Holm) {holm:.3g}</small>"
    cap = " †" if entry.get("capped") else ""
    return (f'<td style="background:{colour}"><a href="{html.escape(link)}">{entry["improv_pct"]:+.1f}%{cap}</a>'
            f"<br><small>{interval}</small>{p_text}</td>")


def _summary_table(folders: list[Path]) -> str:
    """Backbones x datasets: CKD's relative improvement of test Recall@20 per report (its Table 1)."""
    summaries = {}
    for folder in folders:
        path = folder / "table1_summary.json"
        if path.is_file():
            summaries[folder.name] = json.loads(path.read_text())
    if not summaries:
        return ""
    backbones = list(dict.fromkeys(b for s in summaries.values() for b in s.get("backbones", {})))
    head = "".join(f"<th>{html.escape(name)}</th>" for name in summaries)
    rows = []
    for b in backbones:
        cells = "".join(_summary_cell(s.get("backbones", {}).get(b), f"{name}/main_table.html")
                        for name, s in summaries.items())
        rows.append(f"<tr><th>{html.escape(b)}</th>{cells}</tr>")
    provenance = "".join(f"<li>{html.escape(name)}: {html.escape(s.get('provenance', ''))}</li>"
                         for name, s in summaries.items())
    return ("<h2>CKD's improvement over each backbone</h2>\n"
            "<p>Relative improvement of the mean test Recall@20 over seeds (CKD vs the plain backbone, "
            "Table 1 of each report), its 95% interval (paired t-interval over seeds) and the paired test's "
            "p-value Holm-corrected across the backbones of the dataset. Green: the (unadjusted) interval lies "
            "above zero; red: below; grey: it contains zero or there is one seed; the Holm p-value says whether "
            "the change survives the correction for the number of backbones. † some run ended at its epoch cap. "
            "Each cell links to its Table 1.</p>\n"
            f"<table><tr><th>backbone</th>{head}</tr>\n" + "\n".join(rows) + "</table>\n"
            f"<ul>{provenance}</ul>\n")


def _cost_line(manifest: dict) -> str:
    seconds = sum(float(rec.get("seconds") or 0) for rec in manifest.get("notebooks", []))
    recorded = manifest.get("records") or {}
    numbers = "/".join(sorted({f"v{n.get('numbers_version')}" for n in recorded.get("numbers", [])})) or "?"
    parts = [f"notebooks' wall time {seconds / 3600:.2f} h"]
    if recorded:
        hours = {k: float(recorded.get(f"{k}_seconds") or 0) / 3600 for k in ("train", "eval", "teacher")}
        unknown = recorded.get("teachers_without_cost") or 0
        teachers = f", CKD teachers {hours['teacher']:.2f} h" + (
            f" ({unknown} more teacher(s) stored before teachers kept their cost)" if unknown else "")
        parts.append(f"{recorded.get('records', 0)} run records ({recorded.get('bytes', 0) / 2**20:.1f} MiB, "
                     f"numbers {numbers}; CPU time as recorded: training epochs {hours['train']:.2f} h, "
                     f"evaluations {hours['eval']:.2f} h{teachers})")
    if recorded.get("stale"):
        parts.append(f"{recorded['stale']} stale record(s) of another numbers-version, unused")
    if manifest.get("from_records"):
        parts.append("rebuilt from the records (nothing trained)")
    return "; ".join(parts)


def build_index(root: str | Path = "reports") -> Path:
    """Write ``<root>/index.html``: CKD's improvement per backbone and dataset (from each report's
    ``table1_summary.json``), then every ``<root>/<dataset>/report.json`` found, with its cost."""
    root = Path(root)
    sections, folders = [], []
    for manifest_path in sorted(root.glob("*/report.json")):
        manifest = json.loads(manifest_path.read_text())
        folder = manifest_path.parent
        folders.append(folder)
        rows = []
        for rec in manifest.get("notebooks", []):
            name = rec["notebook"]
            html_name = f"{name}.html"
            link = (f'<a href="{folder.name}/{html_name}">{html.escape(TITLES.get(name, name))}</a>'
                    if (folder / html_name).exists() else html.escape(TITLES.get(name, name)))
            status = "ok" if rec.get("ok") else f"failed: {html.escape(rec.get('error') or '')}"
            shown = {k: v for k, v in rec.get("parameters", {}).items() if k not in ("dataset", "figures_dir")}
            params = html.escape(json.dumps(shown, indent=1, default=str))
            rows.append(f"<tr><td>{link}</td><td><a href=\"{folder.name}/{name}.ipynb\">ipynb</a></td>"
                        f"<td>{html.escape(code_label(rec.get('code')))}</td>"
                        f"<td>{rec.get('seconds', '')} s</td><td>{status}</td>"
                        f"<td>{html.escape(str(rec.get('generated') or manifest.get('generated', '')))}</td>"
                        f"<td><details><summary>parameters</summary><pre>{params}</pre></details></td></tr>")
        figures = " ".join(f'<a href="{folder.name}/{f}">{html.escape(f)}</a>' for f in _figures(folder))
        sections.append(
            f"<h2>{html.escape(folder.name)}</h2>\n"
            f"<p>dataset: <code>{html.escape(str(manifest.get('dataset')))}</code>; "
            f"cost: {html.escape(_cost_line(manifest))}</p>\n"
            f"<table><tr><th>notebook</th><th></th><th>code</th><th>time</th><th>status</th><th>generated</th>"
            f"<th>run sizes</th></tr>\n" + "\n".join(rows)
            + "</table>\n"
            + (f"<p>figures: {figures}</p>\n" if figures else ""))
    body = _summary_table(folders) + ("\n".join(sections) or "<p>No reports yet: run <code>ckdlab report</code>.</p>")
    page = ("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>ckdlab reports</title>\n"
            "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto;padding:0 1em}"
            "td,th{padding:.2em .8em;text-align:left}pre{background:#f6f6f6;padding:.5em}</style></head>\n"
            "<body>\n<h1>ckdlab reports</h1>\n"
            "<p>Counterfactual Knowledge Distillation (ACM MM 2024) reproduced with <code>ckdlab</code>: each "
            "notebook executed per dataset. Numbers are what these runs measured.</p>\n"
            f"{body}\n</body></html>\n")
    target = root / "index.html"
    _write_public(target, page)
    return target


def _recorded_parameters(folder: Path) -> dict[str, dict]:
    """Per notebook, the parameters ``folder``'s report was executed with (its ``report.json``)."""
    path = folder / "report.json"
    try:
        manifest = json.loads(path.read_text()) if path.exists() else {}
    except (OSError, json.JSONDecodeError):
        return {}
    # not the dataset: it was written relative to that report's folder, and --data names it now
    return {rec["notebook"]: {k: v for k, v in rec.get("parameters", {}).items() if k not in ("figures_dir", "dataset")}
            for rec in manifest.get("notebooks", []) if "notebook" in rec}


def _earlier_records(folder: Path, exclude) -> list[dict]:
    """Records of notebooks an earlier report run wrote to ``folder`` and this run does not redo.

    Running a subset of the notebooks (``--notebooks ablation``) keeps the others in the
    index; each record carries its own parameters, so mixed sizes stay visible.
    """
    path = folder / "report.json"
    if not path.exists():
        return []
    try:
        old = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return []
    for rec in old.get("notebooks", []):
        rec.setdefault("generated", old.get("generated"))
    return [rec for rec in old.get("notebooks", [])
            if rec.get("notebook") not in exclude and (folder / rec.get("ipynb", "")).is_file()]


def _write_manifest(folder: Path, manifest: dict, earlier: list[dict]) -> None:
    order = {name: i for i, name in enumerate(NOTEBOOKS)}
    records = sorted(earlier + manifest["notebooks"], key=lambda r: order.get(r.get("notebook"), len(order)))
    _write_public(folder / "report.json", json.dumps({**manifest, "notebooks": records}, indent=1, default=str))


def report(datasets=("synthetic",), notebooks=NOTEBOOKS, out: str | Path = "reports", *, preset: bool = True,
           params_file: dict | None = None, overrides: dict | None = None, kernel_name: str | None = None,
           html_output: bool = True, timeout: int | None = None, notebook_dir: Path = NOTEBOOK_DIR,
           stop_on_error: bool = False, log=None, keep_records: bool = True,
           from_records: bool = False) -> list[dict]:
    """Execute ``notebooks`` for every dataset into ``out/<dataset>/``; returns one manifest per dataset.

    ``keep_records``: every run of the report is recorded in ``out/<dataset>/runs/``
    (:mod:`ckdlab.records`); a run recorded there is never trained again.
    ``from_records``: the runs come from those records only; nothing trains and a
    missing record fails its notebook (rebuilding a committed report on any machine).
    """
    log = log or (lambda msg: print(msg, flush=True))
    out = Path(out)
    unknown = [n for n in notebooks if not (Path(notebook_dir) / f"{n}.ipynb").exists()]
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; available: {list(NOTEBOOKS)}")
    manifests = []
    for dataset in datasets:
        label = dataset_label(dataset)
        folder = out / label
        params = parameters_for(dataset, preset=preset, params_file=params_file, overrides=overrides)
        shown = {k: v for k, v in params.items() if k not in ("dataset", "cache_dir")}
        manifest = {"dataset": label, "parameters": shown,
                    "generated": _dt.datetime.now().isoformat(timespec="seconds"), "notebooks": []}
        earlier = _earlier_records(folder, exclude=notebooks)
        runs_dir = folder / RUNS_FOLDER if keep_records or from_records else None
        if from_records and not (runs_dir.is_dir() and any(runs_dir.iterdir())):
            raise FileNotFoundError(f"--from-records: no run records in {label}/{RUNS_FOLDER}/ under {out}")
        manifest["from_records"] = bool(from_records)
        recorded = _recorded_parameters(folder) if from_records else {}
        for name in sorted(notebooks, key=lambda n: EXECUTION_ORDER.index(n) if n in EXECUTION_ORDER
                           else len(EXECUTION_ORDER)):
            log(f"[{label}] {name} ...")
            nb_params = {k: v for k, v in params.items() if k != "notebooks"}
            nb_params.update((params.get("notebooks") or {}).get(name, {}))
            if from_records:  # the parameters the report was made with, then -p (a --params-file is not read)
                nb_params = {**nb_params, **recorded.get(name, {}), **(overrides or {})}
            rec = execute_notebook(name, folder, nb_params, notebook_dir=notebook_dir, kernel_name=kernel_name,
                                   timeout=timeout, runs_dir=runs_dir, from_records=from_records)
            if html_output and (folder / rec["ipynb"]).exists():
                rec["html"] = render_html(folder / rec["ipynb"]).name
            rec["generated"] = _dt.datetime.now().isoformat(timespec="seconds")
            manifest["notebooks"].append(rec)
            if runs_dir is not None:
                manifest["records"] = records.summary(runs_dir)
            log(f"[{label}] {name}: {'ok' if rec['ok'] else rec['error']} ({rec['seconds']} s)")
            _write_manifest(folder, manifest, earlier)
            if not rec["ok"] and stop_on_error:
                build_index(out)
                manifests.append(manifest)
                return manifests
        manifests.append(manifest)
        build_index(out)
    return manifests


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The ``report`` options (shared by ``ckdlab report`` and ``python -m ckdlab.report``)."""
    parser.add_argument("--data", nargs="+", default=["synthetic"], metavar="DATASET",
                        help="datasets: 'synthetic' and/or dataset folders (default: synthetic)")
    parser.add_argument("--notebooks", nargs="+", default=list(NOTEBOOKS), metavar="NAME",
                        help=f"notebooks to run (default: all: {' '.join(NOTEBOOKS)})")
    parser.add_argument("--out", default="reports", help="output root (default: reports)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                        help="notebook parameter for every dataset, JSON-parsed: -p max_epochs=50 -p 'seeds=[0,1,2]'")
    parser.add_argument("--params-file", default=None,
                        help='JSON file {"all": {...}, "<dataset name>": {...}} of notebook parameters')
    parser.add_argument("--no-preset", action="store_true",
                        help="ignore the built-in per-dataset parameter sets (ckdlab.report.PRESETS)")
    parser.add_argument("--cache-dir", default=None, help="result/teacher cache passed to every notebook")
    parser.add_argument("--device", default=None, help="device parameter for every notebook (cpu, cuda, auto)")
    parser.add_argument("--kernel", default=None, help="Jupyter kernel name (default: the notebook's)")
    parser.add_argument("--timeout", type=int, default=None, help="per-cell timeout in seconds")
    parser.add_argument("--no-html", action="store_true", help="skip the HTML rendering")
    parser.add_argument("--stop-on-error", action="store_true", help="stop at the first failing notebook")
    parser.add_argument("--from-records", action="store_true",
                        help=f"rebuild from the run records in <out>/<dataset>/{RUNS_FOLDER}/ only: nothing trains, "
                             "the cache is not read, a run without a record fails its notebook")
    parser.add_argument("--no-records", action="store_true",
                        help=f"do not record the runs in <out>/<dataset>/{RUNS_FOLDER}/")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ckdlab report", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return add_arguments(parser)


def cmd_report(args: argparse.Namespace) -> int:
    """Run a report from parsed arguments; exit status 1 when any notebook failed."""
    overrides = dict(parse_setting(p) for p in args.param)
    if args.cache_dir is not None:
        overrides["cache_dir"] = args.cache_dir
    if args.device is not None:
        overrides["device"] = args.device
    params_file = json.loads(Path(args.params_file).read_text()) if args.params_file else None
    manifests = report(args.data, args.notebooks, args.out, preset=not args.no_preset, params_file=params_file,
                       overrides=overrides, kernel_name=args.kernel, html_output=not args.no_html,
                       timeout=args.timeout, stop_on_error=args.stop_on_error, keep_records=not args.no_records,
                       from_records=args.from_records)
    failed = [(m["dataset"], r["notebook"]) for m in manifests for r in m["notebooks"] if not r["ok"]]
    print(f"index: {Path(args.out) / 'index.html'}")
    if failed:
        print(f"failed: {failed}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m ckdlab.report [options]`` (same options as ``ckdlab report``)."""
    return cmd_report(build_parser().parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
