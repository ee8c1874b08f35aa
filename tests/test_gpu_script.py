"""`benchmarks/gpu.sh`, the unattended GPU benchmark (issue 25): its dry run on the CPU
writes one line per row, skips rows with a note, and builds the problems as
`deepest.experiments` does without needing pydantic (absent on the device)."""

import importlib.util
import os
import subprocess
import sys

import equinox as eqx
import pytest

import deepest.experiments

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "benchmarks", "bench_gpu.py")


def bench_gpu():
    spec = importlib.util.spec_from_file_location("bench_gpu", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def table_rows(path):
    """The body rows of the Markdown table in `path`, as lists of cells."""
    with open(path, encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.startswith("| ")]
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in lines]
    assert cells[0][0] == "row" and set(cells[1]) == {"---"}, lines[:2]
    return cells[2:]


def expected_rows():
    return [(r.name, r.dtype) for r in bench_gpu().plan()]


def test_dry_run_writes_every_row(tmp_path):
    env = {**os.environ, "OUT": str(tmp_path), "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", os.path.join(ROOT, "benchmarks", "gpu.sh"), "--dry-run"],
        env=env,
        capture_output=True,
        text=True,
        timeout=180,  # about 55 s on an idle 2-core CPU, 75 s on a loaded one
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows(tmp_path / "gpu_bench.md")
    assert [(r[0], r[2]) for r in rows] == expected_rows()
    assert all(r[1] == "cpu (dry run)" for r in rows)
    # blackjax is a dependency here, so every row runs (on the device the PAMC row is a note)
    assert importlib.util.find_spec("blackjax") is not None
    assert all(r[-1].startswith("ran (") for r in rows), [r[-1] for r in rows]
    text = (tmp_path / "gpu_bench.md").read_text(encoding="utf-8")
    assert "DRY RUN" in text and "blackjax" in text.split("- packages:")[1].splitlines()[0]


def test_rows_that_do_not_fit_or_lack_blackjax_are_notes(tmp_path):
    # a zero budget: no row runs, each still has its line; blackjax hidden as on the device
    out = tmp_path / "gpu_bench.md"
    code = (
        "import runpy, sys; sys.modules['blackjax'] = None; "
        f"sys.argv = ['bench_gpu.py', '--dry-run', '--budget', '0', '--out', {str(out)!r}]; "
        f"runpy.run_path({SCRIPT!r}, run_name='__main__')"
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    rows = table_rows(out)
    assert [(r[0], r[2]) for r in rows] == expected_rows()
    status = {r[0]: r[-1] for r in rows}
    assert status.pop("pamc L12 NUTS").startswith("skipped: blackjax is absent")
    assert status.pop("laplace L12 L-BFGS").startswith("skipped: needs the result")
    assert all(s.startswith("skipped: budget (estimate") for s in status.values()), status
    summary = f"rows: 0 ran, {len(rows)} skipped, 0 failed"
    assert summary in out.read_text(encoding="utf-8")


@pytest.mark.parametrize(
    "config, overrides",
    [("L12", {}), ("L8", {}), ("L12", {"n_beta": 3, "seed": 3, "rf0": 1e-5})],
)
def test_build_matches_experiments(config, overrides):
    problem, schedule, _ = bench_gpu().build(config, **overrides)
    sets = {"n_beta": "anneal.n_beta", "seed": "data.twin.seed", "rf0": "anneal.rf0"}
    loaded = deepest.experiments.load(
        os.path.join(ROOT, "configs", f"lorenz96_{config}.yaml"),
        [f"{sets[k]}={v}" for k, v in overrides.items()],
    )
    expected_problem, expected_schedule, _, _ = loaded.build()
    assert bool(eqx.tree_equal(problem, expected_problem))
    assert bool(eqx.tree_equal(schedule, expected_schedule))
