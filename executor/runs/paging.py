"""Keyset paging through the run history: where a page ends, and the page token that carries it.

``ListRuns`` pages as Google's AIP-158 describes. The history lists runs by start time,
newest first, with the row id as the tie-breaker (``RunKey``); a page token holds the
last listed run's key and the filters it was made for, and the next page is the runs
after that key by the same filters. A key, not an offset: runs recorded after the first
page sort before it (they started later) and shift nothing, and a run pruned meanwhile
is simply not there, so no page repeats or skips a run that was there all along.

The row id is unique in the table, and never changed by an update of the row (a repeated
invocation id keeps its row), in SQLite (the implicit rowid; the history is never
vacuumed) and in a fleet's PostgreSQL store (a ``BIGSERIAL`` from one sequence, the same
number whichever replica reads it), so a token one replica made pages on at another.

The token is base64url of a small JSON document with a version mark. It is opaque to
callers (its form may change) but not secret: it names a place in a list its holder
may read anyway, so it is not signed, only checked for form and filters.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
from dataclasses import dataclass, fields
from typing import Any, Final

from executor.errors import InvalidRequestError
from executor.model import Outcome

TOKEN_VERSION: Final = 1
# Far longer than any token this module makes; a longer one is refused before decoding.
MAX_TOKEN_CHARS: Final = 1024
# The token's fields: version, the key's start and row id, and the filters (a list, in
# RunFilters' order), short because a person may copy the token from a terminal.
_KEYS: Final = frozenset({"v", "at", "row", "f"})
# The largest row id a store holds: SQLite's INTEGER and PostgreSQL's BIGINT are signed
# 64-bit, and an edited token's larger id would fail in the store's driver, not here.
MAX_ROW_ID: Final = 2**63 - 1


@dataclass(frozen=True, slots=True)
class RunFilters:
    """Which runs a list holds: each filter given must match (None / False: any run)."""

    job_id: int | None = None
    outcome: Outcome | None = None
    # Unix seconds: only runs that started at or after this.
    since: float | None = None
    # The lower-case language name.
    language: str | None = None
    shadow_only: bool = False

    def describe(self) -> str:
        """The filters in words, for a refusal: "job_id 5, outcome FAILED" or "no filters"."""
        parts = []
        if self.job_id is not None:
            parts.append(f"job_id {self.job_id}")
        if self.outcome is not None:
            parts.append(f"outcome {self.outcome.value}")
        if self.since is not None:
            parts.append(f"since {self.since!r}")
        if self.language is not None:
            parts.append(f"language {self.language}")
        if self.shadow_only:
            parts.append("shadow_only")
        return ", ".join(parts) or "no filters"


@dataclass(frozen=True, slots=True)
class RunKey:
    """A run's place in the history's order: newest ``started_at`` first, then highest ``row_id``."""

    started_at: float
    row_id: int


def encode_page_token(key: RunKey, filters: RunFilters) -> str:
    """The token for the page after ``key``, valid with ``filters`` only."""
    document = {
        "v": TOKEN_VERSION,
        "at": key.started_at,  # JSON keeps a float exactly (its shortest repr)
        "row": key.row_id,
        "f": [
            filters.job_id,
            filters.outcome.value if filters.outcome is not None else None,
            filters.since,
            filters.language,
            filters.shadow_only,
        ],
    }
    text = json.dumps(document, separators=(",", ":"), allow_nan=False)
    return base64.urlsafe_b64encode(text.encode()).decode("ascii").rstrip("=")


def decode_page_token(token: str, filters: RunFilters) -> RunKey:
    """The key a token of ``encode_page_token`` holds.

    Raises:
        InvalidRequestError: the token is not one this module made (malformed, cut,
            from elsewhere), or it was made for filters other than ``filters``.
    """
    made_for = _made_for(token)
    if made_for[1] != filters:
        raise InvalidRequestError(
            f"page_token was made for other filters ({made_for[1].describe()}), not these "
            f"({filters.describe()}): repeat the filters of the request that gave it "
            "(only limit may change), or leave page_token empty to start from the newest run"
        )
    return made_for[0]


def _made_for(token: str) -> tuple[RunKey, RunFilters]:
    """The key and filters in a token; InvalidRequestError when it is not one of ours."""
    try:
        if len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise ValueError("too long, or not ASCII")
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        if base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=") != token:
            raise ValueError("not base64url")  # stray characters that the decoder skipped
        document = json.loads(raw, parse_constant=_no_constant)
        return _key(document), _filters(document["f"])
    # UnicodeDecodeError is a ValueError; OverflowError is a whole number too large for a float.
    except (ValueError, TypeError, OverflowError, binascii.Error) as err:
        shown = token if len(token) <= 40 else token[:40] + "..."
        raise InvalidRequestError(
            f"page_token {shown!r} is not a ListRuns page token: give the "
            "next_page_token of an earlier ListRuns answer as it came, or leave it empty "
            "for the first page"
        ) from err


def _no_constant(name: str) -> None:
    raise ValueError(f"{name} is not a number")


def _key(document: Any) -> RunKey:
    if not isinstance(document, dict) or set(document) != _KEYS:
        raise ValueError("not a page token's fields")
    if document["v"] != TOKEN_VERSION or isinstance(document["v"], bool):
        raise ValueError(f"version {document['v']!r}, expected {TOKEN_VERSION}")
    started_at, row_id = document["at"], document["row"]
    if not _is_number(started_at) or not math.isfinite(started_at):
        raise ValueError("its start is not a finite number")
    if not _is_int(row_id) or not 0 <= row_id <= MAX_ROW_ID:
        raise ValueError(f"its row id is not a whole number from 0 to {MAX_ROW_ID}")
    return RunKey(float(started_at), row_id)


def _filters(given: Any) -> RunFilters:
    if not isinstance(given, list) or len(given) != len(fields(RunFilters)):
        raise ValueError("not a page token's filters")
    job_id, outcome, since, language, shadow_only = given
    if job_id is not None and not _is_int(job_id):
        raise ValueError("job_id is not a whole number")
    if outcome is not None and not isinstance(outcome, str):
        raise ValueError("outcome is not a name")
    if since is not None and not _is_number(since):
        raise ValueError("since is not a number")
    if language is not None and not isinstance(language, str):
        raise ValueError("language is not a name")
    if not isinstance(shadow_only, bool):
        raise TypeError("shadow_only is not true or false")
    return RunFilters(
        job_id=job_id,
        outcome=Outcome(outcome) if outcome is not None else None,  # ValueError when unknown
        since=float(since) if since is not None else None,
        language=language,
        shadow_only=shadow_only,
    )


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
