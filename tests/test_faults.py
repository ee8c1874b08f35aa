"""Faults (issue 22): two runs for one results folder, runs too large for the machine, a
folder that cannot be written, failures after the compute, Ctrl-C in every phase of
every command, and no stretch of a run without output. With tests/test_bad_inputs.py
this is the list of bad inputs and faults that docs/reliability.md counts.

The commands run as real processes where the fault is one of processes (locks, signals,
memory, silences); their stderr is read as it comes, each chunk stamped with its time.
The tests that assert how soon a command answers are marked `timing`: `make test` runs
them one at a time after the others, as a second test process loading the machine would
decide their outcome.
"""

import errno
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import deepest
from deepest.cli import main
from deepest.cli._folder import FolderLock

from .helpers import ROOT, write_config

TINY = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 21, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-3, "alpha": 2.0, "n_beta": 12, "n_paths": 4},
    "output": {"forecast_horizon": 0.3},
}
# a few seconds of annealing, checkpoints every chunk
LONG = {
    **TINY,
    "model": {"name": "lorenz96", "dim": 10, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 81, "dt": 0.025, "observed": [0, 2, 4, 6, 8], "noise": 0.4}},
    "anneal": {"rf0": 1e-4, "alpha": 1.5, "n_beta": 40, "n_paths": 32},
    "output": {"forecast_horizon": 0.2, "checkpoint_every": 0.01},
}
PAMC = {
    **LONG,
    "anneal": {"rf0": 1e-4, "alpha": 1.5, "n_beta": 12, "n_paths": 8},
    "pamc": {
        "n_chains": 4,
        "n_samples": 200,
        "n_warmup": 200,
        "kernel": "hmc",
        "num_integration_steps": 8,
        "betas": [8, 9, 10, 11],
    },
}
TRAIN = {
    "experiment": "depth_resolution",
    "data": {"n_train": 8, "n_validation": 4, "n_test": 4},
    "network": {"depths": [3, 4]},
    "anneal": {"n_paths": 4, "n_beta": 20, "alpha": 2.0, "max_evaluations": 400},
    "backprop": {"steps": 3000, "n_runs": 4},
}

# The commands as processes; each restores Ctrl-C first (a background runner's children
# inherit SIGINT ignored).
_CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from deepest.cli import main; sys.exit(main(sys.argv[1:]))"
)
# the same, saying its peak memory (resident set, kB) at the end: VmHWM, this program's own
# (getrusage's ru_maxrss keeps the forking parent's peak across exec)
_CLI_RSS = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from deepest.cli import main; code = main(sys.argv[1:]); "
    "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
    "print('maxrss', *peak, file=sys.stderr); sys.exit(code)"
)


class Watched:
    """A command run as a process, its stderr read as it comes: `(seconds since start,
    text)` chunks in `chunks`."""

    def __init__(self, *args, program=_CLI):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.chunks: list[tuple[float, str]] = []
        self.stdout = b""
        threading.Thread(target=self._read, daemon=True).start()
        threading.Thread(target=self._read_stdout, daemon=True).start()

    def _read(self):
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self.chunks.append((time.monotonic() - self.start, chunk.decode(errors="replace")))

    def _read_stdout(self):
        self.stdout = self.proc.stdout.read()

    @property
    def err(self) -> str:
        return "".join(text for _, text in self.chunks)

    def wait_for(self, pattern: str, timeout: float = 300.0) -> float:
        """Wait until stderr matches `pattern`; the time it did."""
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.err):
            assert self.proc.poll() is None, f"ended before {pattern!r}:\n{self.err}"
            assert time.monotonic() < deadline, f"no {pattern!r} in:\n{self.err}"
            time.sleep(0.01)
        return time.monotonic() - self.start

    def wait(self, timeout: float = 600.0) -> int:
        code = self.proc.wait(timeout)
        time.sleep(0.05)  # the readers' last chunks
        return code

    def longest_silence(self) -> float:
        """The longest stretch without output on stderr, from the start to the end."""
        stamps = [0.0] + [t for t, _ in self.chunks]
        return max(np.diff(stamps)) if len(stamps) > 1 else float("inf")


# -- two runs, one folder ----------------------------------------------------------------------


