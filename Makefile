# Two entry points for a new machine: `make run` and `make test`.
# Both bootstrap .venv on first use and reinstall only when setup.cfg changes.
# `make run` installs what the service needs; `make test` adds the test
# tools (schemathesis, selenium, flake8...) to the same .venv. Either may
# come first.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SERVICE := $(VENV)/.installed-service
STAMP  := $(VENV)/.installed-test

.PHONY: run test coverage test-postgres lint openapi bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(SERVICE): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[postgres]'
	touch $@

$(STAMP): setup.cfg pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test,postgres,mcp]'
	touch $@ $(SERVICE)

run: $(SERVICE)
	$(BIN)/instance-api

test: $(STAMP)
	$(BIN)/flake8
	$(BIN)/python -m pytest

# The suite with line and branch coverage: half as long again as `make test`
# on Python 3.11, whose tracer sees every line, so it is a target of its own.
coverage: $(STAMP)
	$(BIN)/python -m pytest --cov --cov-report=term-missing:skip-covered

# The whole suite again on PostgreSQL (a schema per test). Fails, rather than
# skips, when the server does not answer.
POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/postgres
test-postgres: $(STAMP)
	$(BIN)/python -c "import psycopg, sys; psycopg.connect(sys.argv[1], connect_timeout=5).close()" \
		'$(POSTGRES_URL)' || { echo "PostgreSQL does not answer at $(POSTGRES_URL)"; exit 1; }
	INSTANCES_TEST_DATABASE_URL='$(POSTGRES_URL)' $(BIN)/python -m pytest

lint: $(STAMP)
	$(BIN)/flake8

# The committed description of the API; a test fails when it is stale.
openapi: $(STAMP)
	$(BIN)/instance-api openapi openapi.json

# Seeds bench/data (git-ignored; the large size takes a minute the first
# time) and databases bench_* on the PostgreSQL of POSTGRES_URL (a few
# minutes the first time), runs the server and the ceilings under wrk,
# writes bench/RESULTS.md and bench/results.png (about an hour: bench/README.md).
# Needs wrk: installed with apt-get when missing.
bench: $(STAMP)
	command -v wrk >/dev/null || { [ "$$(id -u)" -eq 0 ] && apt-get update -qq && \
		apt-get install -y -qq wrk >/dev/null; } || { echo "install wrk (apt-get install wrk)"; exit 1; }
	$(BIN)/python -m pip install --quiet -e '.[test,bench]'
	$(BIN)/python bench/run.py --postgres-url '$(POSTGRES_URL)'

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache
