"""The error tree drawn in rdsrecorder/errors.py's docstring is the one the package defines: every
public RdsRecorderError subclass, under its parent, and nothing else."""

from __future__ import annotations

import importlib
import pkgutil
import re

import rdsrecorder
from rdsrecorder import errors


def defined() -> dict[str, str]:
    """Each public error class of the package -> the name of its parent."""
    for info in pkgutil.walk_packages(rdsrecorder.__path__, "rdsrecorder."):
        if info.name != "rdsrecorder.__main__":
            importlib.import_module(info.name)
    found: dict[str, str] = {}
    todo = [errors.RdsRecorderError]
    while todo:
        cls = todo.pop()
        for sub in cls.__subclasses__():
            if sub.__module__.startswith("rdsrecorder.") and not sub.__name__.startswith("_"):
                found[sub.__name__] = cls.__name__
                todo.append(sub)
    return found


def drawn() -> dict[str, str]:
    """The docstring's tree: class -> parent, from the depth of each line."""
    doc = errors.__doc__ or ""
    parents: list[str] = []
    found: dict[str, str] = {}
    for line in doc.splitlines():
        match = re.match(r"^    ((?:[│ ]   )*)(?:[├└]── )?([A-Z]\w*Error)\b", line)
        if not match:
            continue
        depth = len(match.group(1)) // 4 + (1 if "──" in line else 0)
        del parents[depth:]
        if parents:
            found[match.group(2)] = parents[-1]
        parents.append(match.group(2))
    return found


def test_the_docstring_draws_the_error_classes_that_exist() -> None:
    tree = drawn()
    assert tree, "no tree found in the docstring"
    assert tree == defined()
