# Two commands from a fresh clone: `make demo` and `make test`.
# Each creates .venv when missing and installs the package into it.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# torch 2.13.0 CPU build (this repo's CI); for a GPU machine pick a CUDA build, e.g.
#   make TORCH_SPEC="torch==2.13.0" PIP_EXTRA="--index-url https://download.pytorch.org/whl/cu126" install
TORCH_SPEC ?= torch==2.13.0
PIP_EXTRA ?=
STAMP  := $(VENV)/.installed

.PHONY: install demo test lab report bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(PIP_EXTRA) "$(TORCH_SPEC)"
	$(BIN)/python -m pip install --quiet -e ".[test,notebooks]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $(STAMP)

install: $(STAMP)

# The main job on the built-in synthetic data: train VBPR and print its result table,
# then run the pilot-study notebook (Figure 1) into $(DEMO_OUT)/synthetic/pilot.html.
# Everything it writes goes to $(DEMO_OUT)/ (ignored by git), so a first run leaves the clone clean;
# the committed reports/ are rebuilt only by `make report`.
DEMO_OUT ?= demo-output
demo: $(STAMP)
	$(BIN)/ckdlab train --data synthetic --backbone VBPR --set lr=0.005 --out $(DEMO_OUT)/demo-result.json
	$(BIN)/ckdlab report --data synthetic --notebooks pilot --out $(DEMO_OUT)
	@echo "demo outputs (not tracked by git): $(DEMO_OUT)/demo-result.json, $(DEMO_OUT)/synthetic/pilot.html (open $(DEMO_OUT)/index.html)"

test: $(STAMP)
	$(BIN)/python -m pytest -q

REPORT_DATA ?= synthetic
report: $(STAMP)
	$(BIN)/ckdlab report --data $(REPORT_DATA)

bench: $(STAMP)
	$(BIN)/ckdlab bench --out benchmarks/latest.json

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/

clean:
	rm -rf $(VENV) .pytest_cache build *.egg-info $(DEMO_OUT)
