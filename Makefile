# Two entry points: `make demo` and `make test`. Both create .venv on first use.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test lint bench clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

# torch is pinned explicitly: the CPU build of 2.13.0 lies on these machines' disk, while an
# unpinned torch would pull a multi-GB CUDA build.
$(STAMP): pyproject.toml | $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	touch $@

$(TEST_STAMP): pyproject.toml $(STAMP)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

demo: $(STAMP)
	$(BIN)/netgeom demo --out runs/demo

test: $(TEST_STAMP)
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist worksteal --nbmake --doctest-modules notebooks tests netgeom

lint: $(TEST_STAMP)
	$(BIN)/ruff check netgeom tests benchmarks experiments

bench: $(TEST_STAMP)
	for f in benchmarks/bench_*.py; do $(BIN)/python $$f --quick || exit 1; done

clean:
	rm -rf $(VENV) runs .pytest_cache
