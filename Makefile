# The README's two commands: `make demo` and `make test`. Each creates the virtual environment
# (.venv) and installs medgen into it first, so they work on a fresh machine with Python 3.10+.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=
DEMO_ARGS ?=

.PHONY: demo test lint install clean

$(BIN)/medgen: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade --quiet pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(BIN)/medgen

install: $(BIN)/medgen

demo: install
	$(BIN)/medgen demo -o medgen-demo $(DEMO_ARGS)

test: lint
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

# The layered import contract ([tool.importlinter] in pyproject.toml). lint-imports reads the
# sources of an importable package, and pipelines/ installs as medgen.pipelines (package-dir), so
# it runs on a copy of the installed layout in build/import-graph.
IMPORT_GRAPH := build/import-graph
lint: install
	rm -rf $(IMPORT_GRAPH) && mkdir -p $(IMPORT_GRAPH)
	cp -r medgen $(IMPORT_GRAPH)/medgen && cp -r pipelines $(IMPORT_GRAPH)/medgen/pipelines
	cd $(IMPORT_GRAPH) && $(abspath $(BIN))/lint-imports --no-cache $(CURDIR)/pyproject.toml

clean:
	rm -rf $(VENV) medgen-demo .pytest_cache $(IMPORT_GRAPH)
