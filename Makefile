# stepflows: durable step workflows for Django, run by Celery.
# `make demo` and `make test` work from a fresh clone: they create .venv and install.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
PORT   ?= 8000

.PHONY: install demo test test-sample lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

## demo: migrate the embedded default, start a worker and the dev server, send sample events
demo: $(STAMP)
	PORT=$(PORT) $(BIN)/python manage.py demo --port $(PORT)

## test: the whole suite (embedded default; PostgreSQL / Redis / RabbitMQ with
## STEPFLOWS_TEST_DATABASE_URL and STEPFLOWS_TEST_BROKER_URL)
test: $(STAMP)
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	DATABASE_URL="$${DATABASE_URL:-$${STEPFLOWS_TEST_DATABASE_URL:-}}" \
	  CELERY_BROKER_URL="$${CELERY_BROKER_URL:-$${STEPFLOWS_TEST_BROKER_URL:-filesystem://}}" \
	  $(MAKE) test-sample

## test-sample: the sample project's tests (samples/shop, made with startproject): workflows
## in process and on a real worker (SQLite + files; DATABASE_URL / CELERY_BROKER_URL for others)
test-sample: $(STAMP)
	cd samples/shop && $(abspath $(BIN))/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy
lint: $(STAMP)
	$(BIN)/ruff check stepflows project tests samples
	$(BIN)/ruff format --check stepflows project tests samples
	$(BIN)/mypy stepflows project

## bench: stepflows vs raw Celery chords (embedded default; DATABASE_URL / CELERY_BROKER_URL
## for PostgreSQL / Redis / RabbitMQ). BENCH_ARGS=--quick for a smoke run.
bench: $(STAMP)
	$(BIN)/python manage.py stepflows bench $(BENCH_ARGS)

clean:
	rm -rf var/test-runs var/bench .pytest_cache .mypy_cache .ruff_cache
