"""The catalogue of stories: the harness finds scenarios here, never by importing them.

A story registers under a short name in the `kamleak.scenarios` entry-point
group (pyproject.toml); kamleak's own are there, and a third-party package
adds its own the same way:

    [project.entry-points."kamleak.scenarios"]
    gh9999 = "mypackage.gh9999_story"

The module registered is a story (`kamleak.scenarios.story.Story`): it names
its issue, variants and expected verdicts, and has `gate(stack, variant, ...)`.
"""

from __future__ import annotations

from functools import cache
from importlib.metadata import entry_points

from kamleak.harness.errors import UsageError

GROUP = "kamleak.scenarios"
DEFAULT = "gh4140"


@cache
def _entry_points() -> dict:
    return {ep.name: ep for ep in entry_points(group=GROUP)}


def names() -> list[str]:
    """The registered stories' names, sorted."""
    return sorted(_entry_points())


def scenario(name: str):
    """The story registered as NAME (`gh4503`), or a UsageError naming the choices."""
    eps = _entry_points()
    if name not in eps:
        fix = f"use one of {', '.join(sorted(eps))}" if eps else \
            "no story is registered: reinstall kamleak (pip install -e .)"
        raise UsageError(f"unknown scenario '{name}'", fix)
    return _load(name)


@cache
def _load(name: str):
    return _entry_points()[name].load()