@pytest.mark.timing
def test_a_second_run_for_the_same_out_is_refused_at_once(tmp_path):
    config = write_config(tmp_path, LONG)
    out = str(tmp_path / "run")
    first = Watched("anneal", config, "--out", out, "--no-progress")
    first.wait_for("annealing: ")
    seconds = [
        Watched("anneal", config, "--out", out, "--no-progress", *extra)
        for extra in ([], ["--overwrite"])
    ]
    for second in seconds:
        assert second.wait(60) == 2, second.err
        took = second.chunks[-1][0]
        assert took < 5.0, took
        lines = second.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), second.err
        assert f"is being written by another run (process {first.proc.pid}" in lines[0]
        assert first.proc.poll() is None  # the first run goes on, untouched
    assert first.wait() == 0, first.err
    # the folder is the first run's, whole: its config, its result
    result = deepest.load_result(out)
    assert result.n_paths == 32 and not result.partial
    assert not os.path.exists(out + ".lock") and not os.path.exists(out + ".incomplete")


def test_a_lock_held_is_refused_and_a_dead_owners_lock_taken_over(tmp_path):
    out = str(tmp_path / "run")
    held = FolderLock(out)
    with pytest.raises(FileExistsError, match=f"process {os.getpid()} on "):
        FolderLock(out)
    held.release()
    assert not os.path.exists(out + ".lock")
    # a lock file left by a process that ended (its lock released by the system)
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    )
    pid = int(ended.stdout)
    owner = {"pid": pid, "host": socket.gethostname(), "command": "deepest anneal x.yaml"}
    with open(out + ".lock", "w") as f:
        json.dump(owner, f)
    taken = FolderLock(out)
    assert taken.note is not None and f"left by process {pid}" in taken.note
    taken.release()


# -- checks before any compute -------------------------------------------------------------------


