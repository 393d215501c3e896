"""Driving the ``invariantkit`` command in-process on a user's module (``tests/test_cli.py`` and
``tests/test_check_cli.py``)."""

from __future__ import annotations

import contextlib
import sys
import textwrap
import uuid
from typing import TYPE_CHECKING

from invariantkit.cli import main

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    import pytest


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """``invariantkit *args`` in this process: the exit code, stdout and stderr."""
    code = main(list(args))
    out, err = capsys.readouterr()
    return code, out, err


@contextlib.contextmanager
def module_writer(directory: Path, prefix: str) -> Iterator[Callable[[str], str]]:
    """A function that writes (dedented) source as a module ``<prefix>_<unique>.py`` into
    ``directory`` and returns its name; the modules are forgotten (``sys.modules``) on exit."""
    names: list[str] = []

    def write(source: str) -> str:
        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        (directory / f"{name}.py").write_text(textwrap.dedent(source))
        names.append(name)
        return name

    try:
        yield write
    finally:
        for name in names:
            sys.modules.pop(name, None)
