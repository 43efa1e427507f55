# miStudio Export — every entry point. `make demo` runs the main job, `make test` the tests.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml | sha256sum | cut -c1-16)
BUF_STAMP := tools/buf/node_modules/.installed
FOLD_KERNELS := services/compute/mistudio_compute/dashboards/fold_kernels.py
KERNELS_STAMP := $(VENV)/.kernels-compiled
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: setup buf protos protos-check protos-lint lint typecheck test test-fast demo serve bench bench-smoke check clean

setup: $(STAMP) $(KERNELS_STAMP)

# torch first, pinned, so pip takes the local CPU build instead of a multi-GB CUDA one.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check "torch==2.13.0"
	$(PY) -m pip install -q --disable-pip-version-check -e ".[dev,ray]"
	rm -f $(VENV)/.installed-* && touch $@

# Compiles the pass's fold kernels into the cache beside their module: no export compiles them.
$(KERNELS_STAMP): $(STAMP) $(FOLD_KERNELS)
	PYTHONPATH=services/common:services/compute $(PY) -c "import mistudio_compute.dashboards.fold_kernels"
	touch $@

protos: setup
	$(PY) scripts/gen_protos.py

# Regenerates the stubs and fails when they differ from the committed ones.
protos-check: protos
	git diff --exit-code -- protos/gen || (echo "generated stubs are stale: run 'make protos' and commit"; exit 1)
	test -z "$$(git status --porcelain -- protos/gen)" || (git status --porcelain -- protos/gen; echo "untracked generated stubs: run 'make protos' and commit"; exit 1)

# buf (the proto linter) is the npm package pinned in tools/buf/package-lock.json.
buf: $(BUF_STAMP)

$(BUF_STAMP): tools/buf/package.json tools/buf/package-lock.json
	cd tools/buf && npm ci --no-audit --no-fund --loglevel=error
	touch $@

# buf lint with protos/buf.yaml (STANDARD + comment rules), imports resolved offline.
protos-lint: setup buf
	$(PY) scripts/lint_protos.py

lint: setup
	$(VENV)/bin/ruff check services tests scripts bench
	$(VENV)/bin/ruff format --check services tests scripts bench

typecheck: setup
	$(VENV)/bin/mypy services scripts

test: setup protos-check protos-lint lint typecheck
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -x -m "not slow"

check: test

demo: setup
	$(PY) -m mistudio_cli.demo

serve: setup
	$(PY) -m mistudio_cli serve

# Options pass through, e.g. make bench BENCH_ARGS="--ray 2" (see bench/run.py --help).
bench: setup
	$(PY) bench/run.py $(BENCH_ARGS)

bench-smoke: setup
	$(PY) bench/run.py --smoke

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache data
