# `make demo` and `make test` set everything up from nothing: a .venv, the package, its plugins.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PLUGINS := $(wildcard plugins/*/pyproject.toml)
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install test demo demo-pix2pix bench clean

$(STAMP): pyproject.toml $(PLUGINS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]' $(foreach p,$(PLUGINS),-e $(dir $(p)))
	touch $(STAMP)

install: $(STAMP)

test: install
	$(BIN)/python -m pytest -q -n 2 $(PYTEST_ARGS) tests $(wildcard plugins/*/tests)

demo: install
	$(BIN)/img2img train pipelines/demo-cyclegan.yaml --out runs/demo-cyclegan --overwrite
	$(BIN)/img2img translate data/demo-shapes/testA --model runs/demo-cyclegan --out runs/demo-cyclegan/translated-testA --overwrite
	$(BIN)/img2img export runs/demo-cyclegan --out runs/demo-cyclegan/generator-a2b.onnx
	@echo "samples:    runs/demo-cyclegan/samples/"
	@echo "translated: runs/demo-cyclegan/translated-testA/"
	@echo "onnx:       runs/demo-cyclegan/generator-a2b.onnx"

demo-pix2pix: install
	$(BIN)/img2img train pipelines/demo-pix2pix.yaml --out runs/demo-pix2pix --overwrite
	$(BIN)/img2img translate data/demo-outlines/testA --model runs/demo-pix2pix --out runs/demo-pix2pix/translated-testA --overwrite

bench: install
	$(BIN)/python benchmarks/train_step.py --task cyclegan --vs-reference
	$(BIN)/python benchmarks/translate.py
	$(BIN)/python benchmarks/dataloader.py
	$(BIN)/python benchmarks/serve.py
	$(BIN)/python benchmarks/validation.py

clean:
	rm -rf $(VENV) runs .pytest_cache
