"""Bad inputs (issue 22): each one is a clear error before any compute, or a documented warning.

Five groups of cases, each a module-level list: `CONFIG` (experiment files and `--set`
overrides), `DATA` (observations, CSV and `.npz` files, twin experiments), `MODEL` (models
and the problems built on them), `API` (the entry functions and constructors) and `CLI`
(`deepest …` argument lists). The sixth group, `FAULTS` (concurrent runs, kills, full disks,
locks, memory estimates), lives in tests/test_faults.py. A case is the bad input (a call, or
an argument list), what must come of it (an exception type or a warning category) and a
fragment of the message that names what is wrong (the key, the file:line, the argument, the
allowed range). One parametrised test per group runs its cases: each must raise (or warn)
within `QUICK` seconds, before any integration or annealing; a command must return 2 with
its `error: …` on stderr (one line, or one per bad key of a config; argparse's own errors
after its usage line), no traceback, and leave its folder as it found it (no results
folder, no `.incomplete`, an existing folder untouched).

The count of cases, per group and in all (FAULTS included once tests/test_faults.py defines
it), is asserted by `test_the_list_is_long_enough` and printed by it: run
`pytest tests/test_bad_inputs.py -k long_enough -s`.
"""

import dataclasses
import os
import pathlib
import re
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import jax.random as jr
import numpy as np
import optax
import pytest
import yaml

import deepest
import deepest.experiments as dx
from deepest.cli import main

from .helpers import ROOT

QUICK = 5.0
"""Seconds a case may take: a check, not a compile (compiling the annealing loop of the
smallest problem takes longer on CI's 2-core machine)."""


@dataclasses.dataclass(frozen=True)
class Case:
    """A bad input: `call(folder)` (a fresh folder for files it writes) must raise
    `expected` (or warn with it, a `Warning`) with `fragment` in the message."""

    id: str
    call: Callable[[pathlib.Path], object]
    expected: type[BaseException] | type[Warning]
    fragment: str
    seconds: float = QUICK


def check(case: Case, folder: pathlib.Path) -> None:
    start = time.perf_counter()
    if issubclass(case.expected, Warning):
        with pytest.warns(case.expected, match=re.escape(case.fragment)):
            case.call(folder)
    else:
        with pytest.raises(case.expected) as info:
            case.call(folder)
        assert case.fragment in str(info.value), str(info.value)
    assert time.perf_counter() - start < case.seconds


def write(folder: pathlib.Path, name: str, text: str | bytes) -> str:
    path = folder / name
    path.write_bytes(text) if isinstance(text, bytes) else path.write_text(text)
    return str(path)


def write_yaml(folder: pathlib.Path, name: str, config) -> str:
    return write(folder, name, yaml.safe_dump(config))


# ---------------------------------------------------------------------------------------
# CONFIG: experiment files, checked whole by `deepest.experiments.load`/`resolve`
# ---------------------------------------------------------------------------------------

TINY = {
    "model": {"name": "lorenz96", "dim": 8, "params": {"forcing": 8.17}},
    "data": {"twin": {"n_times": 11, "dt": 0.05, "observed": [0, 2, 4, 6], "noise": 0.4}},
    "problem": {"estimate": ["forcing"], "param_ranges": {"forcing": [6.0, 10.0]}},
    "anneal": {"rf0": 1e-3, "n_beta": 4, "n_paths": 2},
}
L12 = os.path.join(ROOT, "configs", "lorenz96_L12.yaml")
TRAIN = {"experiment": "twin_network", "data": {"n_validation": 2, "n_test": 2}}


def setting(id: str, override: str, fragment: str) -> Case:
    """An anneal config with one `--set` override."""
    return Case(id, lambda folder: dx.resolve(TINY, [override]), ValueError, fragment)


def file(id: str, text: str, fragment: str, expected=ValueError) -> Case:
    """A config file holding `text`."""
    return Case(id, lambda folder: dx.load(write(folder, "bad.yaml", text)), expected, fragment)


def sweep(id: str, spec: dict, fragment: str) -> Case:
    return Case(id, lambda folder: dx.resolve(spec, kind="sweep"), ValueError, fragment)


def train(id: str, changes: dict, fragment: str) -> Case:
    config = {**TRAIN, **changes}
    return Case(id, lambda folder: dx.resolve(config), ValueError, fragment)


def pamc_section(id: str, section: dict, fragment: str) -> Case:
    return Case(id, lambda folder: dx.resolve({**TINY, "pamc": section}), ValueError, fragment)


