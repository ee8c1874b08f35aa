# `make demo` and `make test` each create or refresh .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/deepest anneal configs/lorenz96_L12.yaml

# Notebooks run at smoke size (DEEPEST_SMOKE=1); tests run in float64 (tests/conftest.py),
# in two processes (the suite is bound by XLA compiles, one core each).
test: $(STAMP)
	DEEPEST_SMOKE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --dist worksteal tests --nbmake notebooks

lint: $(STAMP)
	$(BIN)/ruff check deepest tests benchmarks
	$(BIN)/ruff format --check deepest tests benchmarks

clean:
	rm -rf $(VENV) .pytest_cache
