"""Checking experiment configurations (YAML) before any compute."""

import copy
import datetime
import os
from collections.abc import Iterable, Mapping
from typing import Any

from .._misc import did_you_mean


def check_keys(config: Mapping[str, Any], allowed: Iterable[str], where: str = "config") -> None:
    """Raise `ValueError` naming the first unknown key of `config` and the nearest valid one."""
    allowed = list(allowed)
    for key in config:
        if key not in allowed:
            hint = did_you_mean(key, allowed)
            raise ValueError(
                f"Unknown key {key!r} in {where}.{hint} Valid keys: {', '.join(sorted(allowed))}."
            )


def set_dotted(config: dict, assignment: str) -> None:
    """Apply one `--set a.b.c=value` override (the value is parsed as YAML) in place."""
    import yaml

    if "=" not in assignment:
        raise ValueError(f"--set expects key=value; got {assignment!r}.")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = config
    for i, key in enumerate(keys[:-1]):
        if not isinstance(node.get(key), dict):
            where = ".".join(keys[: i + 1])
            check_keys({key: None}, [k for k, v in node.items() if isinstance(v, dict)], where)
            raise ValueError(f"--set {dotted}: {where} is not a section.")
        node = node[key]
    check_keys({keys[-1]: None}, list(node), ".".join(keys[:-1]) or "config")
    node[keys[-1]] = yaml.safe_load(raw)


def merge(defaults: dict, config: dict, where: str) -> dict:
    """Defaults overlaid by `config`, checking every key; sections merge recursively."""
    check_keys(config, defaults, where)
    out = copy.deepcopy(defaults)
    for key, value in config.items():
        if isinstance(defaults[key], dict) and key not in (
            "params",
            "initial_params",
            "param_ranges",
            "bounds",
        ):
            if not isinstance(value, dict):
                raise ValueError(f"`{where}.{key}` must be a section (a mapping).")
            out[key] = merge(defaults[key], value, f"{where}.{key}")
        else:
            out[key] = value
    return out


def default_out(config_path: str) -> str:
    """`results/NAME-TIME`, the results folder of a run of `config_path` by default."""
    stem = os.path.splitext(os.path.basename(config_path))[0]
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    return os.path.join("results", f"{stem}-{stamp}")


def load_config(path: str, sets: Iterable[str], defaults: Mapping | None = None) -> dict:
    """The mapping in the YAML file `path`, with every `--set key=value` applied.

    With `defaults`, the file is first overlaid on them (checking its keys), so that
    `--set` can set any valid key, also one the file leaves at its default. A YAML syntax
    error is one line naming the file, line and column.
    """
    import yaml

    try:
        with open(path) as f:
            config = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: YAML syntax error: {problem}.") from None
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections.")
    if defaults is not None:
        config = merge(defaults, config, "config")
    for assignment in sets:
        set_dotted(config, assignment)
    return config


# -- checks of single values, each naming the key's dotted path -----------------------------
def _fail(key: str, what: str, value) -> ValueError:
    return ValueError(f"`{key}` must be {what}; got {value!r}.")


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value) -> bool:
    return (_is_int(value) or isinstance(value, float)) and value == value  # not NaN


def integer(key: str, value, low: int | None = None) -> int:
    """`value` as an int (≥ `low`), or an error naming `key`."""
    if not _is_int(value) or (low is not None and value < low):
        raise _fail(key, "an integer" + (f" ≥ {low}" if low is not None else ""), value)
    return value


def number(key: str, value, low: float | None = None, strict: bool = True) -> float:
    """`value` as a finite float (> `low`, or ≥ `low` with `strict=False`)."""
    if not _is_number(value) or abs(value) == float("inf"):
        raise _fail(key, "a finite number", value)
    if low is not None and (value <= low if strict else value < low):
        raise _fail(key, f"a number {'>' if strict else '≥'} {low:g}", value)
    return float(value)


def numbers(key: str, value, low: float | None = None, size: int | None = None) -> None:
    """A number or a list of numbers (of length `size`), each > `low`."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        number(key, item, low)
    if isinstance(value, list) and size is not None and len(value) != size:
        raise ValueError(f"`{key}` must be one number or {size} of them; got {len(value)}.")


def choice(key: str, value, options: Iterable[str]) -> str:
    """`value`, one of `options`, or an error with the nearest one."""
    options = list(options)
    if value not in options:
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        raise ValueError(
            f"`{key}` must be one of {', '.join(map(repr, options))}; got {value!r}.{hint}"
        )
    return value


def indices(key: str, value, size: int | None = None) -> list[int]:
    """A non-empty list of distinct non-negative integers (< `size`)."""
    if not isinstance(value, list) or not value:
        raise _fail(key, "a non-empty list of component indices", value)
    for i in value:
        integer(key, i, 0)
        if size is not None and i >= size:
            raise ValueError(f"`{key}` has index {i}, out of range [0, {size}).")
    repeated = sorted({i for i in value if value.count(i) > 1})
    if repeated:
        raise ValueError(f"`{key}` repeats the indices {repeated}.")
    return value


def interval(key: str, value) -> None:
    """A list [low, high] of numbers with low < high."""
    if not (isinstance(value, list) and len(value) == 2):
        raise _fail(key, "a list [low, high]", value)
    low, high = (number(key, v) for v in value)
    if not low < high:
        raise ValueError(f"`{key}` must have low < high; got {value}.")


def mapping(key: str, value) -> dict:
    if not isinstance(value, dict):
        raise _fail(key, "a mapping", value)
    return value


def differences(a: Mapping, b: Mapping, where: str = "") -> list[str]:
    """The dotted keys whose values differ between the configs `a` and `b`."""
    out = []
    for key in sorted(set(a) | set(b), key=str):
        dotted = f"{where}.{key}" if where else str(key)
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict):
            out += differences(va, vb, dotted)
        elif va != vb:
            out.append(dotted)
    return out
