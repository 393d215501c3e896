"""The public surface keeps its promises: documented with an example, in the API reference, typed.

For every name in the ``__all__`` of each public module:

- its docstring holds an example (``>>>`` or a fenced block); for module-level data, which has no
  runtime docstring, the attribute docstring Griffe reads (the string literal after the
  assignment) counts;
- it is in the API reference: the reference pages are built with the project's own mkdocs
  configuration and the name is in the generated inventory (``objects.inv``);
- a class says it lives in its public module (``__module__``), as httpx does, so tracebacks and
  ``repr`` show ``invariantkit.Invariant``, not a private path;
- a function (and a class's constructor and public methods) annotates every parameter and its
  return type.

``tests/typing/api_usage.py`` is checked with ``mypy --strict`` (decorated functions keep their
signatures) and also run, so it stays true at runtime.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import os
import runpy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from invariantkit.testing import capture_signals

ROOT = Path(__file__).resolve().parent.parent
USAGE = ROOT / "tests" / "typing" / "api_usage.py"

#: The public modules and their API reference page (``docs/api/<page>.md``).
PUBLIC_MODULES = {
    "invariantkit": "invariantkit",
    "invariantkit.sinks": "sinks",
    "invariantkit.testing": "testing",
    "invariantkit.billing": "billing",
    "invariantkit.alerts": "alerts",
    "invariantkit.sentry": "sentry",
    "invariantkit.integrations.asgi": "integrations",
    "invariantkit.integrations.wsgi": "integrations",
    "invariantkit.integrations.django": "integrations",
    "invariantkit.integrations.celery": "integrations",
}
#: Optional until their issues land; the others must exist.
NOT_YET = {"invariantkit.alerts", "invariantkit.sentry"}


def _existing_modules() -> list[str]:
    found = []
    for name in PUBLIC_MODULES:
        if importlib.util.find_spec(name) is not None:
            found.append(name)
        elif name not in NOT_YET:
            raise AssertionError(f"public module {name} is missing")
    return found


MODULES = _existing_modules()


def _public(module_name: str) -> list[tuple[str, str]]:
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", ())  # a module without one fails test_module_has_all
    return [(module_name, n) for n in names if not (n.startswith("__") and n.endswith("__"))]


PUBLIC = [pair for m in MODULES for pair in _public(m)]
IDS = [f"{m}.{n}" for m, n in PUBLIC]


def _get(module_name: str, name: str) -> Any:
    return getattr(importlib.import_module(module_name), name)


def _has_example(doc: str | None) -> bool:
    return doc is not None and (">>>" in doc or "```" in doc)


# --- docstrings --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def griffe_package() -> Any:
    """The package as Griffe (and so the API reference) reads it, statically."""
    import griffe

    return griffe.load("invariantkit", search_paths=[str(ROOT / "src")], resolve_aliases=True)


def _static_docstring(package: Any, module_name: str, name: str) -> str | None:
    path = f"{module_name}.{name}".removeprefix("invariantkit.").removeprefix("invariantkit")
    obj = package[path] if path else package
    docstring = obj.docstring
    return None if docstring is None else str(docstring.value)


@pytest.mark.parametrize(("module_name", "name"), PUBLIC, ids=IDS)
def test_public_name_has_docstring_with_example(
    module_name: str, name: str, griffe_package: Any
) -> None:
    """The name's docstring shows how to use it."""
    obj = _get(module_name, name)
    if inspect.isclass(obj) or inspect.isroutine(obj) or inspect.ismodule(obj):
        doc = obj.__doc__  # a class's own docstring, never an inherited one
    else:
        # Data has no docstring of its own at runtime (``obj.__doc__`` is its class's): read the
        # attribute docstring; a callable instance may also rely on what ``help()`` shows.
        doc = _static_docstring(griffe_package, module_name, name)
        if not doc and callable(obj):
            doc = obj.__doc__
    assert doc, f"{module_name}.{name} has no docstring"
    assert _has_example(doc), f"{module_name}.{name}: docstring has no example (>>> or ```)"


def test_has_example_detects_examples() -> None:
    """The example check accepts doctests and fenced blocks and rejects prose."""
    assert _has_example("Example:\n    >>> 1\n    1\n")
    assert _has_example("Use it:\n\n```python\nx = 1\n```\n")
    assert not _has_example("Does a thing.")
    assert not _has_example(None)


# --- API reference -----------------------------------------------------------------------------


