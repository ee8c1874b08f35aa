# `make demo`, `make test` and `make docs` each create or refresh .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CPU benchmarks that BENCHMARKS.md records, in the order they run (benchmarks/README.md).
BENCHMARKS := bench_anneal bench_lbfgs_step bench_lm_step bench_costate bench_training \
	bench_adjoint bench_tpbvp bench_long_runs bench_uncertainty

.PHONY: install demo test docs lint bench bench-quick bench-gpu clean

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -c constraints.txt -e ".[test,dev,docs]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/deepest anneal configs/lorenz96_L12.yaml

# Notebooks run at smoke size (DEEPEST_SMOKE=1); tests run in float64 (tests/conftest.py),
# in two processes (the suite is bound by XLA compiles, one core each) that share a compilation
# cache, emptied first, so a program compiled by one module or process is not compiled again. The docs build first
# (`docs`, a few seconds), failing on any broken reference or warning.
test: $(STAMP) docs
	rm -rf $(CURDIR)/.cache/jax
	JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax DEEPEST_SMOKE=1 MPLBACKEND=Agg $(BIN)/python -m pytest -q -n 2 --dist worksteal tests --nbmake notebooks

# The site (mkdocs-material, mkdocstrings, notebooks rendered without executing them) in site/.
docs: $(STAMP)
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict -q

lint: $(STAMP)
	$(BIN)/ruff check deepest tests benchmarks
	$(BIN)/ruff format --check deepest tests benchmarks

# Every benchmark at full size, one after another, on one BLAS thread (long: see
# benchmarks/README.md); `bench-quick` runs each at smoke size, `bench-gpu` the GPU rows.
bench: $(STAMP)
	@for b in $(BENCHMARKS); do \
		echo "== benchmarks/$$b.py"; \
		OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/$$b.py || exit 1; \
	done

bench-quick: $(STAMP)
	@for b in $(BENCHMARKS) bench_gpu; do \
		echo "== benchmarks/$$b.py --quick"; \
		OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/$$b.py --quick || exit 1; \
	done

bench-gpu: $(STAMP)
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/bench_gpu.py

clean:
	rm -rf $(VENV) .pytest_cache site .cache
