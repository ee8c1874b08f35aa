"""The `deepest` command line: `deepest anneal|sweep|pamc|train CONFIG`.

It parses arguments, builds the experiment through [`deepest.experiments`][] and prints;
nothing in the library, tests (but the CLI's own), benchmarks or notebooks imports it.
"""

from ._main import main as main