CONFIG = [
    # unknown keys, each with the nearest valid one
    setting(
        "unknown-section",
        "anneel.alpha=2",
        "Unknown key 'anneel' in config. Did you mean 'anneal'?",
    ),
    setting("unknown-key", "problem.estimat=[forcing]", "Did you mean 'estimate'?"),
    setting("unknown-twin-key", "data.twin.nosie=0.1", "Unknown key 'nosie' in config.data.twin."),
    setting("unknown-output-key", "output.save_beta=[1]", "Did you mean 'save_betas'?"),
    # wrong types
    setting(
        "text-for-number",
        "anneal.alpha=fast",
        "`anneal.alpha` must be a finite number; got 'fast'.",
    ),
    setting("float-for-integer", "model.dim=8.5", "`model.dim` must be an integer ≥ 1; got 8.5."),
    setting(
        "quoted-integer", "anneal.n_paths='4'", "`anneal.n_paths` must be an integer ≥ 1; got '4'."
    ),
    setting("bool-for-integer", "anneal.n_beta=true", "`anneal.n_beta` must be an integer"),
    setting("string-for-list", "problem.estimate=forcing", "`problem.estimate` must be a list"),
    setting("number-for-mapping", "model.params=3", "`model.params` must be a mapping; got 3."),
    setting(
        "number-for-section", "data.twin=5", "`data.twin` must be a section (a mapping); got 5."
    ),
    setting("section-replaced", "anneal=3", "`anneal` must be a section (a mapping); got 3."),
    # out of range
    setting("alpha-one", "anneal.alpha=1.0", "`anneal.alpha` must be greater than 1; got 1.0."),
    setting("alpha-below-one", "anneal.alpha=0.5", "`anneal.alpha` must be greater than 1"),
    setting("alpha-inf", "anneal.alpha=.inf", "`anneal.alpha` must be a finite number"),
    setting("n-paths-zero", "anneal.n_paths=0", "`anneal.n_paths` must be an integer ≥ 1; got 0."),
    setting("n-beta-zero", "anneal.n_beta=0", "`anneal.n_beta` must be a positive integer; got 0."),
    setting(
        "noise-negative",
        "data.twin.noise=-0.1",
        "`data.twin.noise` must be a number ≥ 0; got -0.1.",
    ),
    setting("dt-zero", "data.twin.dt=0", "`data.twin.dt` must be a number > 0; got 0"),
    setting(
        "n-times-one", "data.twin.n_times=1", "`data.twin.n_times` must be an integer ≥ 2; got 1."
    ),
    setting("seed-negative", "anneal.seed=-1", "`anneal.seed` must be an integer ≥ 0; got -1."),
    setting("rf0-negative", "anneal.rf0=-1.0", "`anneal.rf0` must be positive and finite"),
    setting(
        "rf0-wrong-length",
        "anneal.rf0=[1.0, 2.0]",
        "`anneal.rf0` must be one number or 8 of them; got 2.",
    ),
    setting("rm-zero", "problem.rm=0", "`problem.rm` must be a number > 0; got 0."),
    setting(
        "rm-wrong-length", "problem.rm=[1.0, 2.0]", "`problem.rm` must be one number or 4 of them"
    ),
    setting(
        "param-nan", "model.params.forcing=.nan", "`model.params.forcing` must be a finite number"
    ),
    setting(
        "ftol-negative", "anneal.ftol=-1e-3", "`anneal.ftol` must be a number ≥ 0; got -0.001."
    ),
    setting(
        "max-evaluations-zero",
        "anneal.max_evaluations=0",
        "`anneal.max_evaluations` must be an integer ≥ 1",
    ),
    setting(
        "checkpoint-every-zero",
        "output.checkpoint_every=0",
        "`output.checkpoint_every` must be a number > 0",
    ),
    setting(
        "horizon-negative",
        "output.forecast_horizon=-1",
        "`output.forecast_horizon` must be a number ≥ 0",
    ),
    setting("save-betas-negative", "output.save_betas=[-1]", "`output.save_betas` must be"),
    setting(
        "save-betas-past-n-beta",
        "output.save_betas=[4]",
        "`output.save_betas` has β 4, out of range [0, 4).",
    ),
    setting(
        "state-range-reversed",
        "problem.state_range=[5, 1]",
        "`problem.state_range` must have low < high; got [5.0, 1.0].",
    ),
    setting(
        "param-range-reversed",
        "problem.param_ranges.forcing=[10, 6]",
        "`problem.param_ranges.forcing` must have low < high",
    ),
    setting(
        "bounds-one-number",
        "problem.bounds.forcing=[1.0]",
        "`problem.bounds.forcing` must be a list [low, high]",
    ),
    setting(
        "steps-per-obs-zero",
        "problem.steps_per_obs=0",
        "`problem.steps_per_obs` must be an integer ≥ 1",
    ),
    setting(
        "observed-empty", "data.twin.observed=[]", "`data.twin.observed` must be a non-empty list"
    ),
    setting(
        "observed-repeated",
        "data.twin.observed=[0, 0]",
        "`data.twin.observed` repeats the indices [0].",
    ),
    setting(
        "observed-past-dim",
        "data.twin.observed=[0, 8]",
        "`data.twin.observed` has index 8, out of range [0, 8).",
    ),
    # unknown names
    setting("model-name", "model.name=lorenz69", "Did you mean 'lorenz96'?"),
    setting(
        "model-class-path",
        "model.name=deepest.models.Lorenz99",
        "`model.name`: cannot import 'deepest.models.Lorenz99'.",
    ),
    setting(
        "minimiser-name",
        "anneal.minimiser=bfgs",
        "`anneal.minimiser` must be one of 'lbfgs', 'levenberg_marquardt'",
    ),
    setting(
        "discretisation-name",
        "problem.discretisation=rk5",
        "`problem.discretisation` must be one of",
    ),
    setting(
        "dtype-name",
        "anneal.dtype=float16",
        "`anneal.dtype` must be one of 'float64', 'float32'; got 'float16'.",
    ),
    setting(
        "estimate-twice",
        "problem.estimate=[forcing, forcing]",
        "`problem.estimate`: `estimate` names a parameter twice",
    ),
    Case(
        "damping-zero",
        lambda folder: dx.resolve(
            TINY, ["anneal.minimiser=levenberg_marquardt", "anneal.damping=0"]
        ),
        ValueError,
        "`anneal.damping` must be positive; got 0",
    ),
    # conflicting settings
    Case(
        "old-and-new-key",
        lambda folder: dx.resolve(
            TINY, ["problem.discretization=trapezoid", "problem.discretisation=rk4"]
        ),
        ValueError,
        "Give `problem.discretisation` only; `problem.discretization` is its deprecated",
    ),
    Case(
        "data-file-missing",
        lambda folder: dx.resolve(TINY, [f"data.file={folder / 'none.csv'}"]),
        ValueError,
        "`data.file`: no such file",
    ),
    Case(
        "data-file-without-rm",
        lambda folder: dx.resolve(
            TINY, ["data.file=" + write(folder, "d.csv", "t,x0\n0,1\n1,2\n")]
        ),
        ValueError,
        "Set `problem.rm` (1/σ² of the data in `data.file`).",
    ),
    setting("no-noise-no-rm", "data.twin.noise=0", "`data.twin.noise` must be a number > 0; got 0"),
    Case(
        "kind-unknown",
        lambda folder: dx.resolve(TINY, kind="anealing"),
        ValueError,
        "kind must be one of ('anneal', 'pamc', 'cycle', 'train', 'sweep', 'notebook'); "
        "got 'anealing'.",
    ),
    # `--set` overrides that are not one
    setting(
        "set-not-an-assignment", "anneal.n_paths", "--set expects key=value; got 'anneal.n_paths'."
    ),
    setting(
        "set-into-a-value",
        "anneal.n_paths.x=1",
        "--set anneal.n_paths.x: anneal.n_paths is not a section.",
    ),
    setting(
        "set-not-yaml",
        "anneal.n_paths=[1,",
        "--set anneal.n_paths: the value '[1,' is not valid YAML",
    ),
    # files
    file(
        "yaml-syntax",
        "model:\n  dim: 8\n  params: {forcing: 8.17\n",
        "bad.yaml:4:1: YAML syntax error",
    ),
    file("yaml-tab", "model:\n\tdim: 8\n", "bad.yaml:2:1: YAML syntax error"),
    file("yaml-list", "- model\n- data\n", "bad.yaml: a config must be a mapping of sections."),
    file("yaml-empty", "", "bad.yaml: the config file is empty"),
    Case(
        "file-missing",
        lambda folder: dx.load(folder / "missing.yaml"),
        FileNotFoundError,
        "missing.yaml",
    ),
    Case(
        "shipped-config-bad-set",
        lambda folder: dx.load(L12, ["anneal.n_paths=-3"]),
        ValueError,
        "`anneal.n_paths` must be an integer ≥ 1; got -3.",
    ),
    # sweeps
    sweep(
        "sweep-grid-key",
        {"base": TINY, "grid": {"anneal.alfa": [2.0]}},
        "Unknown key 'anneal.alfa' in grid. Did you mean 'anneal.alpha'?",
    ),
    sweep(
        "sweep-zip-lengths",
        {
            "base": TINY,
            "grid": {"anneal.rf0": [1e-3, 1e-2], "data.twin.seed": [0]},
            "combine": "zip",
        },
        "`combine: zip` needs lists of one length; got [1, 2].",
    ),
    sweep(
        "sweep-grid-empty",
        {"base": TINY, "grid": {}},
        "`grid` must map dotted config keys to lists of values.",
    ),
    sweep(
        "sweep-grid-value-not-list",
        {"base": TINY, "grid": {"anneal.rf0": 1e-3}},
        "`grid.anneal.rf0` must be a non-empty list of values; got 0.001.",
    ),
    sweep(
        "sweep-unknown-key",
        {"base": TINY, "grd": {}},
        "Unknown key 'grd' in sweep. Did you mean 'grid'?",
    ),
    sweep(
        "sweep-combine",
        {"base": TINY, "grid": {"anneal.rf0": [1e-3]}, "combine": "cross"},
        "`combine` must be one of ('product', 'zip'); got 'cross'.",
    ),
    sweep(
        "sweep-no-base",
        {"grid": {"anneal.rf0": [1e-3]}},
        "`base` must name an anneal config file or be one",
    ),
    sweep(
        "sweep-shared-setting",
        {"base": TINY, "grid": {"anneal.n_paths": [2, 3]}},
        "`anneal.n_paths` must be the same at every point of a sweep.",
    ),
    sweep(
        "sweep-bad-point",
        {"base": TINY, "grid": {"anneal.alpha": [2.0, 0.5]}},
        "sweep point (anneal.alpha=0.5): `anneal.alpha` must be greater than 1",
    ),
    Case(
        "sweep-base-missing",
        lambda folder: dx.load(
            write_yaml(folder, "s.yaml", {"base": "nope.yaml", "grid": {"anneal.rf0": [1.0]}})
        ),
        FileNotFoundError,
        "nope.yaml",
    ),
    Case(
        "sweep-with-overrides",
        lambda folder: dx.resolve(
            {"base": TINY, "grid": {"anneal.rf0": [1e-3]}}, ["anneal.n_paths=3"], kind="sweep"
        ),
        ValueError,
        "A sweep takes no overrides",
    ),
    # train and pamc configs
    train(
        "train-widths-one",
        {"network": {"widths": [10]}},
        "`network.widths` must list N_0, …, N_L (at least two widths).",
    ),
    train(
        "train-learning-rate",
        {"backprop": {"learning_rate": 0}},
        "`backprop.learning_rate` must be a number > 0; got 0.",
    ),
    train(
        "train-activation",
        {"network": {"activation": "tanhh"}},
        "`network.activation` must be one of 'tanh', 'sigmoid', 'identity', 'relu'; got 'tanhh'.",
    ),
    train(
        "train-variant",
        {"data": {"variant": "author"}},
        "`data.variant` must be one of 'tanh', 'authors'; got 'author'. Did you mean 'authors'?",
    ),
    Case(
        "bar-images-size",
        lambda folder: dx.resolve({"experiment": "bar_images", "data": {"size": 4}}),
        ValueError,
        "`data.size` must be an odd integer ≥ 3 (a centre pixel); got 4.",
    ),
    Case(
        "bar-images-positions",
        lambda folder: dx.resolve({"experiment": "bar_images", "data": {"positions": "any"}}),
        ValueError,
        "`data.positions` must be one of 'centered', 'all'; got 'any'.",
    ),
    Case(
        "train-experiment-missing",
        lambda folder: dx.resolve({"data": {"n_train": 3}}, kind="train"),
        ValueError,
        "Set `experiment` to one of ('twin_network', 'bar_images', 'depth_resolution').",
    ),
    Case(
        "depth-resolution-depths",
        lambda folder: dx.resolve({"experiment": "depth_resolution", "network": {"depths": []}}),
        ValueError,
        "`network.depths` must be a list of positive depths L.",
    ),
    Case(
        "depth-resolution-input-range",
        lambda folder: dx.resolve(
            {"experiment": "depth_resolution", "data": {"input_range": [1.0, -1.0]}}
        ),
        ValueError,
        "`data.input_range` must have low < high",
    ),
    pamc_section(
        "pamc-n-samples", {"n_samples": 2}, "`pamc.n_samples` must be an integer ≥ 4; got 2."
    ),
    pamc_section(
        "pamc-betas-empty", {"betas": []}, "`pamc.betas` must be a list of β indices or null."
    ),
    pamc_section(
        "pamc-start",
        {"start": "minima"},
        "`pamc.start` must be one of 'anneal', 'draws'; got 'minima'.",
    ),
    # documented warnings: the former names of keys
    Case(
        "deprecated-key-discretization",
        lambda folder: dx.resolve(TINY, ["problem.discretization=trapezoid"]),
        DeprecationWarning,
        "The config key `problem.discretization` is deprecated; use `problem.discretisation`.",
    ),
    Case(
        "deprecated-key-max-steps",
        lambda folder: dx.resolve(TINY, ["anneal.max_steps=10"]),
        DeprecationWarning,
        "The config key `anneal.max_steps` is deprecated; use `anneal.max_evaluations`.",
    ),
]


