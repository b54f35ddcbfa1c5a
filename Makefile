# Two commands do all set-up on a fresh machine:
#   make lab    create .venv, install, register the kernel, open the course in JupyterLab
#   make test   create .venv, install, run ruff, the unit tests, the browser test and the notebooks
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# jupyter refuses to run as root without --allow-root
LAB_ARGS ?= $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab test course install unit notebooks browser lint bench clean

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name unifiedctx --display-name "unifiedctx (.venv)"
	touch $(STAMP)

install: $(STAMP)

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(LAB_ARGS)

course: $(STAMP)
	$(BIN)/python -m unifiedctx.course --out build/course

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
