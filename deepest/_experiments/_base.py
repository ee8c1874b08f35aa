"""Reading experiment files: YAML, `key=value` overrides, validation by pydantic.

Every message names the key's dotted path; an unknown key or name gets the nearest valid
one; a YAML syntax error names the file, line and column. A config is validated whole
(every error reported) before anything is computed.
"""

import inspect
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import pydantic

from .._misc import did_you_mean

Section = TypeVar("Section", bound="ConfigSection")


class ConfigSection(pydantic.BaseModel):
    """A section of an experiment config: every key known, values checked, no NaN/inf."""

    model_config = pydantic.ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, validate_default=False
    )

    def __getitem__(self, key: str):
        """A key read as from the YAML mapping: `config["anneal"]["n_paths"]`."""
        if key not in type(self).model_fields:
            raise KeyError(key)
        return getattr(self, key)


def renamed_keys(values: Any, section: str, **old_to_new: str) -> Any:
    """The raw mapping `values` of a config section with its deprecated keys `old=new`
    renamed, each with a `DeprecationWarning` (for a `mode="before"` model validator); both
    names at once is an error naming them."""
    if not isinstance(values, dict):
        return values
    for old, new in old_to_new.items():
        if old in values:
            if new in values:
                raise ValueError(
                    f"Give `{section}.{new}` only; `{section}.{old}` is its deprecated former name."
                )
            warnings.warn(
                f"The config key `{section}.{old}` is deprecated; use `{section}.{new}`.",
                DeprecationWarning,
                stacklevel=2,
            )
            values = {(new if k == old else k): v for k, v in values.items()}
    return values


def default_of(fn: Callable, name: str) -> Any:
    """The default of the argument `name` of `fn` (a function or an `eqx.Module`), read from
    its signature so that a config's default is the library's."""
    parameter = inspect.signature(fn).parameters[name]
    if parameter.default is inspect.Parameter.empty:
        raise TypeError(f"{fn.__name__}({name}=...) has no default.")
    return parameter.default


def _yaml_loader():
    """PyYAML's safe loader, reading `1e-3` as a float as YAML 1.2 does (YAML 1.1 wants a
    dot, `1.0e-3`, and reads `1e-3` as text, which a number's key would then refuse)."""
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"),
    )
    return Loader


def load_yaml(text):
    """The YAML document `text` (a string or file), `1e-3` read as a float."""
    import yaml

    return yaml.load(text, Loader=_yaml_loader())  # a SafeLoader: no arbitrary objects


def read_yaml(path: str) -> dict:
    """The mapping in the YAML file `path`; a syntax error is one line with file:line:column,
    an empty file an error naming it."""
    import yaml

    try:
        with open(path) as f:
            config = load_yaml(f)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else path
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(f"{where}: YAML syntax error: {problem}.") from None
    if config is None:
        raise ValueError(f"{path}: the config file is empty; a config is a mapping of sections.")
    if not isinstance(config, dict):
        raise ValueError(f"{path}: a config must be a mapping of sections.")
    return config


def set_dotted(config: dict, assignment: str) -> None:
    """Apply one `a.b.c=value` override (the value parsed as YAML) to the mapping `config`
    in place; the key is checked when the config is validated."""
    import yaml

    if "=" not in assignment:
        raise ValueError(f"--set expects key=value; got {assignment!r}.")
    dotted, raw = assignment.split("=", 1)
    keys = dotted.strip().split(".")
    node = config
    for i, key in enumerate(keys[:-1]):
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ValueError(f"--set {dotted}: {'.'.join(keys[: i + 1])} is not a section.")
        node = child
    try:
        value = load_yaml(raw)
    except yaml.YAMLError as e:
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ValueError(
            f"--set {dotted}: the value {raw!r} is not valid YAML: {problem}."
        ) from None
    node[keys[-1]] = value


def _dotted(loc: Iterable) -> str:
    """The dotted key of a location (list positions left out: they name no key)."""
    return ".".join(str(part) for part in loc if not isinstance(part, int))