@pytest.mark.parametrize("case", CONFIG, ids=lambda c: c.id)
def test_config(case, tmp_path):
    check(case, tmp_path)


def test_an_exponent_without_a_dot_is_a_number(tmp_path):
    # YAML 1.1 (PyYAML) reads `1e-8` as text, which a number's key would refuse; a config
    # reads it as YAML 1.2 does, in files and in `--set` alike.
    text = yaml.safe_dump(TINY) + "output:\n  checkpoint_every: 1e+3\n"
    config = dx.load(write(tmp_path, "c.yaml", text), ["anneal.ftol=1e-8", "anneal.rf0=2E-3"])
    assert config.anneal.ftol == 1e-8 and config.anneal.rf0 == 2e-3
    assert config.output.checkpoint_every == 1000.0
    # and an integer parameter is the float: a model's int field could not be estimated
    assert dx.resolve(TINY, ["model.params.forcing=8"]).model.params == {"forcing": 8.0}


# ---------------------------------------------------------------------------------------
# DATA: observations, their files, twin experiments (tests/test_strict_data.py has the CSV
# cells, rows and headers)
# ---------------------------------------------------------------------------------------

TIMES = np.linspace(0.0, 1.0, 5)
VALUES = np.zeros((5, 2))
OBSERVED = (0, 2)
KEY = jr.key(0)


def observations(id: str, fragment: str, *args, **kwargs) -> Case:
    """`deepest.Observations(TIMES, VALUES, OBSERVED)` with some arguments replaced."""
    arguments = dict(zip(("times", "values", "observed"), (TIMES, VALUES, OBSERVED)))
    arguments.update(zip(("times", "values", "observed"), args))
    arguments.update(kwargs)
    return Case(id, lambda folder: deepest.Observations(**arguments), ValueError, fragment)


def data_file(id: str, name: str, content, fragment: str) -> Case:
    """`deepest.Observations.load` of the file `name` holding `content` (text, bytes, or a
    dict of arrays written by `np.savez`)."""

    def call(folder):
        path = folder / name
        if isinstance(content, dict):
            with open(path, "wb") as f:
                np.savez(f, **content)
        else:
            write(folder, name, content)
        return deepest.Observations.load(path)

    return Case(id, call, ValueError, fragment)


def twin(id: str, fragment: str, **changes) -> Case:
    """`deepest.twin_experiment` of Lorenz-96 (D = 8) with some arguments replaced."""
    arguments = dict(
        model=deepest.models.Lorenz96(8.17), dim=8, n_times=5, dt=0.05, observed=[0, 2],
        noise=0.4, key=KEY,
    )  # fmt: skip
    arguments.update(changes)
    return Case(id, lambda folder: deepest.twin_experiment(**arguments), ValueError, fragment)


def integrate(id: str, fragment: str, x0=None, times=(0.0, 0.1, 0.2), **kwargs) -> Case:
    x0 = np.ones(8) if x0 is None else x0
    call = lambda folder: deepest.integrate(deepest.models.Lorenz96(), x0, times, **kwargs)
    return Case(id, call, ValueError, fragment)