@pytest.mark.timing
def test_a_run_too_large_for_the_memory_is_refused_quickly(tmp_path):
    out = str(tmp_path / "huge")
    run = Watched(
        "anneal",
        "configs/lorenz96_L12.yaml",
        "--out",
        out,
        "--set",
        "anneal.n_paths=1000000000",
        program=_CLI_RSS,
    )
    assert run.wait(60) == 2, run.err
    took = run.chunks[-1][0]
    assert took < 10.0, took
    error = [line for line in run.err.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and "1,000,000,000 paths" in error[0] and "at most" in error[0]
    assert "--force" in error[0]
    fits = int(re.search(r"at most ([\d,]+) paths", error[0]).group(1).replace(",", ""))
    assert 0 < fits < 10**9
    peak_kb = int(re.search(r"maxrss (\d+)", run.err).group(1))
    assert peak_kb < 1024**2, peak_kb  # below 1 GB
    assert not os.path.exists(out) and not os.path.exists(out + ".incomplete")
    assert not os.path.exists(out + ".lock")


@pytest.mark.timing
def test_twin_data_too_large_are_refused_before_they_are_made(tmp_path, capsys):
    out = tmp_path / "huge"
    args = ["anneal", "configs/lorenz96_L12.yaml", "--out", str(out), "--no-progress"]
    start = time.perf_counter()
    assert main(args + ["--set", "data.twin.n_times=100000000"]) == 2
    assert time.perf_counter() - start < 10.0
    err = capsys.readouterr().err
    assert "data.twin.n_times" in err and "free" in err, err
    assert not out.exists() and not (tmp_path / "huge.incomplete").exists()


def test_out_that_is_a_file_is_refused_and_left_alone(tmp_path, capsys):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    assert main(["anneal", write_config(tmp_path, TINY), "--out", str(path)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert path.read_text() == "mine" and not (tmp_path / "notes.txt.incomplete").exists()


def test_out_below_a_folder_that_cannot_be_written_is_refused(tmp_path, capsys, monkeypatch):
    config = write_config(tmp_path, TINY)
    real = os.access
    monkeypatch.setattr(
        os, "access", lambda p, mode: False if str(p) == str(tmp_path) else real(p, mode)
    )
    assert main(["anneal", config, "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"error: --out {tmp_path / 'run'}: {tmp_path} cannot be written (permission denied)."
    ]


# -- failures after the compute ----------------------------------------------------------------


def test_an_error_after_the_compute_publishes_the_result_marked_failed(
    tmp_path, capsys, monkeypatch
):
    import deepest.cli._anneal as command

    def fails(*args, **kwargs):
        raise FloatingPointError("All-NaN slice encountered")

    monkeypatch.setattr(command, "write_laplace", fails)
    out = tmp_path / "run"
    code = main(["anneal", write_config(tmp_path, TINY), "--out", str(out), "--laplace"])
    assert code == 1
    err = capsys.readouterr().err
    assert "error: Laplace approximation at 4 paths: FloatingPointError: All-NaN" in err
    summary = (out / "summary.txt").read_text()
    assert "FAILED: Laplace approximation at 4 paths: FloatingPointError" in summary
    assert not deepest.load_result(out).partial  # the annealing itself is kept, whole
    assert not (out / deepest.annealing.CHECKPOINT).exists()


def test_a_folder_that_cannot_be_written_sends_the_results_beside_it(tmp_path, capsys, monkeypatch):
    import deepest.cli._anneal as command

    real = command.write_results

    def refuses(path, *args, **kwargs):
        if path.endswith(".incomplete"):
            raise PermissionError(errno.EACCES, "Permission denied", path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr(command, "write_results", refuses)
    out = tmp_path / "run"
    assert main(["anneal", write_config(tmp_path, TINY), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    rescued = tmp_path / "run.rescued"
    assert f"the results are in {rescued}" in err
    assert deepest.load_result(rescued).action.shape == (12, 4)
    assert (rescued / "summary.txt").exists() and not out.exists()
    assert not (tmp_path / "run.lock").exists()


def test_a_checkpoint_that_cannot_be_written_does_not_stop_the_run(tmp_path, monkeypatch):
    import deepest._annealing._runner as runner

    problem, schedule = _tiny_problem()
    expected = deepest.anneal(problem, schedule, 3, _key(), progress=False)

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runner, "save_checkpoint", full_disk)
    with pytest.warns(UserWarning, match="could not be written .* No space left"):
        got = deepest.anneal(
            problem, schedule, 3, _key(), progress=False, checkpoint=tmp_path, checkpoint_every=1e-3
        )
    np.testing.assert_array_equal(got.action, expected.action)


def _key():
    import jax.random as jr

    return jr.key(0)


def _tiny_problem():
    from .helpers import small_problem

    return small_problem(), deepest.AnnealSchedule(rf0=1e-3, alpha=2.0, n_beta=6)


# -- Ctrl-C in every phase, and no silence ----------------------------------------------------

# The phases of each command where Ctrl-C finds different work: the data, the compiler,
# the annealing loop, writing results, Laplace, PAMC's sampling, a sweep's loop, training.
_PHASES = [
    ("anneal", LONG, [], "data and problem: building"),
    ("anneal", LONG, [], "compiling the annealing loop"),
    ("anneal", LONG, [], r"annealing: [\d,]+ minimisations"),
    ("anneal", LONG, [], "results: the result, plots"),
    ("anneal", LONG, ["--laplace"], "Laplace approximation at"),
    ("sweep", None, [], r"annealing: [\d,]+ minimisations"),
    ("pamc", PAMC, [], "PAMC: "),
    ("train", TRAIN, [], "depth L = 3: backpropagation"),
]


@pytest.mark.timing
@pytest.mark.parametrize(
    "command, config, extra, phase", _PHASES, ids=[f"{c}-{p[:24]}" for c, _, _, p in _PHASES]
)
def test_ctrl_c_is_answered_within_two_seconds_in_every_phase(
    tmp_path, command, config, extra, phase
):
    if command == "sweep":
        base = write_config(tmp_path, LONG)
        path = tmp_path / "sweep.yaml"
        path.write_text(json.dumps({"base": base, "grid": {"data.twin.seed": [0, 1]}}))
        config_path = str(path)
    else:
        config_path = write_config(tmp_path, config)
    out = str(tmp_path / "run")
    run = Watched(command, config_path, "--out", out, "--no-progress", *extra)
    run.wait_for(phase)
    sent = time.monotonic()
    run.proc.send_signal(signal.SIGINT)
    code = run.wait(30)
    took = time.monotonic() - sent
    assert took <= 2.0, (took, run.err)
    assert run.longest_silence() <= 2.0, run.err
    last = run.err.strip().splitlines()[-1]
    assert "Traceback" not in run.err
    if code == 0:  # it finished within the moment it was given: complete
        assert not os.path.exists(out + ".incomplete")
        return
    assert code == 130, run.err
    if os.path.exists(out):  # a partial result, published
        assert "partial" in run.stdout.decode() and f"--resume {out}" in run.err
    elif os.path.exists(out + ".incomplete"):  # finished work kept, to resume
        assert f"--resume {out}" in last, last
    else:
        assert "nothing kept" in last or "nothing written" in last, last
    assert not os.path.exists(out + ".lock")


@pytest.mark.timing
def test_first_output_within_two_seconds_and_no_silence(tmp_path):
    out = str(tmp_path / "run")
    run = Watched(
        "anneal",
        "configs/lorenz96_L12.yaml",
        "--out",
        out,
        "--set",
        "anneal.n_paths=4",
        "--set",
        "anneal.n_beta=6",
        "--no-progress",
    )
    assert run.wait() == 0, run.err
    assert run.chunks[0][0] <= 2.0, run.chunks[:2]
    assert run.longest_silence() <= 2.0, run.err


# -- pamc and train resume as anneal does ------------------------------------------------------


def _npz(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files if k != "meta"}


def _interrupt_when(tmp_path, command, config, ready):
    """Run `command`, Ctrl-C it once `ready(out)` holds; the results folder."""
    out = str(tmp_path / "run")
    run = Watched(command, config, "--out", out, "--no-progress")
    deadline = time.monotonic() + 300
    while not ready(out):
        assert run.proc.poll() is None, run.err
        assert time.monotonic() < deadline, run.err
        time.sleep(0.01)
    run.proc.send_signal(signal.SIGINT)
    assert run.wait(30) == 130, run.err
    assert f"--resume {out}" in run.err
    return out


def test_pamc_resumes_bit_identically(tmp_path):
    # chains from draws (the annealing's own resume is tested above), three short β's
    small = {
        **PAMC,
        "anneal": {**PAMC["anneal"], "n_beta": 4},
        "pamc": {
            **PAMC["pamc"],
            "start": "draws",
            "n_samples": 20,
            "n_warmup": 20,
            "betas": [0, 1, 2],
        },
    }
    config = write_config(tmp_path, small)
    full = tmp_path / "full"
    assert main(["pamc", config, "--out", str(full), "--no-progress"]) == 0
    checkpoint = deepest.PAMCResult.checkpoint_name

    def one_beta_done(out):
        return os.path.exists(os.path.join(out + ".incomplete", checkpoint))

    out = _interrupt_when(tmp_path, "pamc", config, one_beta_done)
    assert not os.path.exists(out)
    assert main(["pamc", "--resume", out, "--no-progress"]) == 0
    expected, got = _npz(full / "pamc.npz"), _npz(os.path.join(out, "pamc.npz"))
    assert got.keys() == expected.keys()
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    assert not os.path.exists(os.path.join(out, checkpoint))


def test_train_resumes_where_it_stopped(tmp_path):
    small = {
        **TRAIN,
        "network": {"depths": [2, 3]},
        "anneal": {**TRAIN["anneal"], "n_beta": 5},
        "backprop": {"steps": 50, "n_runs": 1},
    }
    config = write_config(tmp_path, small)
    full = tmp_path / "full"
    assert main(["train", config, "--out", str(full), "--no-progress"]) == 0

    def first_depth_done(out):
        return os.path.exists(os.path.join(out + ".incomplete", "L002", "backprop.json"))

    out = _interrupt_when(tmp_path, "train", config, first_depth_done)
    assert main(["train", "--resume", out, "--no-progress"]) == 0
    for depth in ("L002", "L003"):
        expected = _npz(full / depth / "result.npz")
        got = _npz(os.path.join(out, depth, "result.npz"))
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=f"{depth} {key}")
    errors = json.loads((full / "errors.json").read_text())
    resumed = json.loads(open(os.path.join(out, "errors.json")).read())
    for depth in ("2", "3"):
        for part in ("anneal", "backprop"):
            for k in ("lowest_action", "lowest_train", "best_validation"):
                if k in errors[depth][part]:
                    assert resumed[depth][part][k] == errors[depth][part][k]


# -- folders of interrupted runs, and what one process leaves for the next ---------------------


def test_a_rerun_never_deletes_an_interrupted_runs_checkpoints(tmp_path):
    from deepest.cli._folder import ResultsFolder

    out = str(tmp_path / "run")
    for where in (
        "checkpoints/group-0/checkpoint.eqx",
        "L003/checkpoint.eqx",
        "pamc-checkpoint.npz",
    ):
        path = os.path.join(out + ".incomplete", where)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        open(path, "w").close()
        with pytest.raises(FileExistsError, match="holds an interrupted run"):
            ResultsFolder(out, overwrite=False)
        assert os.path.exists(path) and not os.path.exists(out + ".lock")
        os.remove(path)


def test_resume_takes_the_newer_of_a_partial_result_and_its_killed_resumption(tmp_path):
    from deepest.cli._folder import resume_source

    out = str(tmp_path / "run")
    for folder in (out, out + ".incomplete"):  # published partial, then its resume killed
        os.makedirs(folder)
        open(os.path.join(folder, deepest.annealing.CHECKPOINT), "w").close()
    assert resume_source(out) == (out + ".incomplete", out)


def test_resume_of_a_complete_folder_is_refused(tmp_path, capsys):
    os.makedirs(tmp_path / "done")
    for command in ("pamc", "train"):
        assert main([command, "--resume", str(tmp_path / "done")]) == 2
        assert "is complete; there is nothing to resume" in capsys.readouterr().err


def test_a_stop_asked_of_one_run_does_not_reach_the_next(tmp_path, capsys):
    deepest.annealing.INTERRUPT.set()  # e.g. a Ctrl-C answered after its run had finished
    out = tmp_path / "run"
    assert main(["anneal", write_config(tmp_path, TINY), "--out", str(out), "--quiet"]) == 0
    assert not deepest.load_result(out).partial
    assert capsys.readouterr().err == ""  # --quiet: nothing on stderr but errors


def test_checkpoints_that_cannot_fit_on_their_disk_are_refused(tmp_path, monkeypatch):
    import shutil as shutil_module

    import deepest._annealing._runner as runner

    problem, schedule = _tiny_problem()
    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr(runner.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    with pytest.raises(ValueError, match=r"checkpoints need about .* 1 kB are free there"):
        deepest.anneal(problem, schedule, 3, _key(), progress=False, checkpoint=tmp_path / "ck")
    assert not (tmp_path / "ck").exists()


def test_sessions_leave_no_threads_nor_stderr_behind(tmp_path):
    before = threading.active_count()
    for i in range(3):
        assert (
            main(["anneal", str(tmp_path / "missing.yaml"), "--out", str(tmp_path / f"r{i}")]) == 2
        )
    time.sleep(0.5)
    assert threading.active_count() <= before
    assert sys.stderr.__class__.__name__ != "_Stamped"


def test_the_compiled_loop_is_checked_against_the_memory_left(monkeypatch):
    import deepest._annealing._runner as runner

    problem, schedule = _tiny_problem()
    # the estimate before the start passes; the compiled program's working memory does not
    monkeypatch.setattr(runner, "check_resources", lambda *args, **kwargs: 0)
    monkeypatch.setattr(runner, "available_memory", lambda devices: (1000, "the host"))
    import deepest._annealing._anneal as entry

    monkeypatch.setattr(entry, "check_resources", lambda *args, **kwargs: 0)
    with pytest.raises(ValueError, match="compiled annealing loop needs .* 1 kB are free"):
        deepest.anneal(problem, schedule, 3, _key(), progress=False)
    deepest.anneal(problem, schedule, 3, _key(), progress=False, check_memory=False)


# The faults above, one line each: what tests/test_bad_inputs.py counts with its groups.
FAULTS = [
    "a second run for the same --out, while the first runs",
    "a second run for the same --out with --overwrite, while the first runs",
    "a results folder locked by a live process",
    "a lock file left by a process that ended",
    "anneal.n_paths = 1e9 (memory estimate)",
    "data.twin.n_times = 1e8 (twin data too large)",
    "--out naming a file",
    "--out below a folder that cannot be written",
    "an error after the compute (Laplace of non-finite paths)",
    "a results folder that cannot be written at the end (rescued)",
    "a checkpoint that cannot be written mid-run (full disk)",
    *(f"Ctrl-C in `deepest {c}` during '{p}'" for c, _, _, p in _PHASES),
    "silence: the first output and the longest stretch without output",
    "pamc killed mid-sampling, resumed",
    "train interrupted between depths, resumed",
    "a rerun without --resume over an interrupted sweep's, train's or pamc's checkpoints",
    "--resume of a published partial result whose own resumption was killed",
    "pamc or train --resume of a complete folder",
    "a stop asked of one in-process run reaching the next",
    "sessions leaving threads or a wrapped stderr behind",
    "a compiled loop whose working memory exceeds what is left",
    "checkpoints that cannot fit on their disk",
]
