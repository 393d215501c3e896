"""The examples in the docstrings and in the documentation run, so they cannot rot.

Docstrings: every ``>>>`` example of every module of ``invariantkit`` is one test, run with
``doctest`` (ELLIPSIS and NORMALIZE_WHITESPACE) inside ``capture_signals()``, so an example neither
touches the network nor leaks configuration, declarations or metrics into the next one.

Documentation pages (``docs/**/*.md``): the fenced ``python`` blocks of a page run in order, in one
namespace (a page may build on its earlier blocks), inside one ``capture_signals()``; ``pycon``
blocks (``>>>`` sessions) are checked as doctests in that same namespace. To keep a block out of the
run (it needs a server, a real DSN, or shows a fragment), put ``<!-- skip-example -->`` on the line
before its fence: it is still compiled, so it must be valid Python. A block that includes a file with
a snippet line (``--8<--``) is left to the tests of the included file. Fences may be indented (inside
content tabs or admonitions).
"""

from __future__ import annotations

import copy
import doctest
import importlib
import io
import pkgutil
import re
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

import invariantkit
from invariantkit.testing import capture_signals

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
SKIP_MARKER = "<!-- skip-example -->"
OPTIONFLAGS = doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE
#: Reporting only: after a failing example, the rest of that docstring usually fails with it.
REPORT = doctest.REPORT_ONLY_FIRST_FAILURE
RUN_LANGUAGES = {"python", "py", "python3"}
DOCTEST_LANGUAGES = {"pycon"}

_OPEN = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})\s*(?P<info>[^`\n]*)$")


# --- docstrings --------------------------------------------------------------------------------


def _module_names() -> list[str]:
    names = [invariantkit.__name__]
    for info in pkgutil.walk_packages(invariantkit.__path__, prefix="invariantkit."):
        names.append(info.name)
    return sorted(names)


def _docstring_examples() -> list[doctest.DocTest]:
    finder = doctest.DocTestFinder(exclude_empty=True)
    tests: list[doctest.DocTest] = []
    for name in _module_names():
        module = importlib.import_module(name)
        tests.extend(t for t in finder.find(module) if t.examples)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _docstring_examples()


def _where(test: doctest.DocTest) -> str:
    path = Path(test.filename or "?")
    if path.is_relative_to(ROOT):
        path = path.relative_to(ROOT)
    return f"{path}:{(test.lineno or 0) + 1}"


def _run_doctest(test: doctest.DocTest) -> str | None:
    """Run ``test`` on a copy of its globals; return the failure report, or None."""
    test = copy.copy(test)
    test.globs = dict(test.globs)
    out = io.StringIO()
    runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS | REPORT)
    with capture_signals():
        result = runner.run(test, out=out.write)
    return out.getvalue() if result.failed else None


def test_docstring_examples_are_found() -> None:
    """The doctest collection works: the package docstring and ``configure`` have examples."""
    names = {t.name for t in DOCTESTS}
    assert "invariantkit" in names
    assert "invariantkit._config.configure" in names


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example(test: doctest.DocTest) -> None:
    """The docstring's ``>>>`` example runs and prints what it shows."""
    failure = _run_doctest(test)
    if failure is not None:
        pytest.fail(f"docstring example at {_where(test)} failed:\n{failure}", pytrace=False)


# --- documentation pages -----------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    """One fenced code block of a Markdown page."""

    path: Path
    line: int  # 1-based line of the first line of code
    language: str
    info: str
    code: str
    skip: bool

    @property
    def where(self) -> str:
        return f"{self.path.relative_to(ROOT)}:{self.line}"


def code_blocks(path: Path) -> list[Block]:
    """The fenced code blocks of the Markdown file ``path``, dedented, in order."""
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    previous = ""
    i = 0
    while i < len(lines):
        opening = _OPEN.match(lines[i])
        if opening is None:
            if lines[i].strip():
                previous = lines[i].strip()
            i += 1
            continue
        indent, fence, info = opening["indent"], opening["fence"], opening["info"].strip()
        closing = re.compile(rf"^{re.escape(indent)}{re.escape(fence[0])}{{{len(fence)},}}\s*$")
        body: list[str] = []
        j = i + 1
        while j < len(lines) and not closing.match(lines[j]):
            body.append(lines[j])
            j += 1
        language = info.split()[0].lstrip(".").lower() if info else ""
        code = textwrap.dedent("\n".join(body)) + "\n"
        blocks.append(Block(path, i + 2, language, info, code, previous == SKIP_MARKER))
        previous = ""
        i = j + 1
    return blocks


def _pages() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


def _page_id(path: Path) -> str:
    return str(path.relative_to(DOCS))


def _run_block(block: Block, namespace: dict[str, object]) -> None:
    if block.language in DOCTEST_LANGUAGES:
        test = doctest.DocTestParser().get_doctest(
            block.code, namespace, block.where, str(block.path), block.line - 1
        )
        out = io.StringIO()
        runner = doctest.DocTestRunner(optionflags=OPTIONFLAGS | REPORT)
        result = runner.run(test, out=out.write, clear_globs=False)
        if result.failed:
            pytest.fail(f"example at {block.where} failed:\n{out.getvalue()}", pytrace=False)
        return
    # Padding keeps line numbers in tracebacks equal to the page's.
    code = compile("\n" * (block.line - 1) + block.code, str(block.path), "exec")
    if block.skip:
        return
    exec(code, namespace)  # running the documentation's own examples


@pytest.mark.parametrize("page", _pages(), ids=_page_id)
def test_page_examples(page: Path) -> None:
    """Every runnable ``python``/``pycon`` block of the page runs without error, in order."""
    blocks = [
        b
        for b in code_blocks(page)
        if b.language in RUN_LANGUAGES | DOCTEST_LANGUAGES and "--8<--" not in b.code
    ]
    if not blocks:
        return
    namespace: dict[str, object] = {"__name__": f"docs_{page.stem.replace('-', '_')}"}
    # Classes and dataclasses defined by a block look their module up in sys.modules.
    module = type(sys)(str(namespace["__name__"]))
    module.__dict__.update(namespace)
    namespace = module.__dict__
    sys.modules[module.__name__] = module
    try:
        with capture_signals():
            for block in blocks:
                _run_block(block, namespace)
    finally:
        del sys.modules[module.__name__]


# --- the extractor itself ----------------------------------------------------------------------


def test_code_blocks_extractor(tmp_path: Path) -> None:
    """Indented fences, the skip marker, languages and line numbers are read as documented."""
    page = tmp_path / "page.md"
    page.write_text(
        textwrap.dedent(
            """\
            # Title

            ```python
            x = 1
            ```

            <!-- skip-example -->
            ```python title="app.py"
            connect("postgres://...")
            ```

            === "Tab"

                ```pycon
                >>> 1 + 1
                2
                ```

            ````markdown
            ```python
            not a block of its own
            ```
            ````
            """
        ),
        encoding="utf-8",
    )
    blocks = code_blocks(page)
    assert [(b.language, b.line, b.skip) for b in blocks] == [
        ("python", 4, False),
        ("python", 9, True),
        ("pycon", 15, False),
        ("markdown", 20, False),
    ]
    assert blocks[1].info == 'python title="app.py"'
    assert blocks[2].code == ">>> 1 + 1\n2\n"
