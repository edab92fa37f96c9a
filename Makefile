# stepflows: durable step workflows for Django, run by Celery.
# `make demo` and `make test` work from a fresh clone: they create .venv and install.
# `make demo` installs what stepflows needs to run (`pip install -e .`); test, lint, bench
# and package install the dev tools too (`.[dev]`), so `make demo` then `make test`
# upgrades the same .venv.

PYTHON  ?= python3
VENV    ?= .venv
BIN     := $(VENV)/bin
RUNTIME := $(VENV)/.installed-runtime
DEV     := $(VENV)/.installed-dev
PORT    ?= 8000

.PHONY: install demo test test-sample test-matrix lint bench package clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

$(RUNTIME): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e .
	touch $@

# The dev tools come with the runtime dependencies: the runtime stamp is fresh too.
$(DEV): pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $@ $(RUNTIME)

## install: the venv with the dev tools (what test, lint, bench and package use)
install: $(DEV)

## demo: migrate the embedded default, start a worker and the dev server, send sample events
demo: $(RUNTIME)
	PORT=$(PORT) $(BIN)/python manage.py demo --port $(PORT)

## test: the whole suite (embedded default; PostgreSQL / Redis / RabbitMQ with
## STEPFLOWS_TEST_DATABASE_URL and STEPFLOWS_TEST_BROKER_URL)
test: $(DEV)
	$(BIN)/python manage.py check --fail-level WARNING
	$(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/python -m pytest $(PYTEST_ARGS)
	DATABASE_URL="$${DATABASE_URL:-$${STEPFLOWS_TEST_DATABASE_URL:-}}" \
	  CELERY_BROKER_URL="$${CELERY_BROKER_URL:-$${STEPFLOWS_TEST_BROKER_URL:-filesystem://}}" \
	  $(MAKE) test-sample

## test-sample: the sample project's tests (samples/shop, made with startproject): workflows
## in process and on a real worker (SQLite + files; DATABASE_URL / CELERY_BROKER_URL for others)
test-sample: $(DEV)
	cd samples/shop && $(abspath $(BIN))/python -m pytest $(PYTEST_ARGS)

## lint: ruff and mypy
## test-matrix: the fast suite on Django 5.2, 6.0 and 6.1 with Python 3.12 and 3.13, each in a
## fresh venv under .nox/ (noxfile.py); NOX_ARGS="-p 3.13" or NOX_ARGS="-- -x" to narrow it
test-matrix: $(DEV)
	$(BIN)/nox $(NOX_ARGS)

lint: $(DEV)
	$(BIN)/ruff check stepflows project bench tools tests samples noxfile.py
	$(BIN)/ruff format --check stepflows project bench tools tests samples noxfile.py
	$(BIN)/mypy stepflows project bench tools/check_wheel.py

## bench: stepflows vs raw Celery chords (embedded default; DATABASE_URL / CELERY_BROKER_URL
## for PostgreSQL / Redis / RabbitMQ). BENCH_ARGS=--quick for a smoke run.
bench: $(DEV)
	$(BIN)/python -m bench $(BENCH_ARGS)

## package: the sdist and wheel in dist/, checked by twine and by tools/check_wheel.py
## (the wheel holds the stepflows package and its metadata, nothing else)
package: $(DEV)
	rm -rf dist build
	$(BIN)/python -m build -q --outdir dist .
	$(BIN)/twine check --strict dist/*
	$(BIN)/python tools/check_wheel.py dist

clean:
	rm -rf var/test-runs var/bench dist build .nox .pytest_cache .mypy_cache .ruff_cache
