# Two commands do all set-up on a fresh machine:
#   make lab    create .venv, install, register the kernel, open the course in JupyterLab
#   make test   create .venv, install, run ruff, the unit tests, the browser test and the notebooks
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
TORCH   ?= torch==2.13.0
STAMP   := $(VENV)/.installed
# the second environment: timm (which needs torchvision) and Hugging Face transformers, for the tests and
# notebook 07 that read their models (built from configs: nothing is downloaded)
TIMM_VENV  := .venv-timm
TIMM_BIN   := $(TIMM_VENV)/bin
TIMM_STAMP := $(TIMM_VENV)/.installed
TIMM_PKGS  ?= torch==2.14.1 torchvision==0.29.1 timm==1.0.31 transformers==5.23.0
TIMM_TESTS := tests/test_inspect_timm.py tests/test_inspect_model_timm.py tests/test_context_timm.py \
              tests/test_widgets_depth_timm.py tests/test_reader_zoos.py tests/test_widgets_zoo.py
# jupyter refuses to run as root without --allow-root; kept apart from LAB_ARGS so that
# `make lab LAB_ARGS="--port 8890"` still works as root
ROOT_ARGS := $(if $(filter 0,$(shell id -u)),--allow-root,)
LAB_ARGS ?=

.PHONY: lab test course site site-quick install unit notebooks browser lint bench clean timm-env timm-test

$(STAMP): pyproject.toml
	test -d $(VENV) || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[dev]"
	$(BIN)/python -m ipykernel install --sys-prefix --name unifiedctx --display-name "unifiedctx (.venv)"
	touch $(STAMP)

install: $(STAMP)

$(TIMM_STAMP): pyproject.toml Makefile
	test -d $(TIMM_VENV) || $(PY) -m venv $(TIMM_VENV)
	$(TIMM_BIN)/pip install --quiet --upgrade pip
	$(TIMM_BIN)/pip install --quiet $(TIMM_PKGS)
	$(TIMM_BIN)/pip install --quiet -e ".[dev]"
	$(TIMM_BIN)/python -m ipykernel install --sys-prefix --name unifiedctx-timm --display-name "unifiedctx + timm (.venv-timm)"
	touch $(TIMM_STAMP)

timm-env: $(TIMM_STAMP)

# UNIFIEDCTX_REQUIRE_TIMM=1 turns "timm (or transformers, torchvision) is missing" from a skip into a failure,
# here and in notebook 07
timm-test: $(TIMM_STAMP)
	UNIFIEDCTX_REQUIRE_TIMM=1 $(TIMM_BIN)/pytest -q $(TIMM_TESTS)
	UNIFIEDCTX_REQUIRE_TIMM=1 $(TIMM_BIN)/pytest -q -m timm tests/test_context.py tests/test_recording_any_model.py
	UNIFIEDCTX_REQUIRE_TIMM=1 UNIFIEDCTX_PROFILE=quick $(TIMM_BIN)/pytest -q --nbval-lax \
		--nbval-kernel-name unifiedctx-timm notebooks/07_trained_networks.ipynb

lab: $(STAMP)
	$(BIN)/jupyter lab notebooks/ $(ROOT_ARGS) $(LAB_ARGS)

course: $(STAMP)
	$(BIN)/python -m unifiedctx.course --out build/course

site: $(STAMP)
	$(BIN)/python -m unifiedctx.site --out build/site

# CI's site: notebooks 01 (math) and 05 (the explorer on 04's runs, cached by the nbval pass before it)
# rendered by the real generator, then browsed in Chromium (tests/browser/test_site_browser.py)
SITE_QUICK := build/site-quick
site-quick: $(STAMP)
	$(BIN)/python -m unifiedctx.site --profile quick --out $(SITE_QUICK) 01 05
	UNIFIEDCTX_SITE=$(SITE_QUICK) $(BIN)/pytest -q -m browser tests/browser/test_site_browser.py

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
	$(MAKE) site-quick
	$(MAKE) timm-test

bench: $(STAMP)
	$(BIN)/python bench/mixers.py

clean:
	rm -rf $(VENV) $(TIMM_VENV) build
