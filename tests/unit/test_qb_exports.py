"""``from qb import *`` in a callback gives the qb API and nothing of the module's own."""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import pytest

from executor.child import protocol

pytestmark = pytest.mark.unit

QB = Path(protocol.__file__).with_name("qb.py")
# What qb.py imports for itself: they shadowed a callback's own read, write, select.
INTERNALS = {
    "read",
    "write",
    "select",
    "getpid",
    "itertools",
    "protocol",
    "Any",
    "TYPE_CHECKING",
    "annotations",
    "allocate_lock",
    "get_ident",
    "pthread_sigmask",
    "valid_signals",
    "SIG_BLOCK",
    "SIG_UNBLOCK",
}


@pytest.fixture
def qb(monkeypatch: pytest.MonkeyPatch) -> types.ModuleType:
    """qb.py loaded as the child loads it (``protocol`` a top-level module), under another name."""
    monkeypatch.setitem(sys.modules, "protocol", protocol)
    spec = importlib.util.spec_from_file_location("qb_under_test", QB)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "qb_under_test", module)
    spec.loader.exec_module(module)
    return module


def test_a_star_import_gives_the_api_only(qb: types.ModuleType) -> None:
    namespace: dict[str, object] = {}
    exec("from qb_under_test import *", namespace)  # noqa: S102  # the callback's own form
    given = set(namespace) - {"__builtins__"}
    assert given == set(qb.__all__)
    assert not given & INTERNALS
    assert {"jobid", "jobinfo", "QbError", "unblock", "workunblock", "unblockwork"} <= given


def test_every_public_name_qb_defines_is_exported(qb: types.ModuleType) -> None:
    defined = {
        name
        for name, value in vars(qb).items()
        if not name.startswith("_") and getattr(value, "__module__", None) == qb.__name__
    }
    assert defined <= set(qb.__all__)
    assert len(qb.__all__) == len(set(qb.__all__))
    assert "QB_TIME_EPOCH_OFFSET" in qb.__all__