DATA = [
    observations(
        "times-2d", "`times` must be 1-D with at least 2 entries; got (5, 1).", TIMES[:, None]
    ),
    observations(
        "times-one", "`times` must be 1-D with at least 2 entries; got (1,).", [0.0], [[1.0, 2.0]]
    ),
    observations(
        "times-nan",
        "`times` must be finite and strictly increasing.",
        [0.0, np.nan, 0.5, 0.75, 1.0],
    ),
    observations(
        "times-decreasing", "`times` must be finite and strictly increasing.", TIMES[::-1]
    ),
    observations(
        "times-repeated",
        "`times` must be finite and strictly increasing.",
        [0.0, 0.25, 0.25, 0.5, 1.0],
    ),
    observations(
        "times-text", "`times` must be an array of real numbers; got dtype <U1.", list("abcde")
    ),
    observations(
        "observed-none", "`observed` must name at least one component.", TIMES, VALUES[:, :0], ()
    ),
    observations(
        "observed-negative",
        "Observed indices must be non-negative; got (-1, 2).",
        TIMES,
        VALUES,
        (-1, 2),
    ),
    observations(
        "observed-repeated", "Observed indices must be distinct; got (2, 2).", TIMES, VALUES, (2, 2)
    ),
    observations(
        "observed-float",
        "`observed` must hold integer component indices; got (0, 1.5).",
        TIMES,
        VALUES,
        (0, 1.5),
    ),
    observations(
        "observed-text",
        "`observed` must hold integer component indices; got '3'.",
        TIMES,
        VALUES[:, :1],
        "3",
    ),
    observations(
        "values-shape",
        "`values` must have shape (n_times, n_observed) = (5, 2); got (5, 3).",
        TIMES,
        np.zeros((5, 3)),
    ),
    observations(
        "values-nan",
        "The measured `values` contain NaN or inf.",
        TIMES,
        np.where(np.eye(5, 2), np.nan, 0.0),
    ),
    observations(
        "values-inf", "The measured `values` contain NaN or inf.", TIMES, np.full((5, 2), np.inf)
    ),
    observations(
        "values-complex",
        "`values` must be an array of real numbers; got dtype complex128.",
        TIMES,
        VALUES + 1j,
    ),
    observations(
        "mask-shape", "`mask` must have shape (5, 2); got (5, 1).", mask=np.ones((5, 1), bool)
    ),
    observations("mask-hides-all", "`mask` hides every measurement.", mask=np.zeros((5, 2), bool)),
    observations(
        "truth-shape", "`truth` must have shape (n_times, dim); got (4, 3).", truth=np.zeros((4, 3))
    ),
    observations(
        "truth-too-narrow",
        "Observed index 2 is out of range for truth of dimension 2.",
        truth=np.zeros((5, 2)),
    ),
    observations(
        "noise-zero", "`noise` must be a positive scalar or one value per component.", noise=0.0
    ),
    observations(
        "noise-shape",
        "`noise` must be a positive scalar or one value per component.",
        noise=np.ones(3),
    ),
    # files (other than the CSV cells of tests/test_strict_data.py)
    data_file("csv-not-utf8", "d.csv", b"t,x0\n0,\xff\n", "d.csv: not a text (UTF-8) CSV file"),
    data_file(
        "csv-no-columns",
        "d.csv",
        "t\n0.0\n0.1\n",
        "d.csv: `observed` must name at least one component.",
    ),
    data_file(
        "csv-one-row",
        "d.csv",
        "t,x0\n0.0,1.0\n",
        "d.csv: `times` must be 1-D with at least 2 entries; got (1,).",
    ),
    data_file(
        "csv-repeated-time",
        "d.csv",
        "t,x0\n0.0,1.0\n0.0,2.0\n",
        "d.csv: `times` must be finite and strictly increasing.",
    ),
    data_file(
        "file-ending", "d.txt", "t,x0\n0,1\n1,2\n", "d.txt: observations are read from `.npz`"
    ),
    data_file(
        "npz-not-a-zip", "d.npz", "t,x0\n0,1\n1,2\n", "d.npz: not an `.npz` file of observations"
    ),
    data_file(
        "npz-without-values",
        "d.npz",
        {"times": TIMES, "observed": OBSERVED},
        "(as `Observations.save` writes): it lacks the arrays ['values'].",
    ),
    data_file(
        "npz-bad-times",
        "d.npz",
        {"times": TIMES[::-1], "values": VALUES, "observed": OBSERVED},
        "d.npz: `times` must be finite and strictly increasing.",
    ),
    Case(
        "npz-missing",
        lambda folder: deepest.Observations.load(folder / "none.npz"),
        FileNotFoundError,
        "none.npz",
    ),
    # twin experiments
    twin("twin-n-times-zero", "`n_times` must be an integer ≥ 2; got 0.", n_times=0),
    twin("twin-n-times-fraction", "`n_times` must be an integer ≥ 2; got 5.5.", n_times=5.5),
    twin("twin-dt-zero", "`dt` must be a finite number > 0; got 0.0.", dt=0.0),
    twin("twin-dt-nan", "`dt` must be a finite number > 0; got nan.", dt=float("nan")),
    twin("twin-noise-negative", "`noise` must be a finite number ≥ 0; got -0.4.", noise=-0.4),
    twin("twin-spinup-negative", "`spinup` must be a finite number ≥ 0; got -1.0.", spinup=-1.0),
    twin("twin-substeps-zero", "`substeps` must be an integer ≥ 1; got 0.", substeps=0),
    twin("twin-observed-empty", "`observed` must name at least one component.", observed=[]),
    twin(
        "twin-observed-past-dim",
        "Observed indices are out of range [0, 8): (0, 8).",
        observed=[0, 8],
    ),
    twin("twin-x0-shape", "`x0` must have shape (dim,) = (8,); got (3,).", x0=np.zeros(3)),
    twin(
        "twin-parameter-nan",
        "The model's parameter 'forcing' is not finite: nan.",
        model=deepest.models.Lorenz96(float("nan")),
    ),
    # integration
    integrate("integrate-uneven", "`times` must be equally spaced", times=(0.0, 0.1, 0.5)),
    integrate(
        "integrate-decreasing",
        "`times` must increase; times[1] = -0.1 follows times[0] = 0.0.",
        times=(0.0, -0.1, -0.2),
    ),
    integrate(
        "integrate-nan", "`times` must be finite; times[1] is nan.", times=(0.0, np.nan, 0.2)
    ),
    integrate(
        "integrate-x0-batch",
        "`x0` must be one state, of shape (dim,); got shape (2, 8).",
        x0=np.ones((2, 8)),
    ),
    integrate("integrate-substeps", "`substeps` must be an integer ≥ 1; got 0.", substeps=0),
]


@pytest.mark.parametrize("case", DATA, ids=lambda c: c.id)
def test_data(case, tmp_path):
    check(case, tmp_path)


# ---------------------------------------------------------------------------------------
# MODEL: models, and the problems built on them
# ---------------------------------------------------------------------------------------

# Observations of 8 components, 2 measured: built from numbers, no integration.
_rng = np.random.default_rng(0)
ASSIMILATION_DATA = deepest.Observations(
    np.linspace(0.0, 1.0, 6), _rng.normal(size=(6, 2)), OBSERVED, truth=_rng.normal(size=(6, 8))
)


LORENZ96 = deepest.models.Lorenz96()


def assimilation(id: str, fragment: str, model=LORENZ96, expected=ValueError, **kwargs):
    """`deepest.Assimilation(model, ASSIMILATION_DATA, rm=1, **kwargs)`."""
    arguments = {"data": ASSIMILATION_DATA, "rm": 1.0, **kwargs}
    return Case(id, lambda folder: deepest.Assimilation(model, **arguments), expected, fragment)


def _one_argument_model(x):
    return -x


def _raising_model(t, x):
    return x @ jnp.ones(3)


