"""The command line of long runs (issue 14): a killed or interrupted run resumes bit
identically, result folders are never inconsistent, configs and sweeps are checked before
any compute, several processes equal one."""

import os
import shutil
import signal
import subprocess
import sys
import time

import jax.random as jr
import numpy as np
import pytest
import yaml

import deepest
from deepest.cli import main

from .helpers import same_arrays, write_config

# -- the command line ------------------------------------------------------------------------

# Long enough (a few seconds of annealing, checkpoints every chunk) to be stopped mid-run.
LONG = {
    "model": {"name": "lorenz96", "dim": 10, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 81, "dt": 0.025, "observed": [0, 2, 4, 6, 8], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-4, "alpha": 1.5, "n_beta": 40, "n_paths": 32},
    "output": {"forecast_horizon": 0.2, "checkpoint_every": 0.01},
}
_CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from deepest.cli import main; sys.exit(main(sys.argv[1:]))"
)


def _start(*args):
    return subprocess.Popen(
        [sys.executable, "-c", _CLI, *args, "--no-progress"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for_checkpoint(proc, folder, n_writes=1):
    """Wait until the run has written its checkpoint `n_writes` times."""
    path, seen, last = os.path.join(folder, deepest.annealing.CHECKPOINT), 0, None
    deadline = time.time() + 600
    while seen < n_writes:
        assert proc.poll() is None, proc.communicate()
        assert time.time() < deadline
        stamp = os.stat(path).st_mtime_ns if os.path.exists(path) else None
        if stamp is not None and stamp != last:
            seen, last = seen + 1, stamp
        time.sleep(0.01)


def _arrays(folder):
    with np.load(os.path.join(folder, "result.npz")) as f:
        return {k: f[k] for k in f.files if k != "meta"}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("cli")
    config = write_config(tmp, LONG)
    assert main(["anneal", config, "--out", str(tmp / "full"), "--no-progress"]) == 0
    return config, _arrays(tmp / "full"), tmp / "full"


@pytest.mark.parametrize("n_writes", [1, 3, 6])
def test_killed_run_resumes_bit_identically(uninterrupted, tmp_path, capsys, n_writes):
    config, expected, _ = uninterrupted
    out = str(tmp_path / "run")
    proc = _start("anneal", config, "--out", out)
    _wait_for_checkpoint(proc, out + ".incomplete", n_writes)
    proc.kill()
    proc.wait()
    assert not os.path.exists(out)  # nothing published, the checkpoint kept
    if n_writes == 1:  # another config cannot resume it: the keys that differ are named
        args = ["anneal", config, "--resume", out, "--set", "anneal.alpha=1.6", "--no-progress"]
        assert main(args) == 2
        assert main(["anneal", "--resume", str(tmp_path), "--no-progress"]) == 2
        err = capsys.readouterr().err.splitlines()
        assert "other settings of anneal.alpha" in err[0] and "no checkpoint" in err[1]
    assert main(["anneal", "--resume", out, "--no-progress"]) == 0
    got = _arrays(out)
    assert got.keys() == expected.keys()
    for key in expected:
        assert same_arrays(got[key], expected[key]), key
    assert not os.path.exists(out + ".incomplete")
    assert not os.path.exists(os.path.join(out, deepest.annealing.CHECKPOINT))


def test_sigint_stops_at_once_with_a_partial_result(uninterrupted, tmp_path):
    config, expected, _ = uninterrupted
    out = str(tmp_path / "run")
    proc = _start("anneal", config, "--out", out)
    _wait_for_checkpoint(proc, out + ".incomplete", 2)
    sent = time.perf_counter()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate()
    took = time.perf_counter() - sent
    assert proc.returncode == 130, err
    # 2 s on an idle machine (BENCHMARKS.md); a loaded test machine gets some slack.
    assert took < 6.0, took
    result = deepest.load_result(out)
    assert result.partial
    assert (tmp_path / "run" / "summary.txt").read_text().startswith("PARTIAL RESULT")
    assert f"--resume {out}" in err
    done = np.asarray(result.result != deepest.RESULTS.not_reached)
    assert 0 < done.sum() < done.size
    assert np.array_equal(result.action[done], expected["action"][done])
    # The partial folder resumes to the complete result, replacing itself.
    assert main(["anneal", "--resume", out, "--no-progress"]) == 0
    assert not deepest.load_result(out).partial
    assert np.array_equal(_arrays(out)["action"], expected["action"], equal_nan=True)


def test_killed_overwrite_leaves_the_old_folder_intact(uninterrupted, tmp_path):
    config, _, full = uninterrupted
    out = tmp_path / "old"
    shutil.copytree(full, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    proc = _start("anneal", config, "--out", str(out), "--overwrite")
    _wait_for_checkpoint(proc, str(out) + ".incomplete")
    proc.kill()
    proc.wait()
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    # Without --resume or --overwrite, the killed run's checkpoint is not thrown away.
    assert main(["anneal", config, "--out", str(out), "--no-progress"]) == 2


def test_a_failed_run_does_not_block_its_rerun(tmp_path, capsys):
    # A data file that exists but is not one: the run fails while building its problem
    # (after its folder was made), and leaves nothing behind.
    config = {
        "model": {"name": "lorenz96", "dim": 8},
        "data": {"file": str(tmp_path / "data.npz")},
        "problem": {"rm": 6.25},
        "anneal": {"rf0": 1e-3, "n_beta": 4, "n_paths": 2},
        "output": {"forecast_horizon": 0.0},
    }
    path = write_config(tmp_path, config, "file.yaml")
    out = tmp_path / "run"
    (tmp_path / "data.npz").write_text("not data")
    assert main(["anneal", path, "--out", str(out), "--no-progress"]) == 2
    assert not out.exists() and not (tmp_path / "run.incomplete").exists()
    data = deepest.twin_experiment(
        deepest.models.Lorenz96(8.17), 8, 21, 0.05, [0, 2, 4, 6], 0.4, jr.key(0)
    )
    data.save(tmp_path / "data.npz")
    assert main(["anneal", path, "--out", str(out), "--no-progress"]) == 0
    assert deepest.load_result(out).action.shape == (4, 2)


# -- configs checked before any compute ------------------------------------------------------

TINY = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 21, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"]},
    "anneal": {"n_beta": 4, "n_paths": 2},
}


@pytest.mark.parametrize(
    "dotted, value, message",
    [
        (
            "anneal.max_evaluations",
            "abc",
            "`anneal.max_evaluations` must be an integer ≥ 1; got 'abc'",
        ),
        ("anneal.seed", -1, "`anneal.seed` must be an integer ≥ 0"),
        ("anneal.dtype", "float16", "`anneal.dtype` must be one of"),
        ("anneal.ftol", -1.0, "`anneal.ftol` must be a number ≥ 0"),
        ("anneal.rf0", [1.0, 2.0, 3.0], "`anneal.rf0` must be one number or 8 of them"),
        ("anneal.alpha", "abc", "`anneal.alpha` must be a finite number; got 'abc'"),
        ("data.twin.seed", 1.5, "`data.twin.seed` must be an integer"),
        ("data.twin.noise", 0, "`data.twin.noise` must be a number > 0"),
        ("data.twin.observed", [0, 2, 2], "`data.twin.observed` repeats the indices [2]"),
        ("problem.discretisation", "trapezium", "Did you mean 'trapezoid'"),
        ("problem.rm", [1.0, 2.0], "`problem.rm` must be one number or 4 of them"),
        ("output.save_betas", [7], "`output.save_betas` has β 7, out of range [0, 4)"),
        ("output.checkpoint_every", 0, "`output.checkpoint_every` must be a number > 0"),
    ],
)
def test_config_errors_name_their_key_before_any_compute(tmp_path, capsys, dotted, value, message):
    out = tmp_path / "run"
    args = ["anneal", write_config(tmp_path, TINY), "--out", str(out), "--no-progress"]
    assert main(args + ["--set", f"{dotted}={yaml.safe_dump(value).strip()}"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "run.incomplete").exists()


def test_yaml_syntax_error_is_one_line(tmp_path, capsys):
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  name: lorenz96\n  dim: [8\n")
    assert main(["anneal", str(path), "--out", str(tmp_path / "x"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}:4:1: YAML syntax error" in err, err


def test_set_reaches_keys_the_file_omits(tmp_path):
    # TINY sets no `anneal.max_evaluations` nor `output.forecast_horizon`: --set can still.
    out = tmp_path / "run"
    args = ["anneal", write_config(tmp_path, TINY), "--out", str(out), "--no-progress"]
    sets = ["--set", "anneal.max_evaluations=77", "--set", "output.forecast_horizon=0"]
    assert main(args + sets) == 0
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["anneal"]["max_evaluations"] == 77
    assert deepest.load_result(out).iterations.max() <= 77


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"deepest {deepest.__version__}"


SWEEP_BASE = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 21, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-3, "alpha": 2.0, "n_beta": 10, "n_paths": 3},
    "output": {"forecast_horizon": 0.0},
}


def test_sweep_index_rows_equal_the_separate_runs(tmp_path):
    import csv

    from deepest.experiments import resolve

    grid = {"anneal.rf0": [1e-3, 1e-2], "data.twin.seed": [0, 1]}
    path = write_config(tmp_path, {"base": SWEEP_BASE, "grid": grid}, "sweep.yaml")
    out = tmp_path / "sweep"
    assert main(["sweep", path, "--out", str(out), "--no-progress"]) == 0
    with open(out / "index.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 4 and (out / "sweep.png").exists()
    for row in rows:
        config = yaml.safe_load((out / row["point"] / "config.yaml").read_text())
        assert config["anneal"]["rf0"] == float(row["anneal.rf0"])
        assert config["data"]["twin"]["seed"] == int(row["data.twin.seed"])
        problem, schedule, data, _ = resolve(config, kind="anneal").build()
        alone = deepest.anneal(problem, schedule, 3, jr.key(1), progress=False)
        best = alone.best
        # The sweep's vmapped program and the run alone round differently; measured (issue
        # 22's audit) at most 1.6e-15 apart in the action, 1.3e-11 in the measurement error,
        # 3.9e-11 in the forcing and 5.0e-11 in the RMS error. Every path reaches the same
        # minimum (final actions within 2e-15), so `best` may pick another path on another
        # CPU: the forcing differs across paths by 3.3e-11 at most. 1e-8 keeps a 200× margin;
        # a row of another point (other data, other R_f) differs by far more.
        assert float(row["best_action"]) == pytest.approx(alone.action[-1, best], rel=1e-8)
        assert float(row["measurement_error"]) == pytest.approx(
            alone.measurement_error[-1, best], rel=1e-8
        )
        estimate = float(np.asarray(alone.params["forcing"])[best])
        assert float(row["estimated_forcing"]) == pytest.approx(estimate, rel=1e-8)
        truth = np.asarray(data.truth)
        unobserved = [1, 3, 5, 7]
        rms = np.sqrt(np.mean((alone.paths[best][:, unobserved] - truth[:, unobserved]) ** 2))
        assert float(row["rms_unobserved"]) == pytest.approx(rms, rel=1e-8)


@pytest.mark.parametrize(
    "sweep, message",
    [
        ({"grid": {"anneal.alfa": [1.0]}}, "Did you mean 'anneal.alpha'"),
        ({"grid": {"anneal.rf0": []}}, "`grid.anneal.rf0` must be a non-empty list"),
        ({"grid": {"anneal.rf0": [1e-3], "data.twin.seed": [0, 1]}, "combine": "zip"}, "length"),
        ({"grid": {"anneal.rf0": [1e-3, -1.0]}}, "anneal.rf0=-1.0"),
        ({"grid": {"anneal.n_paths": [2, 3]}}, "same at every point"),
        ({"grid": {"anneal.rf0": [1e-3]}, "combine": "outer"}, "`combine` must be one of"),
    ],
)
def test_bad_sweeps_are_refused_before_compute(tmp_path, capsys, sweep, message):
    path = write_config(tmp_path, {"base": SWEEP_BASE, **sweep}, "sweep.yaml")
    out = tmp_path / "sweep"
    assert main(["sweep", path, "--out", str(out), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists() and not (tmp_path / "sweep.incomplete").exists()


def test_killed_sweep_resumes_bit_identically(tmp_path):
    grid = {"data.twin.seed": [0, 1], "anneal.rf0": [1e-4, 1e-3]}
    sweep = {"base": LONG, "grid": grid, "combine": "zip"}
    path = write_config(tmp_path, sweep, "sweep.yaml")
    full = str(tmp_path / "full")
    assert main(["sweep", path, "--out", full, "--no-progress"]) == 0
    out = str(tmp_path / "run")
    proc = _start("sweep", path, "--out", out)
    _wait_for_checkpoint(proc, os.path.join(out + ".incomplete", "checkpoints", "group-0"), 3)
    proc.kill()
    proc.wait()
    assert not os.path.exists(out)
    assert main(["sweep", "--resume", out, "--no-progress"]) == 0
    for point in ("point-000", "point-001"):
        expected, got = _arrays(os.path.join(full, point)), _arrays(os.path.join(out, point))
        assert got.keys() == expected.keys()
        for key in expected:
            assert same_arrays(got[key], expected[key]), (point, key)
    assert not os.path.exists(os.path.join(out, "checkpoints"))


# -- several hosts ---------------------------------------------------------------------------


def _free_port():
    import socket

    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def test_two_processes_equal_one(tmp_path):
    # Two CPU processes on this machine joined by jax.distributed: the lanes are split over
    # both processes' devices, process 0 writes; the result equals a one-process run's.
    path = write_config(tmp_path, {**TINY, "anneal": {"n_beta": 6, "n_paths": 6}})
    one = tmp_path / "one"
    assert main(["anneal", path, "--out", str(one), "--no-progress"]) == 0
    two = str(tmp_path / "two")
    hosts = ["--coordinator", f"localhost:{_free_port()}", "--num-processes", "2"]
    procs = [_start("anneal", path, "--out", two, *hosts, "--process-id", str(i)) for i in (1, 0)]
    for proc in procs:
        out, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-2000:]
    a, b = deepest.load_result(one), deepest.load_result(two)
    assert b.stats["n_devices"] == 2 and a.stats["n_devices"] == 1
    np.testing.assert_allclose(b.action, a.action, rtol=1e-8)
    assert np.asarray(b.result == a.result).all()
    np.testing.assert_array_equal(b.converged_by, a.converged_by)
    assert not os.path.exists(two + ".incomplete")


@pytest.mark.parametrize(
    "hosts, message",
    [
        (["--num-processes", "2", "--process-id", "2", "--coordinator", "h:1"], "[0, 2)"),
        (["--num-processes", "0", "--process-id", "0", "--coordinator", "h:1"], "at least 1"),
        (["--num-processes", "2", "--process-id", "0", "--coordinator", "h"], "HOST:PORT"),
        (["--num-processes", "2"], "together"),
    ],
)
def test_bad_host_arguments_are_refused_before_compute(tmp_path, capsys, hosts, message):
    out = tmp_path / "run"
    args = ["anneal", write_config(tmp_path, TINY), "--out", str(out), "--no-progress", *hosts]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()
