# One entry point per task; .ci/run calls `make test`, the README's test command.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP := $(BIN)/python -m pip install --quiet --disable-pip-version-check

.PHONY: run dev test lint typecheck pytest clean

# What running needs, and nothing else, so a first `make run` is quick. The venv is brought up to date
# when pyproject.toml changes (the console script is the stamp).
$(BIN)/chatledger: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) -e '.[fast]'
	touch $@

# The development tools on top: pytest, mypy, ruff, schemathesis, Playwright, the client generator.
$(VENV)/.dev: $(BIN)/chatledger
	$(PIP) -e '.[dev,fast]'
	touch $@

# Install and start the service on its embedded default (in-process Redis, offline model).
run: $(BIN)/chatledger
	$(BIN)/chatledger serve

# The development tools, without running anything (then `.venv/bin/pytest tests/...` for a part).
dev: $(VENV)/.dev

# The whole suite: lint, types, then every test (a real redis-server is spawned by the fixtures).
test: lint typecheck pytest

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