MODEL = [
    assimilation(
        "lorenz96-dim-3",
        "Lorenz96 needs at least 4 components; got dim=3.",
        data=deepest.Observations(TIMES, VALUES, OBSERVED),
        dim=3,
    ),
    assimilation(
        "lorenz63-dim-8", "Lorenz63 has exactly 3 components; got dim=8.", deepest.models.Lorenz63()
    ),
    assimilation(
        "wrong-shape",
        "for a state x of shape (8,); it returned shape (2,) and dtype float64.",
        lambda t, x: x[:2],
    ),
    assimilation(
        "integer-output", "it returned shape (8,) and dtype int", lambda t, x: jnp.zeros(8, int)
    ),
    assimilation(
        "model-raises",
        "The model failed when called as F(t, x) with x of shape (8,) and dtype float64: TypeError",
        _raising_model,
    ),
    assimilation(
        "one-argument",
        "F(t, x, params, u); _one_argument_model(x) takes 1 required positional argument.",
        _one_argument_model,
        TypeError,
    ),
    assimilation(
        "not-callable",
        "A model must be callable as F(t, x) or F(t, x, params); got 3.0.",
        3.0,
        TypeError,
    ),
    assimilation(
        "params-for-f-of-t-x",
        "A model called as F(t, x) takes no `params`",
        lambda t, x: -x,
        params={"a": 1.0},
    ),
    assimilation(
        "text-parameter", "The model failed when called as F(t, x)", deepest.models.Lorenz96("8")
    ),
    assimilation(
        "estimate-unknown",
        "parameter 'forcng'; the model's parameters are ['forcing']. Did you mean 'forcing'?",
        estimate=("forcng",),
    ),
    assimilation(
        "estimate-integer-field",
        "Cannot estimate 'forcing': the model holds it as the integer 8, not a parameter; "
        "give it as a float (8.0).",
        deepest.models.Lorenz96(8),
        estimate=("forcing",),
    ),
    assimilation(
        "estimate-twice",
        "`estimate` names a parameter twice: ('forcing', 'forcing').",
        estimate=("forcing", "forcing"),
    ),
    assimilation("rm-zero", "`rm` must be positive and finite; got 0.0.", rm=0.0),
    assimilation("rm-nan", "`rm` must be positive and finite; got nan.", rm=np.nan),
    assimilation(
        "rm-shape",
        "`rm` must be a scalar or one value per observed component (2); got shape (3,).",
        rm=np.ones(3),
    ),
    assimilation(
        "bounds-reversed",
        "`bounds['forcing']` must be (low, high) with low < high (±inf for a side without a "
        "bound); got (10.0, 6.0).",
        estimate=("forcing",),
        bounds={"forcing": (10.0, 6.0)},
    ),
    assimilation(
        "bounds-nan",
        "`bounds['forcing']` must be (low, high) with low < high (±inf for a side without a "
        "bound); got (nan, 6.0).",
        estimate=("forcing",),
        bounds={"forcing": (np.nan, 6.0)},
    ),
    assimilation(
        "state-bounds-reversed",
        "`state_bounds[1]` must be (low, high) with low < high (±inf for a side without a "
        "bound); got (1.0, 0.0).",
        state_bounds=[None, (1.0, 0.0)] + [None] * 6,
    ),
    assimilation(
        "state-bounds-length",
        "`state_bounds` must give one (low, high) or None per component (8), or "
        "{component: (low, high)}; got 2 entries.",
        state_bounds=[None, (0.0, 1.0)],
    ),
    assimilation(
        "inputs-to-an-undriven-model",
        "`inputs` were given, but the model takes none",
        inputs=deepest.Inputs(np.linspace(0.0, 10.0, 11), np.ones(11)),
    ),
    assimilation(
        "range-not-estimated",
        "`param_ranges` names 'forcing', which is not in `estimate`.",
        param_ranges={"forcing": (6.0, 10.0)},
    ),
    assimilation(
        "range-one-number",
        "`param_ranges['forcing']` must be a pair (low, high) of numbers; got 6.0.",
        estimate=("forcing",),
        param_ranges={"forcing": 6.0},
    ),
    assimilation(
        "range-three-numbers",
        "`param_ranges['forcing']` must be a pair (low, high) of numbers; got (1, 2, 3).",
        estimate=("forcing",),
        param_ranges={"forcing": (1, 2, 3)},
    ),
    assimilation(
        "state-range-reversed",
        "`state_range` must be (low, high), finite, with low < high; got (5.0, -5.0).",
        state_range=(5.0, -5.0),
    ),
    assimilation(
        "state-range-one-number",
        "`state_range` must be one (low, high) for every component, or one per component (8); "
        "got 5.0.",
        state_range=5.0,
    ),
    assimilation(
        "steps-per-obs-zero", "`steps_per_obs` must be a positive integer; got 0.", steps_per_obs=0
    ),
    assimilation(
        "steps-per-obs-fraction",
        "`steps_per_obs` must be a positive integer; got 1.5.",
        steps_per_obs=1.5,
    ),
    assimilation("dim-fraction", "`dim` must be an integer ≥ 1; got 8.5.", dim=8.5),
    assimilation(
        "dim-unknown",
        "Pass `dim`: the data carry no `truth` to read it from.",
        data=deepest.Observations(TIMES, VALUES, OBSERVED),
    ),
    assimilation(
        "observed-past-dim",
        "Observed index 2 is out of range for a model with dim=2 components.",
        lambda t, x: -x,
        dim=2,
    ),
    assimilation(
        "discretisation-name",
        "Unknown discretisation 'rk5'; use one of ('euler', 'trapezoid', 'rk4', 'simpson_hermite'",
        discretisation="rk5",
    ),
    assimilation(
        "uneven-times",
        "Assimilation needs equally spaced observation times: times[",
        data=deepest.Observations(
            [0.0, 0.1, 0.3, 0.4, 0.5], VALUES, OBSERVED, truth=np.zeros((5, 8))
        ),
    ),
    assimilation(
        "data-not-observations",
        "`data` must be deepest.Observations; got dict.",
        data={"times": TIMES},
        expected=TypeError,
    ),
    Case(
        "nan-everywhere",
        lambda folder: deepest.anneal(
            deepest.Assimilation(deepest.models.Lorenz96(np.nan), ASSIMILATION_DATA, 1.0),
            deepest.AnnealSchedule(1.0, 2.0, 2),
            2,
            KEY,
            progress=False,
        ),
        ValueError,
        "The action is not finite at any initial path: the model returns NaN or inf there",
        # found by the initial paths' actions, a small program (2 s here), before the
        # annealing loop is compiled (9 s here)
        seconds=2 * QUICK,
    ),
    # documented warnings: former names
    assimilation(
        "deprecated-discretization",
        "`discretization` is deprecated",
        expected=DeprecationWarning,
        discretization="trapezoid",
    ),
]


@pytest.mark.parametrize("case", MODEL, ids=lambda c: c.id)
def test_model(case, tmp_path):
    check(case, tmp_path)


# ---------------------------------------------------------------------------------------
# API: the entry functions and constructors
# ---------------------------------------------------------------------------------------

PROBLEM = deepest.Assimilation(
    deepest.models.Lorenz96(), ASSIMILATION_DATA, 1.0, estimate=("forcing",)
)
SCHEDULE = deepest.AnnealSchedule(1e-2, 2.0, 3)
NETWORK = deepest.LayeredNetwork([3, 4, 2], key=KEY)
INPUTS, TARGETS = _rng.normal(size=(5, 3)), _rng.normal(size=(5, 2))


def anneal(id: str, fragment: str, expected=ValueError, problem=PROBLEM, **kwargs) -> Case:
    """`deepest.anneal(problem, SCHEDULE, 2, KEY, **kwargs)` (no progress bar)."""
    arguments = {"schedule": SCHEDULE, "n_paths": 2, "key": KEY, "progress": False, **kwargs}
    return Case(id, lambda folder: deepest.anneal(problem, **arguments), expected, fragment)


def call(id: str, fn: Callable, fragment: str, expected=ValueError) -> Case:
    return Case(id, lambda folder: fn(), expected, fragment)


def _float64_without_x64():
    with jax.enable_x64(False):
        return deepest.anneal(PROBLEM, SCHEDULE, 2, KEY, dtype=jnp.float64, progress=False)


def _fit(**kwargs):
    arguments = dict(
        output_loss=lambda o, t: jnp.mean((o - t) ** 2), data=(INPUTS, TARGETS),
        optimiser=optax.adam(1e-3), steps=10, key=KEY, progress=False,
    )  # fmt: skip
    return deepest.fit(NETWORK, **{**arguments, **kwargs})


def _unknowns(n):
    return jax.tree.map(lambda a: np.zeros((n, *a.shape)), jax.eval_shape(PROBLEM.init, KEY))