def _reference_config(tmp: Path) -> Path:
    """mkdocs.yml reduced to the API reference pages of the modules that exist, absolute paths."""
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))
    docs = tmp / "docs"
    (docs / "api").mkdir(parents=True)
    pages = []
    for module_name in MODULES:
        page = f"api/{PUBLIC_MODULES[module_name]}.md"
        (docs / page).write_text((ROOT / "docs" / page).read_text(encoding="utf-8"))
        pages.append({module_name: page})
    config.update(
        docs_dir=str(docs),
        site_dir=str(tmp / "site"),
        nav=pages,
        strict=False,
        exclude_docs=None,
        validation=None,
        watch=[],
    )
    config = {k: v for k, v in config.items() if v is not None}
    for plugin in config["plugins"]:
        if isinstance(plugin, dict) and "mkdocstrings" in plugin:
            python = plugin["mkdocstrings"]["handlers"]["python"]
            python["paths"] = [str(ROOT / p) for p in python["paths"]]
            options = python["options"]
            options["extensions"] = [
                str(ROOT / e) if e.split(":")[0].endswith(".py") else e
                for e in options.get("extensions", [])
            ]
    path = tmp / "mkdocs.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def reference_inventory(tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """The identifiers the API reference documents (from the built ``objects.inv``)."""
    from mkdocstrings import Inventory

    tmp = tmp_path_factory.mktemp("api-reference")
    config = _reference_config(tmp)
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--quiet", "-f", str(config)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"building the API reference failed:\n{result.stderr}"
    with (tmp / "site" / "objects.inv").open("rb") as inventory:
        return set(Inventory.parse_sphinx(inventory))


@pytest.mark.parametrize(("module_name", "name"), PUBLIC, ids=IDS)
def test_public_name_is_in_api_reference(
    module_name: str, name: str, reference_inventory: set[str]
) -> None:
    """The API reference renders the name under its public path."""
    assert f"{module_name}.{name}" in reference_inventory, (
        f"{module_name}.{name} is not in the API reference (docs/api/"
        f"{PUBLIC_MODULES[module_name]}.md); a name without a docstring is not rendered"
    )


@pytest.mark.parametrize("module_name", MODULES)
def test_public_module_has_all(module_name: str) -> None:
    """Each public module lists its public names in ``__all__``, and each of them exists."""
    module = importlib.import_module(module_name)
    names = getattr(module, "__all__", None)
    assert names, f"{module_name} has no __all__"
    missing = [n for n in names if not hasattr(module, n)]
    assert not missing, f"{module_name}.__all__ names missing attributes: {missing}"


@pytest.mark.parametrize("module_name", MODULES)
def test_public_module_has_reference_page(module_name: str) -> None:
    """Each public module has its page, rendered with mkdocstrings, and the page is in the nav."""
    page = f"api/{PUBLIC_MODULES[module_name]}.md"
    assert f"::: {module_name}\n" in (ROOT / "docs" / page).read_text(encoding="utf-8")
    assert page in (ROOT / "mkdocs.yml").read_text(encoding="utf-8")


# --- public module names -----------------------------------------------------------------------


CLASSES = [(m, n) for m, n in PUBLIC if inspect.isclass(_get(m, n))]


@pytest.mark.parametrize(("module_name", "name"), CLASSES, ids=[f"{m}.{n}" for m, n in CLASSES])
def test_class_module_is_public(module_name: str, name: str) -> None:
    """A public class reports the public module it is imported from."""
    assert _get(module_name, name).__module__ == module_name


# --- annotations -------------------------------------------------------------------------------


def _unannotated(fn: Any, *, method: bool = False) -> list[str]:
    try:
        signature = inspect.signature(fn)
    except (TypeError, ValueError):
        return []
    missing = []
    for i, (pname, param) in enumerate(signature.parameters.items()):
        if method and i == 0:
            continue
        if param.annotation is inspect.Parameter.empty:
            missing.append(pname)
    if signature.return_annotation is inspect.Signature.empty:
        missing.append("return")
    return missing


def _own_public_methods(cls: type) -> list[tuple[str, Any]]:
    methods = []
    for attr, value in vars(cls).items():
        if attr.startswith("_") and attr != "__init__":
            continue
        function = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
        # Only what the class itself defines (not, e.g., the __init__ typing.Protocol injects).
        if inspect.isfunction(function) and function.__qualname__.startswith(
            f"{cls.__qualname__}."
        ):
            methods.append((attr, function))
    return methods


CALLABLES = [(m, n) for m, n in PUBLIC if callable(_get(m, n)) and not inspect.ismodule(_get(m, n))]


@pytest.mark.parametrize(("module_name", "name"), CALLABLES, ids=[f"{m}.{n}" for m, n in CALLABLES])
def test_public_callable_is_annotated(module_name: str, name: str) -> None:
    """Every parameter and the return type are annotated (mypy --strict holds users to it)."""
    obj = _get(module_name, name)
    problems: dict[str, list[str]] = {}
    if inspect.isclass(obj):
        if issubclass(obj, BaseException) and "__init__" not in vars(obj):
            return
        for attr, method in _own_public_methods(obj):
            missing = _unannotated(method, method=not isinstance(vars(obj)[attr], staticmethod))
            if missing:
                problems[attr] = missing
    else:
        missing = _unannotated(obj)
        if missing:
            problems[name] = missing
    assert not problems, f"{module_name}.{name}: unannotated {problems}"


def test_annotation_check_finds_gaps() -> None:
    """The annotation check reports a missing parameter and return annotation."""

    def untyped(a, b: int):  # type: ignore[no-untyped-def]
        return a

    assert _unannotated(untyped) == ["a", "return"]


# --- the typed usage file ----------------------------------------------------------------------


def test_usage_file_type_checks(pytestconfig: pytest.Config) -> None:
    """``mypy --strict`` accepts tests/typing/api_usage.py: the typing promises hold."""
    cache = (
        pytestconfig.cache.mkdir("mypy-api-usage") if getattr(pytestconfig, "cache", None) else None
    )
    command = [sys.executable, "-m", "mypy", "--strict", "--no-error-summary"]
    command += ["--config-file", str(ROOT / "pyproject.toml")]
    if cache is not None:
        command += ["--cache-dir", str(cache)]
    result = subprocess.run(
        [*command, str(USAGE)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, f"mypy --strict {USAGE.name}:\n{result.stdout}{result.stderr}"


def test_usage_file_runs() -> None:
    """The typed usage file is also true at runtime (under isolated real SDK pipelines)."""
    with capture_signals():
        namespace = runpy.run_path(str(USAGE), run_name="api_usage")
    assert namespace["checked"] is True
