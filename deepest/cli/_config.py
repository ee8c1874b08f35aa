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


def out_dir(out: str | None, config_path: str, overwrite: bool) -> str:
    if out is None:
        stem = os.path.splitext(os.path.basename(config_path))[0]
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        out = os.path.join("results", f"{stem}-{stamp}")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise FileExistsError(
            f"{out} exists and is not empty; choose another --out or pass --overwrite."
        )
    os.makedirs(out, exist_ok=True)
    return out


def load_config(path: str, sets: list[str]) -> dict:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f) or {}
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections.")
    for assignment in sets:
        set_dotted(config, assignment)
    return config
