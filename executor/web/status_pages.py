"""The universal callbacks page and the health page: what is loaded, and how the executor is doing."""

from __future__ import annotations

from typing import Any

from executor.cli.metrics import zygote_condition, zygote_state
from executor.plurals import counted
from executor.web.html import Html, join, local_time, seconds, tag
from executor.web.layout import badge, definitions, live, notice
from supervisor_client.client import outcome_name


def universal_page(source: Any) -> Html:
    """Each directory's callbacks.conf as loaded, and the last reload."""
    answer = source.universal()
    parts: list[object] = [
        definitions(
            [
                ("Last reload", local_time(answer.last_reload_at)),
                ("Active set loaded", local_time(answer.loaded_at)),
                (
                    "Last reload's result",
                    tag("span", "taken", class_="ok")
                    if not answer.errors
                    else tag("span", "refused: the set loaded before stays active", class_="bad"),
                ),
            ]
        )
    ]
    if answer.errors:
        parts.append(
            tag(
                "section",
                tag("h2", "Load errors"),
                tag("ul", *(tag("li", error, class_="mono") for error in answer.errors)),
                class_="failure",
                id="load-errors",
            )
        )
    for directory in answer.directories:
        if not directory.has_conf:
            content: object = tag("p", "No callbacks.conf here: nothing is loaded.", class_="hint")
        elif not directory.callbacks:
            content = tag("p", "callbacks.conf holds no active callback.", class_="hint")
        else:
            names = ("File", "Language", "Trigger", "Policy")
            head = tag("tr", *(tag("th", name) for name in names))
            rows = [
                tag(
                    "tr",
                    tag("td", callback.source.rsplit("/", 1)[-1], class_="mono"),
                    tag("td", callback.language),
                    tag("td", callback.canonical_triggers or callback.triggers, class_="mono"),
                    # As the POLICY column of `cbexec runs`: a shadow callback applies nothing.
                    tag(
                        "td",
                        (callback.policy or "-") + (" (shadow)" if callback.shadow else ""),
                        class_="mono",
                    ),
                )
                for callback in directory.callbacks
            ]
            content = tag("table", tag("thead", head), tag("tbody", *rows))
        parts.append(tag("section", tag("h2", tag("span", directory.path, class_="mono")), content))
    parts.append(
        tag(
            "p",
            "Universal callbacks are attached to every job registered after a reload "
            "(cbexec triggers reload, or SIGHUP).",
            class_="hint",
        )
    )
    return join(parts)


def health_page(source: Any) -> Html:
    """The live health region (its content is ``health_body``)."""
    return live("/health?part=body", health_body(source), id="health")


def health_body(source: Any) -> Html:
    """Serving state, slots, queue, outbox, zygotes, trigger engine and the sandbox tier."""
    m = source.metrics()
    status = m.health_status  # read with the problems below, so the two agree
    parts: list[object] = []
    if m.storage_problem:
        parts.append(notice(f"Storage degraded: {m.storage_problem}", "error"))
    if m.slots_problem:
        parts.append(notice(f"No slot to run in: {m.slots_problem}", "error"))
    if m.firings_held:
        parts.append(notice(f"Fired runs held: {m.firings_held}", "error"))
    serving = tag("span", status, class_="ok" if status == "SERVING" else "bad", id="serving")
    load = definitions(
        [
            ("Health", serving),
            ("Slots", f"{m.active_children} of {m.slots} busy"),
            ("Prepared children", m.prepared_children),
            ("Queue", f"{m.queue_depth} waiting of {m.queue_limit} allowed"),
            ("Refused at capacity", m.rejected_at_capacity),
            (
                "Outbox",
                f"{m.outbox_pending} pending, {counted(m.outbox_dead_letters, 'dead letter')}"
                + (f"; last delivery failed: {m.outbox_last_error}" if m.outbox_last_error else ""),
            ),
        ]
    )
    engine = definitions(
        [
            ("Events applied", m.events_published),
            ("Callbacks fired", m.callbacks_fired),
            ("Firings queued", m.firings_queued),
            ("Jobs registered", m.trigger_jobs),
            ("Callbacks registered", m.trigger_callbacks),
            ("Universal callbacks", m.universal_callbacks),
            (
                "Last reload",
                counted(m.universal_reload_errors, "problem")
                if m.universal_reload_errors
                else "ok",
            ),
        ]
    )
    parts.append(
        tag(
            "div",
            tag("section", tag("h2", "Load"), load),
            tag("section", tag("h2", "Trigger engine"), engine),
            class_="columns",
        )
    )
    parts.append(tag("section", tag("h2", "Runs"), _runs(m)))
    zygotes = [
        tag(
            "tr",
            tag("td", z.language),
            tag("td", zygote_state(z)),
            tag("td", z.restarts, class_="num"),
            tag("td", zygote_condition(z)),
        )
        for z in m.zygotes
    ]
    parts.append(
        tag(
            "section",
            tag("h2", "Zygotes"),
            tag(
                "table",
                tag(
                    "thead",
                    tag("tr", *(tag("th", n) for n in ("Language", "Pid", "Restarts", "State"))),
                ),
                tag("tbody", *zygotes),
            )
            if zygotes
            else tag(
                "p", f"The {m.sandbox.launcher or 'cold'} launcher has no zygotes.", class_="hint"
            ),
        )
    )
    mechanisms = [
        tag(
            "li",
            tag(
                "span", "✓" if mechanism.active else "✗", class_="ok" if mechanism.active else "bad"
            ),
            " ",
            mechanism.name.replace("_", " "),
        )
        for mechanism in m.sandbox.mechanisms
    ]
    parts.append(
        tag(
            "section",
            tag("h2", "Sandbox tier"),
            tag("ul", *mechanisms, class_="mechanisms"),
            tag("p", m.sandbox.description, class_="hint"),
            id="tier",
        )
    )
    return join(parts)


def _runs(m: Any) -> Html:
    wall, queue = m.run_wall_seconds, m.queue_seconds
    counts = [
        tag("li", badge(outcome), f" {count}")
        for outcome, count in sorted(m.runs_by_outcome.items())
    ]
    rows = [
        tag(
            "tr",
            tag("td", c.language),
            tag("td", c.source),
            tag("td", badge(outcome_name(c.outcome))),
            tag("td", c.runs, class_="num"),
        )
        for c in m.runs
    ]
    mean_wall = wall.sum_seconds / wall.total if wall.total else 0.0
    mean_queue = queue.sum_seconds / queue.total if queue.total else 0.0
    return join(
        [
            tag("ul", *counts, class_="counts")
            if counts
            else tag("p", "No runs yet.", class_="hint"),
            tag(
                "p",
                f"Mean wall time {seconds(mean_wall)}, mean queue wait {seconds(mean_queue)} "
                f"over {counted(wall.total, 'run')}.",
            ),
            tag(
                "table",
                tag(
                    "thead",
                    tag("tr", *(tag("th", n) for n in ("Language", "Source", "Outcome", "Runs"))),
                ),
                tag("tbody", *rows),
            )
            if rows
            else "",
        ]
    )
