"""The zygote fills the attribute cache for every name its children's code looks up."""

from __future__ import annotations

import types

import pytest

from executor.child import attribute_cache, zygote

pytestmark = pytest.mark.unit


def _module_with_code() -> types.ModuleType:
    module = types.ModuleType("sample")
    exec(  # noqa: S102 - a fixture module's own source
        "import os\n"
        "def top():\n"
        "    os.setsid()\n"
        "    def inner():\n"
        "        return os.closerange\n"
        "    return [os.dup2 for _ in ()]\n"
        "class Holder:\n"
        "    def method(self):\n"
        "        return os.getpid()\n",
        vars(module),
    )
    return module


def test_names_come_from_functions_their_nested_code_and_methods() -> None:
    names = attribute_cache.names_used_by([_module_with_code()])
    assert {"setsid", "closerange", "dup2", "getpid"} <= names


def test_the_zygote_covers_what_a_child_looks_up_from_fork_to_exit() -> None:
    names = attribute_cache.names_used_by(zygote.CHILD_MODULES)
    # _child's, the runtime's (qb._bind, sys.modules, sys.stdout) and the end mark's
    assert {"_run_exitfuncs", "confine_and_run", "mark_end", "stdout"} <= names
    assert {"_bind", "modules", "read_frame", "write_all"} <= names


def test_warming_looks_names_up_without_running_anything() -> None:
    attribute_cache.warm_module_lookups(["__getattr__", "no_such_name", "__dict__"])
