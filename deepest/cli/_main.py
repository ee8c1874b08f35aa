"""The `deepest` command line: `deepest anneal CONFIG.yaml` and `deepest train CONFIG.yaml`."""

import argparse
import os
import sys

from ._anneal import run_anneal
from ._train import run_train


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="deepest", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, help_ in (
        ("anneal", "variational annealing of a data-assimilation problem"),
        ("train", "train a network by annealing and by backpropagation"),
    ):
        p = sub.add_parser(name, help=help_)
        p.add_argument("config", help="YAML experiment file")
        p.add_argument(
            "--set",
            action="append",
            default=[],
            metavar="KEY=VALUE",
            help="override a config entry, e.g. --set anneal.n_paths=64",
        )
        p.add_argument("--out", default=None, help="results folder (default: results/NAME-TIME)")
        p.add_argument(
            "--overwrite", action="store_true", help="allow writing into a non-empty results folder"
        )
        p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    args = parser.parse_args(argv)
    try:
        if args.command == "anneal":
            out = run_anneal(args.config, args.set, args.out, args.overwrite, not args.no_progress)
        else:
            out = run_train(args.config, args.set, args.out, args.overwrite, not args.no_progress)
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"results: {out}")
    for name in ("action_levels.png", "estimates.png", "summary.txt"):
        if os.path.exists(os.path.join(out, name)):
            print(f"  {os.path.join(out, name)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
