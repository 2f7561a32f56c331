# One entry point per task; .ci/run calls `make test`, the README's test command.
VENV ?= .venv
PYTHON ?= python3
BIN := $(VENV)/bin
PIP_FLAGS := --quiet --disable-pip-version-check --no-compile
# The venv gets no pip of its own when the interpreter's pip can install into it (`pip --python`, pip
# 22.3+): ensurepip is about a third of a first `make run`. Bytecode is compiled as modules are imported.
OUTER_PIP := $(shell $(PYTHON) -m pip --python $(PYTHON) --version >/dev/null 2>&1 && echo yes)
ifeq ($(OUTER_PIP),yes)
VENV_FLAGS := --without-pip
PIP := $(PYTHON) -m pip --python $(BIN)/python install $(PIP_FLAGS)
else
VENV_FLAGS :=
PIP := $(BIN)/python -m pip install $(PIP_FLAGS)
endif

.PHONY: run dev test test-fast lint typecheck pytest clean

# What running needs, and nothing else, so a first `make run` is quick. The venv is brought up to date
# when pyproject.toml changes (the console script is the stamp).
$(BIN)/chatledger: pyproject.toml
	$(PYTHON) -m venv $(VENV_FLAGS) $(VENV)
	$(PIP) -e '.[fast]'
	touch $@

# The development tools on top: pytest, mypy, ruff, schemathesis, Playwright, the client generator.
# The tests start many `chatledger serve` processes: with the bytecode compiled once here, none of them
# compiles its imports again (where PYTHONDONTWRITEBYTECODE is set, each one otherwise would).
$(VENV)/.dev: $(BIN)/chatledger
	$(PIP) -e '.[dev,fast]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib >/dev/null
	touch $@

# Install and start the service on its embedded default (in-process Redis, offline model).
run: $(BIN)/chatledger
	$(BIN)/chatledger serve

# The development tools, without running anything (then `.venv/bin/pytest tests/...` for a part).
dev: $(VENV)/.dev

# The whole suite: lint, types, then every test (a real redis-server is spawned by the fixtures).
test: lint typecheck pytest

# The quick loop, under a minute: the unit tests and every test on the fakeredis and redis-server
# backends, but no browser, cluster or HAProxy, nothing that takes seconds by design (`slow`: real
# processes, real timeouts, long property runs), nor the raw-HTTP corpus over every route (`corpus`);
# `make test` runs them all. The directories that hold only those are not even collected, and
# schemathesis's plugin (for the slow fuzzing test) is not loaded.
FAST_MARKS := not cluster and not haproxy and not browser and not slow and not corpus
FAST_DIRS := tests/unit tests/http tests/integration tests/providers tests/docs

test-fast: $(VENV)/.dev
	$(BIN)/pytest -p no:schemathesis -m "$(FAST_MARKS)" $(FAST_DIRS)

lint: $(VENV)/.dev
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(VENV)/.dev
	$(BIN)/mypy

pytest: $(VENV)/.dev
	$(BIN)/pytest

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache .hypothesis
