"""A group's reads on PostgreSQL: one statement per kind of read for all its events.

Read event by event, a group of 50 events costs ~150 round trips to a server that, in
a fleet, is on another machine (or, on a small box, shares its cores). Here each kind
of read is one statement for the whole group, whatever its size:

* ``sightings``: every event id's key (event_ids.py) recorded at once, with its event's
  fingerprint (event_id_reuse.py; ``INSERT ... ON CONFLICT DO NOTHING RETURNING``; an id
  seen before, or earlier in the group, is a repeat, whose kept fingerprint is read
  with it), with each event's job's place and the near misses in its pgrp
  (``near_misses``' lookup, per event, through a ``LATERAL`` subquery, an index lookup
  per atom as there).
* ``matching``: the atoms under every key of every event, with their callbacks, locked
  in ascending order in that one statement (``FOR UPDATE``): two replicas' groups take
  the rows they share in the same order, so they take turns and never deadlock.
* ``work_contexts``: for each (job, ``{work}`` callback, item) the group's events
  name, whether the job registered an agenda, whether the item is in it, and the
  item's latches (items.py's ``context``, for all of them).

What the events then decide is decided in order, each seeing what the ones before it
wrote (group_state.py keeps that).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from executor.model import Event
from executor.sql import Db
from executor.triggers import event_ids
from executor.triggers.evaluate import AtomKey, JobPlace
from executor.triggers.items import WorkState
from executor.triggers.near_misses import UNRESOLVED
from executor.triggers.store_rows import StoredCallback


@dataclass(frozen=True, slots=True)
class GroupSighting:
    """One event of a group as first read: a repeat or not, its job's place, its near misses.

    ``near`` holds the unresolved label atoms of the job's pgrp under the event's name,
    type and extras (as ``near_misses.in_pgrp_subquery`` reads them), ``near_elsewhere``
    those of other pgrps naming the job's label (``near_misses.unresolved_elsewhere``;
    None when the job has no label). ``earlier``: a repeat's fingerprint as kept before
    the group (b"" when unknown); None when the id is new, first seen earlier in the
    group, or committed by another transaction after the statement began.
    """

    first: bool
    place: JobPlace | None
    near: list[Any] | None
    near_elsewhere: list[Any] | None = None
    earlier: bytes | None = None


def sightings(
    db: Db,
    events: Sequence[Event],
    keys_of: Sequence[tuple[str, list[str], list[str]]],
    limit: int,
    fingerprints: Sequence[bytes],
) -> list[GroupSighting]:
    """Record the events' ids and read their jobs' places and pgrps' near misses, at once.

    ``keys_of``: per event, the type, names and extras of its keys (``event_keys`` of the
    event without a place: a place adds scopes only); ``fingerprints``: per event, its
    ``event_id_reuse.fingerprint``, kept with its id. An id that occurs twice in
    ``events`` is new at most at its first occurrence, as if the events came one by one
    (the fingerprint kept is that one's).
    """
    rows = [
        {
            "n": n,
            # The id's key (event_ids.key), in hex: a JSON string; '' for no id.
            "id_key": event_ids.key(e.event_id).hex() if e.event_id else "",
            "fp": fingerprints[n].hex(),
            "job_id": e.job_id,
            "type": t,
            "names": ns,
            "extras": xs,
        }
        for n, (e, (t, ns, xs)) in enumerate(zip(events, keys_of, strict=True))
    ]
    found = db.execute(
        "WITH e AS (SELECT * FROM json_to_recordset(?::json) AS e(n int, id_key text, fp text,"  # noqa: S608 - a fragment of ours
        " job_id bigint, type text, names text[], extras text[])),"
        " seen AS (INSERT INTO seen_events (id_key, seen_at, fingerprint)"
        " SELECT DISTINCT ON (decode(id_key, 'hex')) decode(id_key, 'hex'),"
        " ?::double precision, decode(fp, 'hex') FROM e WHERE id_key != ''"
        # In the keys' order, as before; of an id twice, its first event's fingerprint.
        " ORDER BY decode(id_key, 'hex'), n ON CONFLICT DO NOTHING RETURNING id_key)"
        " SELECT e.n, decode(e.id_key, 'hex') IN (SELECT id_key FROM seen) AS new, j.pgrp,"
        " j.label,"
        " CASE WHEN j.job_id IS NULL THEN NULL ELSE (SELECT coalesce(json_agg(json_build_array("
        "a.callback_rowid, a.slot, a.pgrp, a.label, a.name, a.extra)), '[]') FROM ("
        "SELECT * FROM atoms a WHERE a.pgrp = j.pgrp AND a.type = e.type"
        " AND a.name = ANY(e.names) AND a.extra = ANY(e.extras) AND a.label != ''"
        f" AND {UNRESOLVED} LIMIT ?) AS a) END AS near,"
        " CASE WHEN j.job_id IS NULL OR j.label = '' THEN NULL ELSE (SELECT coalesce(json_agg("
        "json_build_array(a.callback_rowid, a.slot, a.pgrp, a.label, a.name, a.extra)), '[]')"
        " FROM (SELECT * FROM atoms a WHERE a.label = j.label AND a.pgrp != j.pgrp"
        " AND a.type = e.type AND a.name = ANY(e.names) AND a.extra = ANY(e.extras)"
        f" AND a.label != '' AND {UNRESOLVED} LIMIT ?) AS a) END AS near_elsewhere,"
        # A repeat's fingerprint as kept before this statement (read for repeats only).
        " CASE WHEN e.id_key = '' OR decode(e.id_key, 'hex') IN (SELECT id_key FROM seen)"
        " THEN NULL ELSE (SELECT coalesce(s.fingerprint, ''::bytea) FROM seen_events s"
        " WHERE s.id_key = decode(e.id_key, 'hex')) END AS earlier"
        # A lookup of each event's job (OFFSET 0: not a hash join over a scan of every job,
        # which the planner prefers while it takes the group for 100 events of a few jobs).
        " FROM e LEFT JOIN LATERAL (SELECT job_id, pgrp, label FROM jobs"
        " WHERE jobs.job_id = e.job_id OFFSET 0) AS j ON true ORDER BY e.n",
        (json.dumps(rows), time.time(), limit, limit),
    ).fetchall()
    ids_in_group: set[str] = set()
    result = []
    for event, row in zip(events, found, strict=True):
        first = not event.event_id or (bool(row[1]) and event.event_id not in ids_in_group)
        ids_in_group.add(event.event_id)
        place = None
        if row[2] is not None:
            place = JobPlace(event.job_id, pgrp=int(row[2]), label=str(row[3]))
        earlier = None if first or row[6] is None else bytes(row[6])
        result.append(GroupSighting(first, place, row[4], row[5], earlier))
    return result


def matching(
    db: Db, keys: Iterable[AtomKey]
) -> tuple[dict[AtomKey, list[tuple[int, int]]], dict[int, StoredCallback]]:
    """Per key, the (callback rowid, slot) of its atoms; and those callbacks, locked in order."""
    wanted = sorted(set(keys), key=lambda key: (key.name, key.type, key.scope, key.extra))
    hits: dict[AtomKey, list[tuple[int, int]]] = {}
    callbacks: dict[int, StoredCallback] = {}
    if not wanted:
        return hits, callbacks
    rows = db.execute(
        "SELECT k.name AS atom_name, k.type AS atom_type, k.scope AS atom_scope,"
        " k.extra AS atom_extra, a.slot AS atom_slot, c.*"
        " FROM unnest(?::text[], ?::text[], ?::text[], ?::text[]) AS k(name, type, scope, extra)"
        " JOIN atoms a ON a.name = k.name AND a.type = k.type AND a.scope = k.scope"
        " AND a.extra = k.extra JOIN callbacks c ON c.rowid = a.callback_rowid"
        " ORDER BY c.rowid FOR UPDATE OF c",
        (
            [key.name for key in wanted],
            [key.type for key in wanted],
            [key.scope for key in wanted],
            [key.extra for key in wanted],
        ),
    ).fetchall()
    for row in rows:
        key = AtomKey(row["atom_name"], row["atom_type"], row["atom_scope"], row["atom_extra"])
        hits.setdefault(key, []).append((row["rowid"], row["atom_slot"]))
        if row["rowid"] not in callbacks:
            callbacks[row["rowid"]] = StoredCallback.from_row(row)
    return hits, callbacks


@dataclass(frozen=True, slots=True)
class WorkContext:
    """What items.py's ``context`` reads for one work item of a ``{work}`` callback."""

    agenda_known: bool
    listed: bool
    state: WorkState


def work_contexts(
    db: Db, wanted: Iterable[tuple[int, int, str, int]]
) -> dict[tuple[int, str], WorkContext]:
    """Per (callback rowid, item), its context; ``wanted``: (job id, rowid, item, latches)."""
    asked = sorted(set(wanted))
    if not asked:
        return {}
    rows = db.execute(
        "SELECT EXISTS (SELECT 1 FROM known_states s WHERE s.job_id = t.job_id"
        " AND s.type = 'work' AND s.position >= 0) AS known,"
        " (SELECT s.position FROM known_states s WHERE s.job_id = t.job_id AND s.type = 'work'"
        " AND s.item = t.work_name) AS position, w.count, w.latches, w.latched_by"
        " FROM unnest(?::bigint[], ?::bigint[], ?::text[]) WITH ORDINALITY"
        " AS t(job_id, rowid, work_name, n)"
        " LEFT JOIN work_latches w ON w.callback_rowid = t.rowid AND w.work_name = t.work_name"
        " ORDER BY t.n",
        ([a[0] for a in asked], [a[1] for a in asked], [a[2] for a in asked]),
    ).fetchall()
    contexts = {}
    for (_, rowid, work_name, size), row in zip(asked, rows, strict=True):
        listed = row["position"] is not None and int(row["position"]) >= 0
        state = WorkState.fresh(size) if row["latches"] is None else WorkState.from_row(row, size)
        contexts[(rowid, work_name)] = WorkContext(bool(row["known"]), listed, state)
    return contexts
