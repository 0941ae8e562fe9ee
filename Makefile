# Kling Relay. `make run` starts everything on SQLite with the Kling simulator;
# `make test` runs the whole suite (again on MariaDB when DATABASE_URL=mysql://…).

PYTHON_BOOT ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=

.PHONY: install static run demo simulator test test-sqlite test-mariadb lint format migrate bench clean

install: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

migrate: install
	$(PY) manage.py migrate --noinput

static: install
	$(PY) manage.py collectstatic --noinput --verbosity 0

run: migrate static
	$(PY) manage.py rundemo

demo: migrate static
	$(PY) manage.py rundemo --drive

simulator: install
	$(PY) manage.py klingsim

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

test: lint test-sqlite
ifneq ($(filter mysql%,$(DATABASE_URL)),)
	$(MAKE) test-mariadb
endif

test-sqlite: install
	DATABASE_URL= $(PY) -m pytest $(PYTEST_ARGS)

test-mariadb: install
	$(PY) -m pytest $(PYTEST_ARGS)

# Benchmarks against the simulator under gunicorn, on SQLite and (when DATABASE_URL
# points at one) MariaDB; writes docs/performance.md.
bench: install
	$(PY) scripts/bench.py

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache staticfiles
