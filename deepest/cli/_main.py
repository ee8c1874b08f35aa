"""The `deepest` command line: `deepest anneal CONFIG.yaml` and `deepest train CONFIG.yaml`."""

import argparse
import os
import sys

from ._anneal import run_anneal
from ._train import run_train


def _version() -> str:
    from ..annealing import package_version

    return package_version()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deepest", description=__doc__)
    parser.add_argument("--version", action="version", version=f"deepest {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("anneal", "variational annealing of a data-assimilation problem"),
        ("train", "train a network by annealing and by backpropagation"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument(
            "config",
            nargs="?" if name == "anneal" else None,
            help="YAML experiment file"
            + (" (not needed with --resume)" if name == "anneal" else ""),
        )
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
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
        if name == "anneal":
            p.add_argument(
                "--resume",
                default=None,
                metavar="DIR",
                help="continue the interrupted run whose results folder is DIR",
            )
    args = parser.parse_args(argv)
    partial = False
    try:
        if args.command == "anneal":
            if args.config is None and args.resume is None:
                parser.error("anneal needs a CONFIG file (or --resume DIR)")
            out, partial = run_anneal(
                args.config, args.set, args.out, args.overwrite, not args.no_progress, args.resume
            )
        else:
            out = run_train(args.config, args.set, args.out, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted before anything was finished; nothing written", file=sys.stderr)
        return 130
    print(f"results{' (partial)' if partial else ''}: {out}")
    for name in ("action_levels.png", "estimates.png", "summary.txt"):
        if os.path.exists(os.path.join(out, name)):
            print(f"  {os.path.join(out, name)}")
    if partial:
        print(f"interrupted: continue with `deepest anneal --resume {out}`", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
