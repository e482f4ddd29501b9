# Two commands on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
HOST   ?= 127.0.0.1
PORT   ?= 8000
PYTEST_ARGS ?=

.PHONY: run test lint migrate bench soak clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/python -m pip install -q -r requirements-dev.txt
	touch $@ $(VENV)/.runtime-installed

## Serve on the embedded SQLite default (migrates ./workflow.db first).
run: $(VENV)/.runtime-installed
	$(BIN)/python -m workflow serve --host $(HOST) --port $(PORT)

## Run the whole test suite (PostgreSQL tests skip when no server is reachable).
test: $(VENV)/.dev-installed
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(VENV)/.dev-installed
	$(BIN)/ruff check .

migrate: $(VENV)/.runtime-installed
	$(BIN)/python -m workflow migrate up

## The benchmark (needs wrk: apt-get install -y wrk); see docs/benchmarks.md.
bench: $(VENV)/.runtime-installed
	$(BIN)/python bench/run.py --quick --databases sqlite,postgresql --peer ../shared/peers/fastapi_ref

## Ten minutes of mixed load at 70 % of capacity per database (CI runs 30 s); see docs/reliability.md.
soak: $(VENV)/.dev-installed
	WORKFLOW_SOAK_SECONDS=600 WORKFLOW_SOAK_RESULTS=soak-results.ndjson $(BIN)/python -m pytest tests/test_soak.py -s -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
