"""Checking experiment configurations (YAML) before any compute."""

import difflib
from collections.abc import Iterable, Mapping
from typing import Any


def check_keys(config: Mapping[str, Any], allowed: Iterable[str], where: str = "config") -> None:
    """Raise `ValueError` naming the first unknown key of `config` and the nearest valid one."""
    allowed = list(allowed)
    for key in config:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.5)
            hint = f" Did you mean {close[0]!r}?" if close else ""
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
