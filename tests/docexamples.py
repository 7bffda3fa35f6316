"""Docstring examples found by the public name of what they document.

Looking examples up by ``blpmodels.BLPResults.markups`` rather than by the module that happens
to define the method keeps the tests independent of the package's internal layout (a results
method may live in a role module the class composes).
"""

from __future__ import annotations

import doctest
import importlib
from typing import Any


def resolve(path: str) -> Any:
    """The object at a public dotted path: the longest importable module, then attributes."""
    parts = path.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target: Any = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for name in parts[split:]:
            target = getattr(target, name)
        return target
    raise ImportError(path)


def examples(path: str) -> list[doctest.DocTest]:
    """The doctests of one object's own docstring (not of its members), named by ``path``."""
    target = resolve(path)
    finder = doctest.DocTestFinder(recurse=False)
    module = importlib.import_module(getattr(target, "__module__", "blpmodels"))
    return [test for test in finder.find(target, path, module=module) if test.examples]
