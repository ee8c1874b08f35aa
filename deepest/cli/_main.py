"""The `deepest` command line: `deepest anneal CONFIG.yaml`, `deepest sweep SWEEP.yaml`,
`deepest pamc CONFIG.yaml`, `deepest cycle CONFIG.yaml` and `deepest train CONFIG.yaml`."""

import argparse
import os
import sys

from ._anneal import run_anneal
from ._cycle import run_cycle
from ._session import Outcome, Session
from ._sweep import run_sweep
from ._train import run_train
from ._uncertainty import run_pamc

# the commands that anneal one problem and can resume, run on several hosts
_LONG = ("anneal", "sweep")


def _version() -> str:
    from ..annealing import package_version

    return package_version()


def distributed(coordinator: str | None, num_processes: int | None, process_id: int | None):
    """Join a `jax.distributed` run of several processes, after checking the arguments;
    with none given, nothing (one process)."""
    given = [v is not None for v in (coordinator, num_processes, process_id)]
    if not any(given):
        return
    if not all(given):
        raise ValueError("Give --coordinator, --num-processes and --process-id together.")
    host, _, port = coordinator.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"--coordinator must be HOST:PORT; got {coordinator!r}.")
    if num_processes < 1:
        raise ValueError(f"--num-processes must be at least 1; got {num_processes}.")
    if not 0 <= process_id < num_processes:
        raise ValueError(
            f"--process-id must lie in [0, {num_processes}) for --num-processes "
            f"{num_processes}; got {process_id}."
        )
    import jax

    # CPU devices of several processes talk over gloo (GPUs over NCCL, unaffected).
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(coordinator, num_processes, process_id)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="deepest", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deepest {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("anneal", "variational annealing of a data-assimilation problem"),
        ("sweep", "anneal every point of a grid of settings (SWEEP.yaml)"),
        ("pamc", "precision annealing Monte Carlo: sample the posterior along the schedule"),
        ("cycle", "cycled assimilation: window after window, each one's analysis carried on"),
        ("train", "train a network by annealing and by backpropagation"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", nargs="?", help="YAML experiment file (not needed with --resume)")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config entry, e.g. --set anneal.n_paths=64",
        )
        p.add_argument("--out", default=None, help="results folder (default: results/NAME-TIME)")
        p.add_argument(
            "--overwrite",
            action="store_true",
            help="replace an existing results folder (only once the new one is complete)",
        )
        p.add_argument(
            "--resume",
            default=None,
            metavar="DIR",
            help=f"continue the interrupted {name} whose results folder is DIR",
        )
        p.add_argument(
            "--force",
            action="store_true",
            help="run even where the memory estimate says the run does not fit",
        )
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        p.add_argument("--quiet", action="store_true", help="say nothing on stderr but errors")
        if name == "anneal":
            p.add_argument(
                "--laplace",
                action="store_true",
                help="also the Laplace approximation at the minima: ±σ of every estimate",
            )
        if name in _LONG:
            hosts = p.add_argument_group(
                "several hosts (jax.distributed; see docs: the command line)"
            )
            hosts.add_argument("--coordinator", metavar="HOST:PORT", help="process 0's address")
            hosts.add_argument("--num-processes", type=int, metavar="N")
            hosts.add_argument("--process-id", type=int, metavar="I")
    return parser


def _run(args, session: Session) -> Outcome:
    progress = not (args.no_progress or args.quiet)
    common = dict(session=session, resume=args.resume, force=args.force, progress=progress)
    if args.command == "anneal":
        return run_anneal(
            args.config, args.set, args.out, args.overwrite, laplace=args.laplace, **common
        )
    if args.command == "sweep":
        return run_sweep(args.config, args.out, args.overwrite, **common)
    if args.command == "pamc":
        return run_pamc(args.config, args.set, args.out, args.overwrite, **common)
    if args.command == "cycle":
        return run_cycle(args.config, args.set, args.out, args.overwrite, **common)
    return run_train(args.config, args.set, args.out, args.overwrite, **common)


def main(argv=None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.config is None and args.resume is None:
        parser.error(f"{args.command} needs a CONFIG file (or --resume DIR)")
    if args.command == "sweep" and args.set:
        parser.error("sweep takes no --set: put the settings in its base or grid")
    # Its first line once the checks before any compute have passed (an error is one line).
    session = Session(f"deepest {args.command}", quiet=args.quiet)
    try:
        if args.command in _LONG:
            distributed(args.coordinator, args.num_processes, args.process_id)
        outcome = _run(args, session)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        session.close()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # e.g. results that could not be written anywhere
        session.close()
        print(f"error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        session.close()
        print(
            "interrupted: what was finished is kept where a line above says; "
            f"`deepest {args.command} --resume FOLDER` continues it",
            file=sys.stderr,
        )
        return 130
    finally:
        session.close()
    out, partial = outcome.out, outcome.partial
    print(outcome.summary, end="")
    print(f"results{' (partial)' if partial else ''}: {out}")
    for name in (
        "action_levels.png",
        "estimates.png",
        "uncertainty.png",
        "expected_action.png",
        "cycle.png",
        "summary.txt",
        "index.csv",
        "sweep.png",
    ):
        if os.path.exists(os.path.join(out, name)):
            print(f"  {os.path.join(out, name)}")
    if outcome.failed:
        print(f"error: {outcome.failed}", file=sys.stderr)
        return 1
    if partial:
        print(
            f"interrupted: continue with `deepest {args.command} --resume {out}`", file=sys.stderr
        )
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
