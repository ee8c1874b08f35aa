"""Every ```python snippet of README.md and docs/**/*.md runs.

A file's snippets run in order in one namespace (a later snippet uses an earlier one's
names), in a temporary working folder holding a copy of `configs/`, as one test per file.
Two HTML comments, invisible on GitHub and on the site, go on the line before a fence:

- `<!-- skip: why -->` leaves the snippet out (a fragment, or it needs a GPU);
- `<!-- smoke: OLD -> NEW; OLD2 -> NEW2 -->` runs it with each OLD replaced by its NEW (a
  smaller size, so that the page's snippets take seconds); each OLD must occur in it. For a
  call whose compile alone would take most of the page's budget, `f( -> _check_call(f)(`
  binds the call's arguments to `f`'s signature (a renamed or missing argument fails)
  without calling it.

The notebooks are run by `make test` (nbmake), not here.
"""

import ast
import dataclasses
import inspect
import linecache
import pathlib
import re
import shutil

import jax
import pytest

from .helpers import ROOT

_ROOT = pathlib.Path(ROOT)
_FENCE = re.compile(r"^(?P<indent> {0,3})(?P<fence>`{3,}|~{3,})\s*(?P<info>.*)$")
_MARKER = re.compile(r"^\s*<!--\s*(?P<kind>skip|smoke)\b(?P<rest>.*?)-->\s*$")


@dataclasses.dataclass(frozen=True)
class _Block:
    info: str  # the fence's info string: "python", "" (untagged), "yaml", ...
    line: int  # 1-based line number of the block's first line of code
    end: int  # 1-based line number of the closing fence
    code: str
    markers: tuple[tuple[str, str, int], ...]  # (kind, text after the kind, line number)


def _blocks(text: str) -> list[_Block]:
    """The fenced code blocks of a Markdown text, with the markers just above each."""
    lines = text.splitlines()
    blocks = []
    i = 0
    while i < len(lines):
        match = _FENCE.match(lines[i])
        if match is None:
            i += 1
            continue
        fence, indent = match["fence"], len(match["indent"])
        close = re.compile(rf"^ {{0,3}}{fence[0]}{{{len(fence)},}}\s*$")
        end = i + 1
        while end < len(lines) and close.match(lines[end]) is None:
            end += 1
        markers = []
        above = i - 1
        while above >= 0 and (lines[above].strip() == "" or _MARKER.match(lines[above])):
            marker = _MARKER.match(lines[above])
            if marker is not None:
                markers.append((marker["kind"], marker["rest"], above + 1))
            above -= 1
        code = "\n".join(
            line[indent:] if line[:indent].isspace() else line for line in lines[i + 1 : end]
        )
        info = match["info"].strip()
        blocks.append(_Block(info, i + 2, end + 1, code, tuple(reversed(markers))))
        i = end + 1
    return blocks


def _markdown_files() -> list[str]:
    files = [_ROOT / "README.md", *sorted((_ROOT / "docs").rglob("*.md"))]
    return [path.relative_to(_ROOT).as_posix() for path in files]


def _is_python(block: _Block) -> bool:
    return block.info.split(maxsplit=1)[:1] == ["python"]


_FILES_WITH_SNIPPETS = [
    name
    for name in _markdown_files()
    if any(_is_python(b) for b in _blocks((_ROOT / name).read_text(encoding="utf-8")))
]


def _check_call(fn):
    def check(*args, **kwargs):
        inspect.signature(fn).bind(*args, **kwargs)

    return check


def _prepare(name: str, block: _Block) -> str | None:
    """The code to run for `block` (its smoke substitutions made), or None to skip it."""
    code = block.code
    for kind, rest, line in block.markers:
        where = f"{name}:{line}"
        if not rest.startswith(":") or not rest[1:].strip():
            raise ValueError(
                f"{where}: write `<!-- {kind}: ... -->`, with a reason or substitutions."
            )
        if kind == "skip":
            return None
        for pair in rest[1:].split(";"):
            old, arrow, new = pair.partition("->")
            old, new = old.strip(), new.strip()
            if not arrow or not old:
                raise ValueError(
                    f"{where}: a smoke substitution is `OLD -> NEW`; got {pair.strip()!r}."
                )
            if old not in code:
                raise ValueError(
                    f"{where}: the smoke substitution's {old!r} is not in the snippet."
                )
            code = code.replace(old, new)
    return code


