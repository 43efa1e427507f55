# miStudio Export — every entry point. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup protos protos-check lint typecheck test test-fast demo serve bench bench-smoke check clean

setup: $(STAMP)

# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,ray]"
	rm -f $(VENV)/.installed-* && touch $@

protos: setup
	$(PY) scripts/gen_protos.py

# Regenerates the stubs and fails when they differ from the committed ones.
protos-check: protos
	git diff --exit-code -- protos/gen || (echo "generated stubs are stale: run 'make protos' and commit"; exit 1)
	test -z "$$(git status --porcelain -- protos/gen)" || (git status --porcelain -- protos/gen; echo "untracked generated stubs: run 'make protos' and commit"; exit 1)

lint: setup
	$(VENV)/bin/ruff check services tests scripts bench
	$(VENV)/bin/ruff format --check services tests scripts bench

typecheck: setup
	$(VENV)/bin/mypy services scripts

test: setup protos-check lint typecheck
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow"

check: test

demo: setup
	$(PY) -m mistudio_export.demo

serve: setup
	$(PY) -m mistudio_export.cli serve

bench: setup
	$(PY) bench/run.py

bench-smoke: setup
	$(PY) bench/run.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
