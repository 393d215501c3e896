"""A Griffe extension for the API reference: read a docstring's ``Example:`` section as examples.

Google style says ``Examples:``; Griffe reads the singular ``Example:`` as an admonition whose body
is Markdown, so ``>>>`` lines would render as nested quotes and their output as links. Our
docstrings use both spellings; this maps the singular to the plural before Griffe parses them.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.MULTILINE)


class ExampleSections(griffe.Extension):
    """Rewrite ``Example:`` section headers to ``Examples:`` in every loaded docstring."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        docstring = obj.docstring
        if docstring is not None and "Example:" in docstring.value:
            docstring.value = _SINGULAR.sub(r"\1Examples:", docstring.value)
