# The two commands a new user needs: `make demo` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
REDIS_URL ?= redis://127.0.0.1:6379
export REDIS_URL

.PHONY: install demo test lint typecheck pytest bench wheel-check clean

$(BIN)/eventsched: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/eventsched

demo: install
	$(BIN)/eventsched demo

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

typecheck: install
	$(BIN)/mypy

# The whole suite on fakeredis and on the real Redis at REDIS_URL; starts a throwaway
# redis-server when nothing answers there (see scripts/with-redis).
pytest: install
	scripts/with-redis $(BIN)/pytest $(PYTEST_ARGS)

test: lint typecheck pytest

bench: install
	$(BIN)/python bench/run.py

# Build the wheel, install it in a fresh venv and run the demo from there.
wheel-check: install
	scripts/with-redis scripts/wheel-check

clean:
	rm -rf $(VENV) dist build .mypy_cache .ruff_cache .pytest_cache .hypothesis .import_linter_cache