def test_markdown_files_with_snippets_are_found():
    # A regression in the parser would otherwise leave every page untested.
    assert "README.md" in _FILES_WITH_SNIPPETS
    assert "docs/science/annealing.md" in _FILES_WITH_SNIPPETS


def test_block_parser_reads_markers_and_line_numbers():
    text = "\n".join(
        [
            "intro",
            "",
            "<!-- smoke: n=16 -> n=2 -->",
            "```python",
            "n=16",
            "print(n)",
            "```",
            "",
            "<!-- skip: a fragment -->",
            "```python",
            "...",
            "```",
        ]
    )
    first, second = _blocks(text)
    assert (first.info, first.line, first.end, first.code) == ("python", 5, 7, "n=16\nprint(n)")
    assert _prepare("x.md", first) == "n=2\nprint(n)"
    assert second.line == 11 and _prepare("x.md", second) is None
    with pytest.raises(ValueError, match="x.md:3: the smoke substitution's 'n=16' is not"):
        _prepare("x.md", dataclasses.replace(first, code="n=32"))
    with pytest.raises(ValueError, match="x.md:9: write `<!-- skip: ... -->`"):
        _prepare("x.md", dataclasses.replace(second, markers=(("skip", "", 9),)))


def test_check_call_binds_without_calling():
    calls = []

    def fn(a, *, b=1):
        calls.append(a)

    _check_call(fn)(0, b=2)
    with pytest.raises(TypeError, match="'c'"):
        _check_call(fn)(0, c=2)
    with pytest.raises(TypeError, match="'a'"):
        _check_call(fn)(b=2)
    assert calls == []


@pytest.mark.parametrize("name", _markdown_files())
def test_no_untagged_python(name):
    """A Python snippet that is untagged or indented would not be run: tag it ```python."""
    text = (_ROOT / name).read_text(encoding="utf-8")
    blocks = _blocks(text)
    untagged = [b for b in blocks if b.info.split(maxsplit=1)[:1] in ([], ["py"], ["python3"])]
    candidates = [(b.line, b.code) for b in untagged]
    fenced = {n for b in blocks for n in range(b.line - 1, b.end + 1)}  # 1-based
    # Indented code blocks: runs of lines indented by 4 spaces after a blank line, outside
    # fences.
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        if (
            i + 1 not in fenced
            and lines[i].startswith("    ")
            and (i == 0 or lines[i - 1].strip() == "")
        ):
            start = i
            while (
                i < len(lines)
                and i + 1 not in fenced
                and (lines[i].startswith("    ") or lines[i].strip() == "")
            ):
                i += 1
            candidates.append((start + 1, "\n".join(line[4:] for line in lines[start:i])))
        i += 1
    for line, code in candidates:
        try:
            ast.parse(code)
        except SyntaxError:
            continue
        assert "deepest" not in code and "jnp." not in code, (
            f"{name}:{line}: this block is Python; fence it as ```python so that "
            "tests/test_docs.py runs it."
        )


@pytest.mark.parametrize("name", _FILES_WITH_SNIPPETS)
def test_snippets_run(name, tmp_path, monkeypatch):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shutil.copytree(_ROOT / "configs", tmp_path / "configs")
    monkeypatch.chdir(tmp_path)
    text = (_ROOT / name).read_text(encoding="utf-8")
    shown = text.splitlines(keepends=True)
    snippets = []
    for block in _blocks(text):
        if _is_python(block):
            code = _prepare(name, block)
            if code is not None:
                snippets.append((block.line, code))
                # What a traceback shows for the snippet's lines: the code as run.
                for k, line in enumerate(code.splitlines()):
                    shown[block.line - 1 + k] = line + "\n"
    # The snippets' code objects are named after the Markdown file, so a traceback gives
    # the file and line of the failing statement (the entry stays for pytest's report).
    filename = f"<{name}>"
    linecache.cache[filename] = (len(text), None, shown, filename)
    namespace = {"__name__": "__main__", "_check_call": _check_call}
    try:
        # Users' code runs with JAX's default promotion rules, not the tests' strict ones.
        with jax.numpy_dtype_promotion("standard"), jax.numpy_rank_promotion("allow"):
            for line, code in snippets:
                compiled = compile("\n" * (line - 1) + code, filename, "exec")
                try:
                    exec(compiled, namespace)
                except Exception as error:
                    raise AssertionError(
                        f"the ```python snippet at {name}:{line} failed: "
                        f"{type(error).__name__}: {error}"
                    ) from error
    finally:
        plt.close("all")
