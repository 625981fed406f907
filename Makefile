# Two commands do all set-up:  `make demo`  and  `make test`.
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
export CVF_DATA ?= $(CURDIR)/data
export PREFECT_HOME ?= $(CURDIR)/.prefect
export PREFECT_SERVER_ANALYTICS_ENABLED := false
export DO_NOT_TRACK := 1

.PHONY: setup system-deps labelstudio test demo clean-demo

# System tools the pipeline shells out to: Ghostscript (EPS figures), poppler (the official
# approach, used only by the benchmark and `rebuild --official-renderer`); Chromium for the
# browser tests (Playwright drives the system browser: its own download cannot work offline).
system-deps:
	@command -v gs >/dev/null && command -v pdftoppm >/dev/null && command -v chromium >/dev/null || \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ghostscript poppler-utils chromium >/dev/null)

$(BIN)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	touch $@

setup: system-deps $(BIN)/.installed

# The Label Studio server in its own venv (.venv-labelstudio): it cannot share ours with Prefect.
labelstudio:
	bash scripts/setup_labelstudio.sh

test: setup labelstudio
	$(BIN)/python -m pytest -q --durations=15 tests

demo: setup labelstudio
	bash scripts/demo.sh
