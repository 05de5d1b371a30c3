"""SQLite's own count of the memory it holds (``sqlite3_memory_used``), for every connection of the process."""

from __future__ import annotations

import ctypes
import ctypes.util

import pytest


def sqlite_memory_used() -> int:
    """Bytes SQLite holds now in this process; skips the test where the library is not found."""
    name = ctypes.util.find_library("sqlite3")
    if name is None:
        pytest.skip("no shared libsqlite3 to ask (Python's sqlite3 may be linked statically)")
    function = ctypes.CDLL(name).sqlite3_memory_used
    function.restype = ctypes.c_int64
    return int(function())
