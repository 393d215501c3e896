"""The examples of docs/testing.md run as a user's test suite would: each titled block
(```python title="test_renewal.py"```) is written to its file and pytest runs them in a fresh
interpreter, where the plugin loads through its entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

PAGE = Path(__file__).resolve().parent.parent / "docs" / "testing.md"
FENCE = re.compile(
    r'^```(?P<lang>\w+) title="(?P<title>[^"]+)"\n(?P<body>.*?)^```$', re.MULTILINE | re.DOTALL
)
SKIP_MARKER = "<!-- skip-example -->"


def titled_blocks() -> dict[str, str]:
    """``{file name: code}`` of every titled block of the page."""
    text = PAGE.read_text(encoding="utf-8")
    return {m["title"]: m["body"] for m in FENCE.finditer(text)}


def test_every_python_block_is_a_titled_file() -> None:
    """No Python example escapes this test: each is a file of the example project, and is kept
    out of the generic page runner (it needs the other files)."""
    text = PAGE.read_text(encoding="utf-8")
    python_fences = re.findall(r"^```python.*$", text, re.MULTILINE)
    titled = [f for f in python_fences if 'title="' in f]
    assert python_fences == titled
    for match in FENCE.finditer(text):
        if match["lang"] == "python":
            before = text[: match.start()].rstrip().splitlines()[-1]
            assert before == SKIP_MARKER, f"{match['title']} needs {SKIP_MARKER} before it"


def test_page_examples_pass(pytester: pytest.Pytester) -> None:
    """The example project of the page passes, strictly (warnings are errors), with the
    page's own pytest configuration (sink errors fail tests)."""
    blocks = titled_blocks()
    assert {"billing_app.py", "pyproject.toml", "test_renewal.py", "test_async.py"} <= set(blocks)
    for name, code in blocks.items():
        (pytester.path / name).write_text(code, encoding="utf-8")
    expected = sum(
        len(re.findall(r"^(?:async )?def test_", code, re.MULTILINE))
        for name, code in blocks.items()
        if name.startswith("test_")
    )
    result = pytester.runpytest_subprocess(
        "-p", "no:cacheprovider", "-W", "error", "-o", "asyncio_default_fixture_loop_scope=function"
    )
    result.assert_outcomes(passed=expected, failed=0, errors=0)
    assert expected >= 8
