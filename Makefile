# Entry points, each doing its own set-up on a fresh machine:
#   make demo       - create .venv if missing, install, run the main job
#   make test       - same set-up, then lint, type check, docs build and the whole test suite (CI)
#   make test-fast  - same set-up, then lint and every test that starts no process
#   make serve      - same set-up, then the latency server on the embedded digits model
#                     (one device, http://127.0.0.1:8000/; PORT=..., DEVICES=2 for a draft group)
#                     (pytest -m "not processes"; tiers: tests/README.md)
# Override the torch pin for another machine: make test TORCH="torch==X torchvision==Y"

PYTHON ?= python3
VENV ?= .venv
TORCH ?= torch==2.14.1 torchvision==0.29.1
PY := $(VENV)/bin/python
STAMP := $(VENV)/.driffusion-installed
OUT ?= outputs

.PHONY: install demo serve test test-fast lint typecheck docs pytest pytest-fast clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet $(TORCH)
	$(PY) -m pip install --quiet $(TORCH) -e ".[all,dev,docs]"
	touch $(STAMP)

install: $(STAMP)

# a free rendezvous port, picked when the demo starts: `fabric run` binds 29400 unless told
demo: $(STAMP)
	$(VENV)/bin/fabric run --accelerator cpu --devices 2 --strategy ddp \
	  --main-port $$($(PY) -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])") \
	  recipes/digits.py --out $(OUT)/digits

PORT ?= 8000
DEVICES ?= 1
serve: $(STAMP)
	if [ "$(DEVICES)" = 1 ]; then \
	  $(PY) recipes/serve.py --accelerator cpu --port $(PORT) --out $(OUT)/serve; \
	else \
	  $(VENV)/bin/fabric run --accelerator cpu --devices $(DEVICES) --strategy ddp \
	    --main-port $$($(PY) -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])") \
	    recipes/serve.py --port $(PORT) --out $(OUT)/serve; \
	fi

lint: $(STAMP)
	$(VENV)/bin/ruff check driffusion tests benchmarks recipes docs/hooks docs/examples
	$(VENV)/bin/ruff format --check driffusion tests benchmarks recipes docs/hooks docs/examples

typecheck: $(STAMP)
	$(VENV)/bin/mypy

docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet --site-dir site

pytest: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest

pytest-fast: $(STAMP)
	HF_HUB_OFFLINE=1 $(PY) -m pytest -m "not processes"

test: lint typecheck docs pytest

test-fast: lint pytest-fast

clean:
	rm -rf $(VENV) $(OUT) .pytest_cache .mypy_cache .ruff_cache
