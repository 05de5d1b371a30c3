"""The stores' SQLite spelling as PostgreSQL's: a statement (``pg_sql``), the schema (``pg_ddl``).

* Placeholders: ``?`` becomes ``%s`` (and a literal ``%`` is doubled).
* ``BEGIN IMMEDIATE`` (SQLite's write lock up front) is a plain ``BEGIN``.
* The schema: serial keys, 64-bit integers, doubles, ``bytea``, no PRAGMAs, an explicit
  ``rowid`` where SQLite's implicit one is read.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Final


@lru_cache(maxsize=4096)
def pg_sql(sql: str) -> str:
    """A statement in SQLite's spelling, as PostgreSQL (through psycopg) takes it."""
    if sql.strip().upper() == "BEGIN IMMEDIATE":
        return "BEGIN"
    return sql.replace("%", "%%").replace("?", "%s")


# Tables whose reads order by SQLite's implicit rowid (checks, runs) or whose migration reads it.
_READ_BY_ROWID: Final = frozenset({"trigger_checks", "runs", "atoms"})
_CREATE_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \(", re.IGNORECASE)


def pg_ddl(script: str) -> str:
    """The stores' SQLite schema as PostgreSQL DDL (see the module docstring)."""
    lines = [line for line in script.splitlines() if not line.strip().upper().startswith("PRAGMA")]
    ddl = "\n".join(lines)
    ddl = ddl.replace("rowid INTEGER PRIMARY KEY", "rowid BIGSERIAL PRIMARY KEY")
    ddl = ddl.replace("INTEGER PRIMARY KEY AUTOINCREMENT", "BIGSERIAL PRIMARY KEY")
    ddl = re.sub(r"\bINTEGER\b", "BIGINT", ddl)
    ddl = re.sub(r"\bREAL\b", "DOUBLE PRECISION", ddl)
    ddl = re.sub(r"\bBLOB\b", "BYTEA", ddl)
    ddl = ddl.replace(") WITHOUT ROWID;", ");")
    ddl = re.sub(r"^(\s+)user TEXT", r'\1"user" TEXT', ddl, flags=re.MULTILINE)
    # SQLite's implicit rowid orders some reads (checks, runs): PostgreSQL gets a column.
    out: list[str] = []
    pos = 0
    for match in _CREATE_TABLE.finditer(ddl):
        end = ddl.find("\n);", match.end())
        body = ddl[match.end() : end]
        out.append(ddl[pos : match.end()])
        if match.group(1) in _READ_BY_ROWID and not re.search(r"^\s+rowid\b", body, re.M):
            out.append("\n    rowid BIGSERIAL,")
        pos = match.end()
    out.append(ddl[pos:])
    return "".join(out)
