# Two commands do all the set-up on a fresh machine:
#   make up     - create .venv, install FlexiRoaster, start the runtime and the app (samples loaded)
#   make test   - create .venv, install with test extras (and Chromium for the browser test,
#                 PostgreSQL 15 for the connector tests), run the test suite
# Also: make demo (run every sample pipeline in the terminal), make lint, make bench.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: up demo test install browser postgres lint bench

$(BIN)/flexiroaster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(BIN)/flexiroaster

up: install
	$(BIN)/flexiroaster up

demo: install
	$(BIN)/flexiroaster demo

# The browser test drives Debian's Chromium through Playwright (never `playwright install`).
browser:
	@test -x /usr/bin/chromium || { \
	  echo "installing Chromium for the browser test (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null; }

# The PostgreSQL connector's tests start a throwaway PostgreSQL 15 server from Debian's binaries.
PG_BIN ?= /usr/lib/postgresql/15/bin
postgres:
	@test -x $(PG_BIN)/postgres || { \
	  echo "installing PostgreSQL 15 for the connector tests (apt-get)"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && \
	  { DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql-15 >/dev/null || \
	    DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null; }; }
	@test -x $(PG_BIN)/postgres || { echo "no PostgreSQL 15 in $(PG_BIN) after installing" >&2; exit 1; }

test: install browser postgres
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check flexiroaster tests bench

bench: install
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/throughput.py