API = [
    # deepest.anneal
    anneal("n-paths-zero", "`n_paths` must be a positive integer; got 0.", n_paths=0),
    anneal("n-paths-fraction", "`n_paths` must be a positive integer; got 1.5.", n_paths=1.5),
    anneal("save-betas-past-n-beta", "`save_betas` must lie in [0, 3); got (3,).", save_betas=[3]),
    anneal("save-betas-negative", "`save_betas` must lie in [0, 3); got (-1,).", save_betas=[-1]),
    anneal("dtype-integer", "`dtype` must be a floating-point type; got int32.", dtype=jnp.int32),
    call(
        "float64-without-x64",
        _float64_without_x64,
        "float64 was asked for but JAX's x64 mode is off.",
    ),
    anneal(
        "minimiser-name",
        "or deepest.LevenbergMarquardt(); got str.",
        TypeError,
        minimiser="lbfgs",
    ),
    anneal(
        "schedule-not-a-schedule",
        "`schedule` must be a deepest.AnnealSchedule.",
        TypeError,
        schedule=1e-2,
    ),
    anneal(
        "problem-not-a-problem",
        "`problem` must be a deepest.AbstractProblem",
        TypeError,
        problem="lorenz96",
    ),
    anneal(
        "no-key-no-init",
        "Pass a PRNG `key` for the initial paths, or the paths as `init`.",
        key=None,
    ),
    anneal(
        "checkpoint-every-zero",
        "`checkpoint_every` must be positive (seconds); got 0.",
        checkpoint_every=0,
    ),
    anneal(
        "checkpoint-every-negative",
        "`checkpoint_every` must be positive (seconds); got -5.",
        checkpoint_every=-5,
    ),
    Case(
        "resume-not-a-folder",
        lambda folder: deepest.anneal(
            PROBLEM, SCHEDULE, 2, KEY, progress=False, resume=folder / "none"
        ),
        ValueError,
        "none is not a folder.",
    ),
    anneal(
        "max-evaluations-zero",
        "`max_evaluations` must be a positive integer; got 0.",
        max_evaluations=0,
    ),
    anneal("ftol-negative", "`ftol` and `gtol` must be non-negative; got -1.0", ftol=-1.0),
    anneal(
        "init-structure",
        "`init` must have the structure of `problem.init(key)` with a leading n_paths axis",
        init={"path": np.zeros((2, 6, 8))},
    ),
    anneal(
        "init-shape",
        "`init['path']` must have shape (2, 6, 8) (n_paths, then the shape",
        init={"path": np.zeros((2, 6, 7)), "params": {"forcing": np.zeros(2)}},
    ),
    # deepest.AnnealSchedule
    call(
        "schedule-alpha-one",
        lambda: deepest.AnnealSchedule(1.0, 1.0, 3),
        "`alpha` must be greater than 1; got 1.0.",
    ),
    call(
        "schedule-alpha-nan",
        lambda: deepest.AnnealSchedule(1.0, float("nan"), 3),
        "`alpha` must be greater than 1; got nan.",
    ),
    call(
        "schedule-n-beta-zero",
        lambda: deepest.AnnealSchedule(1.0, 2.0, 0),
        "`n_beta` must be a positive integer; got 0.",
    ),
    call(
        "schedule-n-beta-fraction",
        lambda: deepest.AnnealSchedule(1.0, 2.0, 2.5),
        "`n_beta` must be a positive integer; got 2.5.",
    ),
    call(
        "schedule-rf0-zero",
        lambda: deepest.AnnealSchedule(0.0, 2.0, 3),
        "`rf0` must be positive and finite; got 0.0.",
    ),
    call(
        "schedule-rf0-nan",
        lambda: deepest.AnnealSchedule([1.0, np.nan], 2.0, 3),
        "`rf0` must be positive and finite; got [1.0, nan].",
    ),
    # deepest.sweep
    call(
        "sweep-empty",
        lambda: deepest.sweep([], SCHEDULE, 2, KEY),
        "`problems` is empty: a sweep needs at least one point.",
    ),
    call(
        "sweep-lengths",
        lambda: deepest.sweep([PROBLEM] * 2, [SCHEDULE] * 3, 2, KEY, progress=False),
        "one key per point (or one for all): 2 problems, 3 schedules, 2 keys.",
    ),
    # deepest.laplace
    call(
        "laplace-no-rf",
        lambda: deepest.laplace(PROBLEM, _unknowns(2)),
        "Give `rf`: bare unknowns carry no schedule to read it from.",
    ),
    call(
        "laplace-rf-negative",
        lambda: deepest.laplace(PROBLEM, _unknowns(2), rf=-1.0),
        "`rf` must be positive and finite; got -1.0.",
    ),
    call(
        "laplace-paths",
        lambda: deepest.laplace(PROBLEM, _unknowns(2), rf=1.0, paths=5),
        "`paths` must lie in [0, 2); got [5].",
    ),
    call(
        "laplace-unknowns",
        lambda: deepest.laplace(PROBLEM, {"path": np.zeros((2, 6, 8))}, rf=1.0),
        "These unknowns do not fit the problem",
    ),
    call(
        "laplace-problem",
        lambda: deepest.laplace("lorenz96", None),
        "`problem` must be a deepest.AbstractProblem; got str.",
        TypeError,
    ),
    # deepest.pamc
    call(
        "pamc-n-chains-zero",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 0, KEY),
        "`n_chains` must be an integer ≥ 1; got 0.",
    ),
    call(
        "pamc-kernel",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 2, KEY, kernel="mala"),
        "`kernel` must be one of ['hmc', 'nuts']; got 'mala'.",
    ),
    call(
        "pamc-betas-decreasing",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 2, KEY, betas=[2, 1]),
        "`betas` must be increasing β indices in [0, 3)",
    ),
    call(
        "pamc-save-betas-not-run",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 2, KEY, betas=[1, 2], save_betas=[0]),
        "`save_betas` names β's that are not run: [0].",
    ),
    call(
        "pamc-acceptance",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 2, KEY, target_acceptance=1.0),
        "`target_acceptance` must lie in (0, 1); got 1.0.",
    ),
    call(
        "pamc-n-samples",
        lambda: deepest.pamc(PROBLEM, SCHEDULE, 2, KEY, n_samples=2),
        "`n_samples` must be an integer ≥ 4; got 2.",
    ),
    # results that are not there
    Case(
        "load-result-missing-folder",
        lambda folder: deepest.load_result(folder / "none"),
        FileNotFoundError,
        "result.npz",
    ),
    Case(
        "load-pamc-empty-folder",
        lambda folder: deepest.PAMCResult.load(folder),
        FileNotFoundError,
        "pamc.npz",
    ),
    Case(
        "load-laplace-empty-folder",
        lambda folder: deepest.LaplaceResult.load(folder),
        FileNotFoundError,
        "laplace.npz",
    ),
    # minimisers
    call(
        "lbfgs-history",
        lambda: deepest.LBFGS(history_length=0),
        "`history_length` must be a positive integer; got 0.",
    ),
    call(
        "lbfgs-trials",
        lambda: deepest.LBFGS(max_trials=1.5),
        "`max_trials` must be a positive integer; got 1.5.",
    ),
    call(
        "lbfgs-memory-dtype",
        lambda: deepest.LBFGS(memory_dtype="int32"),
        "`memory_dtype` must be a floating-point dtype; got 'int32'.",
    ),
    call(
        "lbfgs-compact-false",
        lambda: deepest.LBFGS(compact=False),
        "LBFGS(compact=False), the optax two-loop L-BFGS of earlier versions, is no longer",
    ),
    call(
        "lbfgs-compact-deprecated",
        lambda: deepest.LBFGS(compact=True),
        "`LBFGS(compact=...)` is deprecated",
        DeprecationWarning,
    ),
    call(
        "lm-damping-zero",
        lambda: deepest.LevenbergMarquardt(damping=0.0),
        "`damping` must be positive; got 0.0.",
    ),
    call(
        "lm-damping-nan",
        lambda: deepest.LevenbergMarquardt(damping=float("nan")),
        "`damping` must be positive; got nan.",
    ),
    call(
        "lm-rejections",
        lambda: deepest.LevenbergMarquardt(max_rejections=0),
        "`max_rejections` must be a positive integer; got 0.",
    ),
    # networks, training, fit
    call(
        "network-one-width",
        lambda: deepest.LayeredNetwork([3], key=KEY),
        "`widths` must list N_0, …, N_L (L ≥ 1) positive widths; got [3].",
    ),
    call(
        "network-zero-width",
        lambda: deepest.LayeredNetwork([3, 0], key=KEY),
        "`widths[1]` must be a positive integer; got 0.",
    ),
    call(
        "network-no-key",
        lambda: deepest.LayeredNetwork([3, 4]),
        "A dense network needs a PRNG `key` for its initial weights.",
    ),
    call(
        "network-activations",
        lambda: deepest.LayeredNetwork([3, 4, 5], [jnp.tanh], key=KEY),
        "1 activations for 2 layers; give one function, or one per layer.",
    ),
    call(
        "network-activation-name",
        lambda: deepest.LayeredNetwork([3, 3], "tanh", key=KEY),
        "`activation` must be callable, e.g. jnp.tanh; got 'tanh'.",
        TypeError,
    ),
    call(
        "network-residual-step",
        lambda: deepest.LayeredNetwork([3, 3], key=KEY, residual_step=-1.0),
        "`residual_step` must be a positive step h = T/L; got -1.0.",
    ),
    call(
        "network-widths-and-layers",
        lambda: deepest.LayeredNetwork([3, 3], layers=[jnp.tanh]),
        "Give either `widths` (a dense network) or `layers`, not both.",
    ),
    call(
        "network-init",
        lambda: deepest.LayeredNetwork([3, 3], key=KEY, init="gaussian"),
        "`init` must be 'normal'",
    ),
    call(
        "recurrent-no-key",
        lambda: deepest.RecurrentNetwork(2, 3, 1),
        "A dense network needs a PRNG `key` for its initial weights.",
    ),
    call(
        "training-input-width",
        lambda: deepest.training(NETWORK, INPUTS[:, :2], TARGETS, 1.0),
        "The inputs have width 2, which the network's input layer does not take",
    ),
    call(
        "training-nan",
        lambda: deepest.training(NETWORK, np.where(INPUTS > 1, np.nan, INPUTS), TARGETS, 1.0),
        "`inputs` contains NaN or infinite values",
    ),
    call(
        "training-no-pairs",
        lambda: deepest.training(NETWORK, INPUTS[:0], TARGETS[:0], 1.0),
        "There are no training pairs (M = 0); give at least one.",
    ),
    call(
        "training-rows",
        lambda: deepest.training(NETWORK, INPUTS, TARGETS[:4], 1.0),
        "5 inputs but 4 targets; give one target per input.",
    ),
    call(
        "training-state-noise",
        lambda: deepest.training(NETWORK, INPUTS, TARGETS, 1.0, state_noise=-1.0),
        "`state_noise` must be non-negative; got -1.0.",
    ),
    call(
        "training-weight-init",
        lambda: deepest.training(NETWORK, INPUTS, TARGETS, 1.0, weight_init="zero"),
        "`weight_init` must be 'resample', 'network' or a function key -> network; got 'zero'.",
    ),
    call("fit-steps", lambda: _fit(steps=-1), "`steps` must be non-negative; got -1."),
    call(
        "fit-optimiser",
        lambda: _fit(optimiser="adam"),
        "`optimiser` must be an optax GradientTransformation; got 'adam'.",
        TypeError,
    ),
    call(
        "fit-batch-size",
        lambda: _fit(batch_size=50),
        "`batch_size` must lie between 1 and the number of samples M = 5; got 50.",
    ),
    call(
        "fit-validation-every",
        lambda: _fit(validation=(INPUTS, TARGETS), validation_every=0),
        "`validation_every` must be ≥ 1; got 0.",
    ),
    call(
        "twin-generator-variant",
        lambda: deepest.twin_generator(KEY, "author"),
        "Unknown twin `variant` 'author'; use one of ('tanh', 'authors').",
    ),
    call(
        "bar-images-size",
        lambda: deepest.bar_images(10, KEY, size=4),
        "`size` must be an odd integer ≥ 3 (a centre pixel); got 4.",
    ),
    call(
        "flow-map-horizon",
        lambda: deepest.FlowMap(2, KEY, horizon=-1.0),
        "`horizon` must be positive; got -1.0.",
    ),
]


