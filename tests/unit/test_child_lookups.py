"""A zygote's child finds the calls on its path as globals, not as attributes of modules.

``os.dup2`` in a forked child writes the reference counts of the name, of os and of its
dict (CPython's getattr holds them while it looks): page faults, copies of pages it
shares with the zygote. A global's lookup writes none of them. What is still looked up
on a module is listed here, each with its reason.
"""

from __future__ import annotations

import dis
import types
from collections.abc import Callable

import pytest

from executor.child import isolation, launcher, protocol, python_bootstrap, seccomp, zygote

pytestmark = pytest.mark.unit

# A child's path from the fork to its exit, and what each function may still look up on
# a module: the cold path's, error paths', and sys's (touched anyway) and qb's (the
# callback's own module).
CHILD_PATH: list[tuple[Callable[..., object], set[str]]] = [
    (zygote._child, {"sys.stdout", "sys.stderr"}),
    (launcher.join_cgroups_through, set()),
    (launcher.confine_and_run, {"os.fork", "os.close", "sys.path"}),
    (launcher.set_process_flag, set()),
    (launcher._enter_namespaces, set()),
    (launcher._apply_rlimits, set()),
    (launcher._run_runtime, {"os.execv"}),
    (launcher.mark_end, set()),
    (isolation.isolate_filesystem, {"os.close", "os.makedirs"}),
    (isolation._mount_encoded, {"ctypes.get_errno", "os.strerror"}),
    (isolation.drop_privileges, set()),
    (seccomp.install, {"ctypes.get_errno", "os.strerror"}),
    (python_bootstrap.run, {"traceback.print_exception"}),  # its error path
    (
        python_bootstrap._run_started,
        {
            "qb._bind",
            "qb._finish_sending",
            "sys.modules",
            "sys.stdout",
            "sys.stderr",
            "traceback.format_exception_only",
        },
    ),
    (python_bootstrap._warm_up, {"qb._bind"}),
    (python_bootstrap._execute, set()),
    (python_bootstrap._kernel_quieting, set()),
    (python_bootstrap._set_handlers_aside, set()),
    (python_bootstrap._done_frame, set()),
    (protocol.read_frame, set()),
    (protocol._read_exactly, set()),
    (protocol.decode_trusted, set()),
    (protocol.write_all, set()),
]


def _module_attribute_loads(function: Callable[..., object]) -> set[str]:
    """Each ``module.name`` (or a ctypes library's ``lib.name``) ``function`` evaluates."""
    found = set()
    previous = None
    for instruction in dis.get_instructions(function):
        if (
            instruction.opname in ("LOAD_ATTR", "LOAD_METHOD")
            and previous is not None
            and previous.opname == "LOAD_GLOBAL"
        ):
            owner = function.__globals__.get(previous.argval)
            if isinstance(owner, types.ModuleType) or type(owner).__name__ == "CDLL":
                found.add(f"{previous.argval}.{instruction.argval}")
        previous = instruction
    return found


@pytest.mark.parametrize(
    ("function", "allowed"), CHILD_PATH, ids=[f.__qualname__ for f, _ in CHILD_PATH]
)
def test_the_child_path_calls_by_global_name(
    function: Callable[..., object], allowed: set[str]
) -> None:
    assert _module_attribute_loads(function) <= allowed
