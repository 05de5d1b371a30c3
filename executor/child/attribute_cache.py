"""Fills CPython's attribute cache in a zygote for the names its children look up on modules.

Every ``module.name`` a forked child evaluates first asks the type cache whether the
module type itself defines ``name`` (CPython 3.11 keeps that cache in the interpreter
state, a static array shared copy-on-write with the zygote). A name the zygote never
looked up misses, and the miss writes the cache entry, the name's reference count and
the evicted name's: up to three page faults. Code that only children run (the
confinement, the end of a run) never filled the cache, so each child paid for all of
it: ~12-16 page faults a Python child (``perf``: half of the children's type cache
misses were module attributes).

Looking every name up once in the zygote, before ``gc.freeze``, leaves the entries
made: a child's lookup then only reads them. An entry stays as long as nothing the
zygote looks up between forks hashes to the same slot (its loop repeats the same
lookups, so an entry it evicts once it evicts every time; a few are).
"""

from __future__ import annotations

import types
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Iterable


def _add_names(code: types.CodeType, names: set[str]) -> None:
    names.update(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):  # nested functions, comprehensions, classes
            _add_names(const, names)


def names_used_by(modules: Iterable[types.ModuleType]) -> set[str]:
    """Every name the functions of ``modules`` (and their classes' methods) look up."""
    names: set[str] = set()
    for module in modules:
        for value in vars(module).values():
            members = vars(value).values() if isinstance(value, type) else (value,)
            for member in members:
                code = getattr(member, "__code__", None)
                if isinstance(code, types.CodeType):
                    _add_names(code, names)
    return names


def warm_module_lookups(names: Iterable[str]) -> None:
    """Look each of ``names`` up as a module attribute once, so the cache holds the entry."""
    # An empty module: no attribute of its own and no __getattr__ to run.
    probe = types.ModuleType("attribute_cache_probe")
    for name in names:
        getattr(probe, name, None)
