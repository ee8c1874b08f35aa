# `make demo`, `make test` and `make docs` each create or refresh .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

# The CPU benchmarks that BENCHMARKS.md records, in the order they run (benchmarks/README.md).
BENCHMARKS := bench_anneal bench_lbfgs_step bench_lane_step bench_lm_step bench_costate bench_training \
	bench_adjoint bench_tpbvp bench_long_runs bench_uncertainty bench_reliability bench_nakl

.PHONY: install demo test test-minimum docs lint bench bench-quick bench-gpu bench-dapper clean

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
# cache, emptied first, so a program compiled by one module or process is not compiled again.
# That pass compiles without LLVM's optimisations (JAX_DISABLE_MOST_OPTIMIZATIONS: a third
# less time, the same float semantics, XLA's own passes kept). The docs build first (`docs`,
# a few seconds), failing on any broken reference or warning. The tests marked `timing` (how
# soon a command answers: tests/test_faults.py) then run on their own, one at a time and
# fully optimised, as a second test process would load the machine they time; both passes
# always run, and either failing fails `make test`.
TEST_ENV := JAX_COMPILATION_CACHE_DIR=$(CURDIR)/.cache/jax JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 DEEPEST_SMOKE=1 MPLBACKEND=Agg

test: $(STAMP) docs
	rm -rf $(CURDIR)/.cache/jax
	status=0; \
	$(TEST_ENV) JAX_DISABLE_MOST_OPTIMIZATIONS=1 $(BIN)/python -m pytest -q -n 2 --dist worksteal \
		--durations=20 -m "not timing" tests --nbmake notebooks || status=1; \
	$(TEST_ENV) $(BIN)/python -m pytest -q -p no:xdist --durations=5 -m timing tests || status=1; \
	exit $$status

# The lowest versions that pyproject.toml allows, in a venv of their own (.venv-min): each
# dependency pinned `==` its floor by constraints-minimum.txt (checked against pyproject.toml
# first), then a fast subset of the tests on them (a few minutes): annealing (on four
# devices too, through `jax.shard_map`), the minimisers, assimilation, the continuous and
# costate paths (diffrax), the TPBVP solvers, Laplace and PAMC (blackjax), result files and
# experiment configs. Not run by CI (.ci/run), whose time `make test` fills.
MIN_VENV := .venv-min
MIN_STAMP := $(MIN_VENV)/.installed
MIN_TESTS := tests/test_anneal.py tests/test_minimisers.py tests/test_assimilation.py \
	tests/test_continuous.py tests/test_adjoint.py tests/test_tpbvp.py tests/test_uncertainty.py \
	tests/test_results.py tests/test_config.py
MIN_SELECT := sharded or save_and_load or plots or stop_reasons \
	or levenberg_marquardt_reaches or compact_lbfgs_directions_equal_optax_on_a_quadratic \
	or block_tridiagonal_solve_matches_dense or action_hand_computed \
	or gradient_finite_differences or costate_sweep_gives or adaptive_replay \
	or linear_problem_matches or nonlinear_matches_scipy or laplace_is_exact or pamc_matches \
	or anneal_result_round_trip or yaml_error or every_bad_key or defaults_are

$(MIN_STAMP): pyproject.toml constraints-minimum.txt
	@$(PYTHON) -c 'import re, tomllib; \
	norm = lambda v: re.sub(r"(\.0)+$$", "", v); \
	deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]; \
	floors = {re.match(r"[A-Za-z0-9_.-]+", d).group().lower(): re.search(r">=\s*([^,;\s]+)", d) for d in deps}; \
	pins = dict(l.split("#")[0].strip().lower().split("==") for l in open("constraints-minimum.txt") if "==" in l.split("#")[0]); \
	bad = [n for n, f in floors.items() if f is None or norm(pins.get(n, "")) != norm(f.group(1))]; \
	bad += [n for n in pins if n not in floors]; \
	bad and exit("constraints-minimum.txt must pin each dependency to its floor in pyproject.toml: " + ", ".join(sorted(bad)))'
	rm -rf $(MIN_VENV)
	$(PYTHON) -m venv $(MIN_VENV)
	$(MIN_VENV)/bin/python -m pip install -q --upgrade pip
	$(MIN_VENV)/bin/python -m pip install -q -c constraints-minimum.txt -e ".[test]"
	touch $(MIN_STAMP)

test-minimum: $(MIN_STAMP)
	DEEPEST_SMOKE=1 MPLBACKEND=Agg $(MIN_VENV)/bin/python -m pytest -q -n 2 --dist worksteal \
		$(MIN_TESTS) -k "$(MIN_SELECT)"

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

# The side-by-side with DAPPER (issue 24; benchmarks/README.md): DAPPER 1.8.1 needs Python
# >= 3.12, so it gets a venv of its own (.venv-dapper), where benchmarks/dapper_side.py runs
# DAPPER's iEnKS and EnKF and writes benchmarks/dapper_data/*.npz; bench_dapper.py then runs
# deepest on the same data in .venv. `python3.12`, or pyenv's 3.12.1 where that is a shim.
DAPPER_VENV := .venv-dapper
DAPPER_STAMP := $(DAPPER_VENV)/.installed

$(DAPPER_STAMP):
	@test -x $(DAPPER_VENV)/bin/python || { \
		if python3.12 -c '' 2>/dev/null; then py="python3.12"; \
		elif PYENV_VERSION=3.12.1 python3.12 -c '' 2>/dev/null; then py="env PYENV_VERSION=3.12.1 python3.12"; \
		else echo "bench-dapper: DAPPER 1.8.1 needs Python 3.12, but neither python3.12 nor" \
			"PYENV_VERSION=3.12.1 python3.12 runs; install Python 3.12" >&2; exit 1; fi; \
		echo "$$py -m venv $(DAPPER_VENV)"; $$py -m venv $(DAPPER_VENV); }
	$(DAPPER_VENV)/bin/python -m pip install -q --upgrade pip
	$(DAPPER_VENV)/bin/python -m pip install -q dapper==1.8.1
	touch $(DAPPER_STAMP)

bench-dapper: $(STAMP) $(DAPPER_STAMP)
	OPENBLAS_NUM_THREADS=1 $(DAPPER_VENV)/bin/python benchmarks/dapper_side.py
	OPENBLAS_NUM_THREADS=1 $(BIN)/python benchmarks/bench_dapper.py

clean:
	rm -rf $(VENV) $(MIN_VENV) $(DAPPER_VENV) .pytest_cache site .cache
