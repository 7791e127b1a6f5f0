# Two entry points for a fresh machine: `make demo` and `make test`.
# GPU users: make test TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"
PYTHON ?= python3.11
TORCH ?= torch==2.13.0
VENV ?= .venv
PY := $(VENV)/bin/python
PIP_FLAGS ?= -q
export TORCH_EXTENSIONS_DIR ?= $(CURDIR)/.cache/torch_extensions
export HF_HOME ?= $(CURDIR)/.cache/huggingface
export DS_ACCELERATOR ?= cpu
export PYTHONUNBUFFERED = 1

.PHONY: install demo test lint format clean

# constraints.txt pins every package to the versions the tests pass with (reproducible installs);
# CONSTRAINTS= (empty) installs the newest versions requirements.txt allows instead.
CONSTRAINTS ?= -c constraints.txt

$(VENV)/.installed: pyproject.toml requirements.txt constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install $(PIP_FLAGS) --upgrade pip
	$(PY) -m pip install $(PIP_FLAGS) $(CONSTRAINTS) $(TORCH) -r requirements.txt
	$(PY) -m pip install $(PIP_FLAGS) --no-deps -e .
	$(PY) -m megatron_bliss.engine.versions
	touch $@

install: $(VENV)/.installed

DEMO_ARGS ?=

demo: install
	OMP_NUM_THREADS=$${OMP_NUM_THREADS:-2} $(VENV)/bin/megatron-bliss demo --output demo_out $(DEMO_ARGS)

test: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(PY) -m pytest -q tests

lint: install
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

clean:
	rm -rf $(VENV) .cache demo_out .pytest_cache .ruff_cache
