# One entry point per task; .ci/run calls `make test`, the README's test command.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin

.PHONY: run test lint typecheck pytest clean

# The venv is rebuilt when pyproject.toml changes (the console script is the stamp).
$(BIN)/chatledger: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,fast]'
	touch $@

# Install and start the service on its embedded default (in-process Redis, offline model).
run: $(BIN)/chatledger
	$(BIN)/chatledger serve

# The whole suite: lint, types, then every test (a real redis-server is spawned by the fixtures).
test: lint typecheck pytest

lint: $(BIN)/chatledger
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(BIN)/chatledger
	$(BIN)/mypy

pytest: $(BIN)/chatledger
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
