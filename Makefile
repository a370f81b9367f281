# Set-up and everyday commands. `make train` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.detkit-installed
# Exact versions that install from local disk here; setup.cfg declares the supported ranges.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

TRAIN_CONFIG ?= configs/shapes_faster_rcnn_tiny.yaml
TRAIN_ARGS ?=

.PHONY: install train test test-all lint browser docs

install: $(STAMP)

$(STAMP): setup.cfg pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	# the distribution was named detkit before 0.2.0 (now detkit-rcnn): one distribution owns the package
	$(PY) -m pip uninstall --quiet --yes detkit 2>/dev/null || true
	$(PY) -m pip install --quiet --disable-pip-version-check $(TORCH_PINS)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[all,dev,docs]' $(TORCH_PINS)
	touch $(STAMP)

# Train the default detector on the synthetic shapes data (generated on first use), then
# evaluate it: the COCO table, checkpoint, metrics.json and PNGs land under runs/.
train: install
	$(VENV)/bin/detkit fit --config $(TRAIN_CONFIG) $(TRAIN_ARGS)

# Every package, with one small fit -> validate -> predict -> evaluate: a few minutes.
test: install
	$(PY) -m pytest -q -m "not slow"

# Everything, the slow tests too (torchvision parity at 800x1216, export parity, wheels in fresh venvs): CI.
test-all: install
	$(PY) -m pytest -q

lint: install
	$(VENV)/bin/ruff check detkit tests scripts benchmarks
	$(VENV)/bin/ruff format --check detkit tests scripts benchmarks

# Headless Chromium (Debian's package) for the tests that open detkit's HTML pages (detkit analyze);
# without it those tests skip.
browser:
	command -v chromium >/dev/null || { $(if $(filter 0,$(shell id -u)),,sudo) apt-get update -qq && \
		$(if $(filter 0,$(shell id -u)),,sudo) apt-get install -y -qq --no-install-recommends chromium; }

# The documentation site (MkDocs + Material; API reference from the docstrings) into site/. --strict: a
# broken link, a missing reference or an undocumented public name (docs/hooks.py) fails the build.
docs: install
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --site-dir site
