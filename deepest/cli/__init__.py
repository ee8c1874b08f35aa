"""The `deepest` command line: `deepest anneal|sweep|pamc|train CONFIG`.

The library never imports this package; it builds problems from config files through the
public API only.
"""

from ._anneal import build_anneal as build_anneal, resolve_anneal_config as resolve_anneal_config
from ._config import load_config as load_config
from ._main import main as main
from ._sweep import resolve_sweep as resolve_sweep, run_sweep as run_sweep
from ._train import (
    TRAIN_DEFAULTS as TRAIN_DEFAULTS,
    build_data as build_data,
    mean_baseline as mean_baseline,
    network_factory as network_factory,
    resolve_train_config as resolve_train_config,
    rf_scale as rf_scale,
    run_annealing as run_annealing,
    run_backprop as run_backprop,
)
from ._uncertainty import (
    PAMC_DEFAULTS as PAMC_DEFAULTS,
    resolve_pamc_config as resolve_pamc_config,
    run_pamc as run_pamc,
)
