# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install FlexiRoaster, run every sample pipeline
#   make test   - create .venv, install with test extras, run the test suite
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: demo test install lint bench

$(BIN)/flexiroaster: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test,dev]'
	touch $@

install: $(BIN)/flexiroaster

demo: install
	$(BIN)/flexiroaster demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check flexiroaster tests bench

bench: install
	$(BIN)/python bench/engine_overhead.py
	$(BIN)/python bench/throughput.py
