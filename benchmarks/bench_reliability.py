"""Runs that never go silent and answer Ctrl-C at once (issue 22), on the shipped configs.

Every command runs as its own process with stderr read as it comes, each chunk stamped
with its time (a timestamping wrapper), and reports:

1. Silence: the time from the start of `deepest anneal configs/lorenz96_L12.yaml` (and of
   `anneal --laplace`, `pamc configs/lorenz96_L12_pamc.yaml`, `sweep` of two points) to
   its first line on stderr, and the longest stretch without output until it ends.
2. Ctrl-C: SIGINT sent as each phase starts (its line on stderr); the time from the
   signal to the process's exit, its exit code, and what it said it kept.
3. Size: `--set anneal.n_paths=1000000000`: the time to the refusal and the process's
   peak resident memory.

    python benchmarks/bench_reliability.py [--quick]

`--quick` runs fewer paths and β's (the command lines gain `--set` overrides).
"""

import argparse
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from deepest.cli import main; sys.exit(main(sys.argv[1:]))"
)
CLI_RSS = (
    "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
    "from deepest.cli import main; code = main(sys.argv[1:]); "
    "peak = [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')]; "
    "print('maxrss', *peak, file=sys.stderr); sys.exit(code)"
)


class Stamped:
    """A command as a process; its stderr chunks with their times since the start."""

    def __init__(self, args, program=CLI):
        self.start = time.monotonic()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", program, *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            cwd=ROOT,
        )
        self.chunks = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        fd = self.proc.stderr.fileno()
        while chunk := os.read(fd, 65536):
            self.chunks.append((time.monotonic() - self.start, chunk.decode(errors="replace")))

    @property
    def err(self):
        return "".join(t for _, t in self.chunks)

    def wait_for(self, pattern, timeout=900):
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.err):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.005)
        return True

    def finish(self, timeout=3600):
        code = self.proc.wait(timeout)
        self._reader.join(5)
        return code

    def silences(self):
        stamps = [0.0] + [t for t, _ in self.chunks]
        gaps = [b - a for a, b in zip(stamps, stamps[1:])]
        return (stamps[1] if len(stamps) > 1 else float("nan")), max(gaps, default=float("nan"))


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--skip", nargs="*", default=[], choices=["silence", "ctrl-c", "size"])
    args = parser.parse_args()
    quick = ["--set", "anneal.n_paths=8", "--set", "anneal.n_beta=12"] if args.quick else []
    quick_pamc = (
        quick + ["--set", "pamc.n_samples=50", "--set", "pamc.n_warmup=50"] if args.quick else []
    )
    tmp = tempfile.mkdtemp(prefix="bench-reliability-")
    sweep = os.path.join(tmp, "sweep.yaml")
    with open(sweep, "w") as f:
        f.write(
            f"base: {os.path.join(ROOT, 'configs', 'lorenz96_L12.yaml')}\n"
            "grid:\n  data.twin.seed: [0, 1]\n"
            + ("  anneal.n_paths: [8]\n  anneal.n_beta: [12]\n" if args.quick else "")
        )
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores")
    commands = {
        "anneal": ["anneal", "configs/lorenz96_L12.yaml", *quick],
        "anneal --laplace": ["anneal", "configs/lorenz96_L12.yaml", "--laplace", *quick],
        "pamc": ["pamc", "configs/lorenz96_L12_pamc.yaml", *quick_pamc],
        "sweep (2 points)": ["sweep", sweep],
    }
    if "silence" not in args.skip:
        silence(commands, tmp)
    if "ctrl-c" not in args.skip:
        ctrl_c(commands, tmp)
    if "size" not in args.skip:
        size(tmp)


def silence(commands, tmp):
    print("\n1. silence (s): first output, longest stretch without output")
    for i, (name, command) in enumerate(commands.items()):
        run = Stamped([*command, "--out", os.path.join(tmp, f"silence-{i}"), "--no-progress"])
        code = run.finish()
        first, longest = run.silences()
        print(f"  {name:<20} exit {code}   first {first:5.2f}   longest silence {longest:5.2f}")


def ctrl_c(commands, tmp):
    print("\n2. Ctrl-C (s): signal to exit, at the start of each phase")
    phases = [
        ("anneal", "data and problem: building"),
        ("anneal", "annealing: checking its size"),
        ("anneal", "compiling the annealing loop"),
        ("anneal", r"annealing: [\d,]+ minimisations"),
        ("anneal", "results: the result, plots"),
        ("anneal --laplace", "Laplace approximation at"),
        ("pamc", "PAMC: "),
        ("sweep (2 points)", r"annealing: [\d,]+ minimisations"),
        ("sweep (2 points)", "results: writing"),
    ]
    for i, (name, phase) in enumerate(phases):
        out = os.path.join(tmp, f"ctrl-c-{i}")
        run = Stamped([*commands[name], "--out", out, "--no-progress"])
        if not run.wait_for(phase):
            print(f"  {name:<20} {phase[:32]:<34} (ended before the phase: exit {run.finish()})")
            continue
        if phase.startswith("annealing: [") or phase.startswith("PAMC"):
            time.sleep(1.0)  # well inside the phase
        sent = time.monotonic()
        run.proc.send_signal(signal.SIGINT)
        code = run.finish()
        took = time.monotonic() - sent
        said = run.err.strip().splitlines()[-1][:90]
        print(f"  {name:<20} {phase[:32]:<34} {took:5.2f}   exit {code}   {said}")


def size(tmp):
    print("\n3. a run too large for the memory")
    run = Stamped(
        [
            "anneal",
            "configs/lorenz96_L12.yaml",
            "--set",
            "anneal.n_paths=1000000000",
            "--out",
            os.path.join(tmp, "huge"),
        ],
        program=CLI_RSS,
    )
    code = run.finish()
    took = run.chunks[-1][0] if run.chunks else float("nan")
    peak = int(re.search(r"maxrss (\d+)", run.err).group(1)) / 1024
    error = next((line for line in run.err.splitlines() if line.startswith("error:")), "")
    print(f"  exit {code} after {took:.2f} s, peak memory {peak:.0f} MB")
    print(f"  {error}")


if __name__ == "__main__":
    main()
