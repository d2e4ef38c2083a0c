# The two commands a new user runs (see README.md): `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
comma := ,

.PHONY: demo test lint bench figures clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Extras for `make demo`: `make demo EXTRAS=cuda` on an NVIDIA GPU (JAX's CUDA build,
# docs/backends.md). The demo's install always takes the export extra (tf2onnx, onnx, ONNX
# Runtime: about 115 MB beside TensorFlow's 1.9 GB, no other new dependency), so every command the
# README shows works after `make demo`, `export --format onnx` and `predict --engine onnx`
# included. The test extras hold it too.
EXTRAS ?=
EXTRAS_SPEC := [export$(if $(EXTRAS),$(comma)$(EXTRAS))]
STAMP := $(VENV)/.installed$(if $(EXTRAS),-$(EXTRAS))

# A stamp per install flavour, so `make demo` after `make test` does not reinstall.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.$(EXTRAS_SPEC)'
	touch $@

$(VENV)/.installed-test: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $@ $(VENV)/.installed

demo: $(STAMP)
	$(BIN)/nightact demo

# ruff, then the import contract in pyproject.toml ([tool.importlinter]): the pipeline's layers,
# no cycles, no deep-learning framework in the base (docs/layout.md).
lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks
	$(BIN)/lint-imports

# The default suite (slow tests excluded) on the default backend (JAX on a CPU, see
# docs/backends.md), then the model, cell and export tests under TensorFlow, the GPU default and
# the exporter. (Training under TensorFlow is in the default suite: tests/test_devices.py.)
TENSORFLOW_TESTS := tests/test_models.py tests/test_explain.py tests/test_export.py
test: lint
	$(BIN)/python -m pytest
	KERAS_BACKEND=tensorflow $(BIN)/python -m pytest $(TENSORFLOW_TESTS)

bench: $(VENV)/.installed-test
	$(BIN)/python benchmarks/prepare.py
	$(BIN)/python benchmarks/train.py

# Re-run everything the README's figures come from (over an hour on 2 cores, not yet timed end to end; see
# benchmarks/figures.py): each table printed with the machine it ran on, the JSON written to
# benchmarks/measured/ with the date. `make figures FIGURES_FLAGS=--quick` checks the chain in
# about 9 minutes; FIGURES_FLAGS=--gpu adds the GPU-shaped runs.
FIGURES_FLAGS ?=
figures: $(VENV)/.installed-test
	$(BIN)/python benchmarks/figures.py $(FIGURES_FLAGS)

clean:
	rm -rf $(VENV) nightact-demo .pytest_cache .ruff_cache