@pytest.mark.parametrize("case", API, ids=lambda c: c.id)
def test_api(case, tmp_path):
    check(case, tmp_path)


# ---------------------------------------------------------------------------------------
# CLI: `deepest …` argument lists, run in-process
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Command:
    """`deepest ARGV` (`{tmp}` in an argument: the test's folder, where `setup` wrote its
    files and `tiny.yaml` is TINY) must fail with one `error: …` line holding `fragment`
    (`lines` lines where every bad key of a config is reported), or with `usage`: the
    argparse usage and its `deepest …: error: …` line."""

    id: str
    argv: tuple[str, ...]
    fragment: str
    setup: Callable[[pathlib.Path], None] | None = None
    lines: int = 1
    usage: bool = False


def _old_results(folder):
    """A finished run's results folder."""
    (folder / "out").mkdir()
    write_yaml(folder / "out", "config.yaml", TINY)
    write(folder / "out", "summary.txt", "the old run's summary\n")


def _interrupted(folder):
    """A killed run's folder: its `.incomplete` sibling holds a checkpoint."""
    (folder / "out.incomplete").mkdir()
    write_yaml(folder / "out.incomplete", "config.yaml", TINY)
    write(folder / "out.incomplete", deepest.annealing.CHECKPOINT, b"not read")


def _sweep_file(folder):
    write_yaml(folder, "sweep.yaml", {"base": "tiny.yaml", "grid": {"anneal.rf0": [1e-3]}})


ANNEAL = ("anneal", "{tmp}/tiny.yaml", "--out", "{tmp}/out", "--no-progress")

