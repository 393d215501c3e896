"""Test infrastructure: real Debian servers and in-process HTTP receivers.

Import as ``support.servers`` and ``support.receivers`` (``tests/`` is on ``sys.path``
because it holds the root ``conftest.py`` and has no ``__init__.py``).
"""
