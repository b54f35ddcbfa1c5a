# Two commands do all set-up on a fresh machine:
#   make lab    create .venv, install, register the kernel, open the course in JupyterLab
#   make test   create .venv, install, run ruff, the unit tests, the browser test and the notebooks
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# jupyter refuses to run as root without --allow-root; kept apart from LAB_ARGS so that
# `make lab LAB_ARGS="--port 8890"` still works as root
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=

.PHONY: lab test course site install unit notebooks browser lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name unifiedctx --display-name "unifiedctx (.venv)"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(ROOT_ARGS) $(LAB_ARGS)

course: $(STAMP)
	$(BIN)/python -m unifiedctx.course --out build/course

site: $(STAMP)
	$(BIN)/python -m unifiedctx.site --out build/site

lint: $(STAMP)
	$(BIN)/ruff check .

unit: $(STAMP)
	$(BIN)/pytest -q tests $(PYTEST_ARGS)

notebooks: $(STAMP)
	UNIFIEDCTX_PROFILE=quick $(BIN)/pytest -q --nbval-lax notebooks/

browser: $(STAMP)
	bash tests/browser/setup.sh
	$(BIN)/pytest -q -m browser tests/browser

test: $(STAMP)
	bash tests/browser/setup.sh
	$(BIN)/ruff check .
	$(BIN)/pytest -q tests
	UNIFIEDCTX_PROFILE=quick $(BIN)/pytest -q --nbval-lax notebooks/

bench: $(STAMP)
	$(BIN)/python bench/mixers.py

clean:
	rm -rf $(VENV) build
