# Two commands from a fresh machine (Python 3.11, no GPU):
#   make quickstart   create .venv if missing, run the quick-start study, print its Pareto front
#   make test         create .venv if missing, run the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: venv system-deps quickstart test test-all lint bench bench-quick clean

venv: $(STAMP)

# torch is installed first and exactly (2.13.0, the CPU build): a looser requirement pulls a multi-GB CUDA build.
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade "pip>=23.2"
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -c constraints.txt -e ".[dev,openvino,hf]"
	touch $(STAMP)

quickstart: venv
	$(BIN)/autocompress search studies/quickstart.yaml

# Debian's chromium, for the dashboard's browser tests (skipped, saying why, where it is missing).
system-deps:
	command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)
	scripts/postgres-test-server.sh install  # Debian's postgresql, for the multi-worker tests

test: venv system-deps
	$(BIN)/python -m pytest -q -m "not slow"

test-all: venv system-deps
	$(BIN)/python -m pytest -q

# every benchmark behind benchmarks/RESULTS.md (hours on 2 cores); bench-quick: small modes, about 15 min
bench: venv system-deps
	$(BIN)/python benchmarks/run_all.py

bench-quick: venv system-deps
	$(BIN)/python benchmarks/run_all.py --quick

# ruff, and the import layers of pyproject.toml ([tool.importlinter]): each layer imports only those below it
lint: venv
	$(BIN)/ruff check autocompress tests benchmarks examples
	$(BIN)/lint-imports

clean:
	rm -rf $(VENV) studies/*/ .pytest_cache
