# The README's two commands: `make demo` and `make test`. Each creates the virtual environment
# (.venv) and installs medgen into it first, so they work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test install clean

$(BIN)/medgen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/medgen

install: $(BIN)/medgen

demo: install
	$(BIN)/medgen demo -o medgen-demo $(DEMO_ARGS)

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) medgen-demo .pytest_cache
