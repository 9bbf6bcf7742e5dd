# Sluice: two commands on a fresh machine, `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SLUICE := $(BIN)/sluice

.PHONY: run run-api run-distributed test lint format typecheck unit bench services clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(VENV)/.installed: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(VENV)/.installed $@

## The main job: API + engine + in-process sandbox with the demo campaign (embedded, SQLite).
run: $(VENV)/.installed
	$(SLUICE) up --demo

## The API alone on SQLite at http://127.0.0.1:8000.
run-api: $(VENV)/.installed
	$(SLUICE) api

## API + 4 Celery workers + beat + sandbox on local Redis and PostgreSQL (database "sluice").
## SLUICE_EXIT_WHEN_DONE=1 stops it once the demo is final (scripts/check-production-install.sh).
DIST_DB ?= sluice
DIST_REDIS ?= redis://127.0.0.1:6379/0
DIST_ENV := SLUICE_DATABASE_URL=postgresql://postgres@127.0.0.1:5432/$(DIST_DB) \
	SLUICE_BROKER_URL=$(DIST_REDIS) SLUICE_REDIS_URL=$(DIST_REDIS)
run-distributed: $(VENV)/.installed services
	@psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='$(DIST_DB)'" \
		| grep -q 1 || createdb -h 127.0.0.1 -U postgres $(DIST_DB)
	$(DIST_ENV) $(SLUICE) up --demo --workers 4

## Lint, import contracts, type checks and the whole suite (starts PostgreSQL/Redis/RabbitMQ if they are down).
test: $(VENV)/.installed-dev services
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache
	$(BIN)/mypy
	$(BIN)/pytest -q -p no:cacheprovider -n 2 --dist loadgroup --durations=30

unit: $(VENV)/.installed-dev
	$(BIN)/pytest -q tests/unit

lint: $(VENV)/.installed-dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports --no-cache

format: $(VENV)/.installed-dev
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

typecheck: $(VENV)/.installed-dev
	$(BIN)/mypy

services:
	@bash scripts/ensure-services.sh

## Benchmarks: JSON (and PNG plots) under bench/results/. `make bench BENCH="crash soak"` runs the named ones.
bench: $(VENV)/.installed-dev services
	$(BIN)/python -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache sluice.db sluice.db-wal sluice.db-shm