def _message(error: Mapping, model: type[pydantic.BaseModel]) -> str:
    """One pydantic error as a sentence naming the dotted key, with a hint where one helps."""
    loc, kind, value = tuple(error["loc"]), error["type"], error.get("input")
    key = _dotted(loc)
    ctx = error.get("ctx", {})
    if kind == "extra_forbidden":
        allowed = _fields_at(model, loc[:-1])
        where = _dotted(("config", *loc[:-1]))
        return (
            f"Unknown key {loc[-1]!r} in {where}.{did_you_mean(loc[-1], allowed)} "
            f"Valid keys: {', '.join(sorted(allowed))}."
        )
    if kind == "value_error":
        text = str(ctx.get("error", error["msg"]))
        return text if "`" in text or not key else f"`{key}`: {text}"
    if kind == "missing":
        return f"Set `{key}`."
    if kind == "literal_error":
        options = re.findall(r"'([^']*)'", ctx.get("expected", ""))
        hint = did_you_mean(value, options) if isinstance(value, str) else ""
        return f"`{key}` must be one of {', '.join(map(repr, options))}; got {value!r}.{hint}"
    field = _field_at(model, loc)
    number = _number_word(field, value)
    if kind in _BOUNDS:
        name, sign = _BOUNDS[kind]
        return f"`{key}` must be {number} {sign} {ctx[name]:g}; got {value!r}."
    if kind in ("int_type", "int_from_float", "int_parsing", "float_type", "float_parsing"):
        bounds = [
            f" {sign} {getattr(m, name):g}"
            for m in (field.metadata if field is not None else [])
            for name, sign in _BOUNDS.values()
            if hasattr(m, name)
        ]
        what = "an integer" if kind.startswith("int") else "a finite number"
        return f"`{key}` must be {what}{''.join(bounds)}; got {value!r}."
    what = {
        "finite_number": "a finite number",
        "bool_type": "true or false",
        "string_type": "a string",
        "list_type": "a list",
        "dict_type": "a mapping",
        "model_type": "a section (a mapping)",
        "model_attributes_type": "a section (a mapping)",
        "too_short": "longer",
        "too_long": "shorter",
    }.get(kind)
    if what is None:
        return f"`{key}`: {error['msg']}; got {value!r}."
    return f"`{key}` must be {what}; got {value!r}."


_BOUNDS = {
    "greater_than": ("gt", ">"),
    "greater_than_equal": ("ge", "≥"),
    "less_than": ("lt", "<"),
    "less_than_equal": ("le", "≤"),
}


def _field_at(model: type[pydantic.BaseModel], loc: tuple):
    """The field of the config class `model` at `loc` (None inside a list or mapping)."""
    field = None
    for part in loc:
        if field is not None:
            model = field.annotation
        if not (isinstance(model, type) and issubclass(model, pydantic.BaseModel)):
            return None
        field = model.model_fields.get(part) if isinstance(part, str) else None
        if field is None:
            return None
    return field


def _number_word(field, value) -> str:
    """ "an integer" for an int field (or an int in a list), else "a number"."""
    annotation = field.annotation if field is not None else type(value)
    return "an integer" if annotation in (int, int | None) else "a number"


def _fields_at(model: type[pydantic.BaseModel], loc: tuple) -> list[str]:
    """The keys a config section at `loc` accepts."""
    for part in loc:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        annotation = field.annotation if field is not None else None
        if not (isinstance(annotation, type) and issubclass(annotation, pydantic.BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def validate(model: type[Section], config: Mapping, context: Mapping | None = None) -> Section:
    """`config` checked against the config class `model`; a `ValueError` lists every bad key."""
    try:
        return model.model_validate(dict(config), context=context)
    except pydantic.ValidationError as e:
        lines = list(dict.fromkeys(_message(err, model) for err in e.errors()))
        raise ValueError("\n".join(lines)) from None


def library_check(section: str, names: Iterable[str], build: Callable):
    """`build()`, its `ValueError` (a library class checking its own arguments) re-raised
    with every `` `name` `` it mentions as `` `section.name` ``."""
    try:
        return build()
    except ValueError as e:
        text = str(e)
        for name in names:
            text = text.replace(f"`{name}`", f"`{section}.{name}`")
        raise ValueError(text) from None


def interval(key: str, value) -> tuple[float, float]:
    """A pair [low, high] with low < high."""
    if not (isinstance(value, (list, tuple)) and len(value) == 2) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value
    ):
        raise ValueError(f"`{key}` must be a list [low, high]; got {value!r}.")
    low, high = (float(v) for v in value)
    if not low < high:
        raise ValueError(f"`{key}` must have low < high; got {list(value)}.")
    return low, high


def numbers(key: str, value, low: float | None = None, size: int | None = None):
    """A finite number or a list of them (of length `size`), each > `low`."""
    items = value if isinstance(value, list) else [value]
    for item in items:
        ok = isinstance(item, (int, float)) and not isinstance(item, bool)
        if not ok or item != item or abs(item) == float("inf"):
            raise ValueError(f"`{key}` must be a finite number; got {item!r}.")
        if low is not None and not item > low:
            raise ValueError(f"`{key}` must be a number > {low:g}; got {item!r}.")
    if isinstance(value, list) and size is not None and len(value) != size:
        raise ValueError(f"`{key}` must be one number or {size} of them; got {len(value)}.")
    return value


def beta_indices(key: str, value: list[int], n_beta: int) -> None:
    """Every β index in `value` lies in [0, n_beta)."""
    for b in value:
        if b >= n_beta:
            raise ValueError(f"`{key}` has β {b}, out of range [0, {n_beta}).")


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