CLI = [
    Command(
        "config-missing",
        ("anneal", "{tmp}/missing.yaml", "--out", "{tmp}/out"),
        "No such file or directory: '{tmp}/missing.yaml'",
    ),
    Command(
        "pamc-config-missing", ("pamc", "{tmp}/missing.yaml", "--out", "{tmp}/out"), "missing.yaml"
    ),
    Command(
        "set-unknown-key",
        (*ANNEAL, "--set", "problem.rn=1"),
        "Unknown key 'rn' in config.problem. Did you mean 'rm'?",
    ),
    Command(
        "set-not-yaml",
        (*ANNEAL, "--set", "anneal.n_paths=[1,"),
        "--set anneal.n_paths: the value '[1,' is not valid YAML",
    ),
    Command(
        "set-no-value",
        (*ANNEAL, "--set", "anneal.n_paths"),
        "--set expects key=value; got 'anneal.n_paths'.",
    ),
    Command(
        "set-out-of-range",
        (*ANNEAL, "--set", "anneal.alpha=0.5"),
        "`anneal.alpha` must be greater than 1; got 0.5.",
    ),
    Command(
        "set-data-file",
        (*ANNEAL, "--set", "data.file={tmp}/none.csv"),
        "`data.file`: no such file: '{tmp}/none.csv'.",
    ),
    Command(
        "yaml-syntax",
        ("anneal", "{tmp}/bad.yaml", "--out", "{tmp}/out"),
        "bad.yaml:2:1: YAML syntax error",
        lambda f: write(f, "bad.yaml", "model:\n\tdim: 8\n"),
    ),
    Command(
        "yaml-empty",
        ("anneal", "{tmp}/empty.yaml", "--out", "{tmp}/out"),
        "empty.yaml: the config file is empty",
        lambda f: write(f, "empty.yaml", ""),
    ),
    Command(
        "two-bad-keys",
        (*ANNEAL, "--set", "anneal.n_paths=0", "--set", "data.twin.dt=-1.0"),
        "`anneal.n_paths` must be an integer ≥ 1; got 0.",
        lines=2,
    ),
    Command(
        "anneal-of-a-sweep",
        ("anneal", "{tmp}/sweep.yaml", "--out", "{tmp}/out"),
        "Unknown key 'base' in config.",
        _sweep_file,
        lines=2,
    ),
    Command(
        "sweep-of-a-config",
        ("sweep", "{tmp}/tiny.yaml", "--out", "{tmp}/out"),
        "Unknown key 'anneal' in sweep. Valid keys: base, combine, grid.",
    ),
    Command(
        "train-of-a-config",
        ("train", "{tmp}/tiny.yaml", "--out", "{tmp}/out"),
        "Set `experiment` to one of ('twin_network', 'bar_images', 'depth_resolution').",
    ),
    Command(
        "pamc-set",
        ("pamc", "{tmp}/tiny.yaml", "--out", "{tmp}/out", "--set", "pamc.n_chains=0"),
        "`pamc.n_chains` must be an integer ≥ 1; got 0.",
    ),
    Command(
        "resume-no-checkpoint",
        ("anneal", "--resume", "{tmp}/out"),
        "--resume {tmp}/out: no checkpoint there nor in {tmp}/out.incomplete",
        _old_results,
    ),
    Command(
        "resume-missing-folder",
        ("sweep", "--resume", "{tmp}/gone"),
        "--resume {tmp}/gone: no interrupted sweep there nor in {tmp}/gone.incomplete",
    ),
    Command(
        "resume-other-settings",
        ("anneal", "{tmp}/tiny.yaml", "--resume", "{tmp}/out", "--set", "anneal.n_paths=3"),
        "the run there had other settings of anneal.n_paths; resume it with its own config",
        _interrupted,
    ),
    Command(
        "out-not-empty",
        ANNEAL,
        "{tmp}/out exists and is not empty; choose another --out or pass --overwrite.",
        _old_results,
    ),
    Command(
        "out-interrupted",
        ANNEAL,
        "{tmp}/out.incomplete holds an interrupted run: continue it with `--resume {tmp}/out`",
        _interrupted,
    ),
    Command(
        "process-id-alone",
        (*ANNEAL, "--process-id", "0"),
        "Give --coordinator, --num-processes and --process-id together.",
    ),
    Command(
        "coordinator-no-port",
        (*ANNEAL, "--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"),
        "--coordinator must be HOST:PORT; got 'localhost'.",
    ),
    Command(
        "num-processes-zero",
        (*ANNEAL, "--coordinator", "localhost:1234", "--num-processes", "0", "--process-id", "0"),
        "--num-processes must be at least 1; got 0.",
    ),
    Command(
        "process-id-out-of-range",
        (*ANNEAL, "--coordinator", "localhost:1234", "--num-processes", "2", "--process-id", "2"),
        "--process-id must lie in [0, 2) for --num-processes 2; got 2.",
    ),
    Command(
        "out-is-a-file",
        ("anneal", "{tmp}/tiny.yaml", "--out", "{tmp}/afile", "--no-progress"),
        "--out {tmp}/afile is a file, not a folder; choose another --out.",
        lambda f: write(f, "afile", "kept"),
    ),
    Command(
        "out-under-a-file",
        ("anneal", "{tmp}/tiny.yaml", "--out", "{tmp}/afile/out", "--no-progress"),
        "--out {tmp}/afile/out: {tmp}/afile is a file, not a folder.",
        lambda f: write(f, "afile", "kept"),
    ),
    Command(
        "pamc-resume-nothing",
        ("pamc", "--resume", "{tmp}/gone"),
        "--resume {tmp}/gone: no interrupted pamc in {tmp}/gone.incomplete",
    ),
    Command(
        "train-resume-nothing",
        ("train", "--resume", "{tmp}/out"),
        "--resume {tmp}/out: no interrupted train in {tmp}/out.incomplete",
    ),
    Command(
        "train-set-experiment",
        ("train", "{tmp}/train.yaml", "--set", "experiment=bar_images", "--out", "{tmp}/out"),
        "`experiment` cannot be changed by an override; edit the config file.",
        lambda f: write_yaml(f, "train.yaml", TRAIN),
    ),
    # argparse's own errors: the usage, then `deepest …: error: …`
    Command(
        "sweep-with-set",
        ("sweep", "{tmp}/sweep.yaml", "--set", "anneal.n_paths=3"),
        "deepest: error: sweep takes no --set",
        _sweep_file,
        usage=True,
    ),
    Command(
        "anneal-without-config",
        ("anneal", "--out", "{tmp}/out"),
        "deepest: error: anneal needs a CONFIG file (or --resume DIR)",
        usage=True,
    ),
    Command(
        "process-id-not-a-number",
        (*ANNEAL, "--process-id", "first"),
        "argument --process-id: invalid int value: 'first'",
        usage=True,
    ),
    Command(
        "unknown-command",
        ("anealing", "{tmp}/tiny.yaml"),
        "argument command: invalid choice: 'anealing'",
        usage=True,
    ),
]


def _contents(folder: pathlib.Path) -> dict[str, bytes | None]:
    """Every path under `folder`, with its bytes (None for a folder)."""
    return {
        str(p.relative_to(folder)): (None if p.is_dir() else p.read_bytes())
        for p in sorted(folder.rglob("*"))
    }


@pytest.mark.parametrize("case", CLI, ids=lambda c: c.id)
def test_cli(case, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a default results/ folder would go
    write_yaml(tmp_path, "tiny.yaml", TINY)
    if case.setup is not None:
        case.setup(tmp_path)
    before = _contents(tmp_path)
    argv = [a.replace("{tmp}", str(tmp_path)) for a in case.argv]
    fragment = case.fragment.replace("{tmp}", str(tmp_path))
    start = time.perf_counter()
    if case.usage:
        with pytest.raises(SystemExit) as info:
            main(argv)
        code = info.value.code
    else:
        code = main(argv)
    assert time.perf_counter() - start < QUICK
    err = capsys.readouterr().err
    assert code == 2
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    if case.usage:
        assert lines[0].startswith("usage: deepest") and fragment in lines[-1]
    else:
        assert lines[0].startswith("error: ") and len(lines) == case.lines, err
        assert fragment in err, err
    # nothing written, nothing lost: no results folder, no `.incomplete`, old files intact
    assert _contents(tmp_path) == before


def test_the_list_is_long_enough():
    """Issue 22 asks for at least 100 bad inputs and faults; the five groups here hold at
    least 90 of them (tests/test_faults.py adds FAULTS)."""
    counts = {"CONFIG": len(CONFIG), "DATA": len(DATA), "MODEL": len(MODEL)}
    counts.update(API=len(API), CLI=len(CLI))
    try:
        from .test_faults import FAULTS
    except ImportError:  # not written yet
        FAULTS = []
    counts["FAULTS"] = len(FAULTS)
    print("bad inputs and faults: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
    print(f"total: {sum(counts.values())}")
    assert sum(v for k, v in counts.items() if k != "FAULTS") >= 90
    for group in (CONFIG, DATA, MODEL, API, CLI):  # each case its own test id
        assert len({c.id for c in group}) == len(group)
