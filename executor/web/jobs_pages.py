"""The jobs page: every registered job with its callbacks, their latches, count/maximum, and what they wait for.

Each callback's trigger is shown atom by atom, latched or not, with what it still
waits for in words (``explain.Explainer``, the page's one plug-in point). A job's
per-frame callbacks (the same trigger for work item 1, 2, 3, ...: the seed examples'
one callback per frame) are shown as one row with a strip of frames, so a job with
thousands of frames stays one screen.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Final

from executor import triggers
from executor.triggers.nodes import Atom, EventType, Expr, render
from executor.web.explain import Explainer, Explanation
from executor.web.html import Html, join, tag
from executor.web.layout import filter_notice, live, notice
from executor.web.source import parse_id

JOBS_PER_PAGE: Final = 20
# Callbacks differing only in their work item are drawn as one row from this many on.
GROUP_FROM: Final = 3
FRAME: Final = "{frame}"


@dataclass(frozen=True, slots=True)
class JobsQuery:
    """Which jobs: one (``job``), or a page below ``before`` (0: the newest)."""

    job_id: int = 0
    before: int = 0

    @classmethod
    def parse(cls, query: Mapping[str, str]) -> tuple[JobsQuery, str]:
        """The query, and what was wrong with it ("" when nothing: a bad value is left out).

        As the runs page does: the page still answers, and says which value it ignored.
        """
        problems = []

        def number(name: str) -> int:
            value = query.get(name, "").strip()
            if not value:
                return 0
            try:
                return parse_id(value)
            except ValueError as err:
                problems.append(f"{name} {err}")
                return 0

        parsed = cls(number("job"), number("before"))
        return parsed, "; ".join(problems)

    def url(self, part: str = "") -> str:
        params = [f"job={self.job_id}"] if self.job_id else []
        params += [f"before={self.before}"] if self.before else []
        params += [f"part={part}"] if part else []
        return "/jobs" + ("?" + "&".join(params) if params else "")


def jobs_page(source: Any, query: JobsQuery, explain: Explainer, problem: str = "") -> Html:
    """The live list of jobs (its content is ``jobs_body``), under a notice of ``problem``."""
    form = tag(
        "form",
        tag("label", "Job", tag("input", name="job", value=query.job_id or "", size=8)),
        tag("button", "Show", type="submit"),
        tag("a", "all jobs", href="/jobs", class_="clear"),
        method="get",
        action="/jobs",
        class_="filters",
    )
    return join(
        [
            filter_notice(problem),
            form,
            live(query.url("body"), jobs_body(source, query, explain), id="jobs"),
        ]
    )


def jobs_body(source: Any, query: JobsQuery, explain: Explainer) -> Html:
    """The jobs themselves (what the live region refreshes)."""
    answer = source.list_jobs(job_id=query.job_id, limit=JOBS_PER_PAGE, before=query.before)
    if not answer.jobs:
        text = (
            f"Job {query.job_id} is not registered with the trigger engine."
            if query.job_id
            else "No job is registered with the trigger engine (RegisterJob)."
        )
        return notice(text)
    parts = [
        tag("p", f"{_jobs_registered(answer.total)}; newest first.", class_="hint")
        if not query.job_id
        else ""
    ]
    parts += [_job(job, explain(job)) for job in answer.jobs]
    if not query.job_id and len(answer.jobs) == JOBS_PER_PAGE:
        older = JobsQuery(before=answer.jobs[-1].id).url()
        parts.append(tag("p", tag("a", "Older jobs →", href=older), class_="pager"))
    return join(parts)


def _job(job: Any, explanations: Mapping[int, Explanation]) -> Html:
    facts = [
        f"pgrp {job.pgrp}",
        f"label {job.label}" if job.label else "",
        f"user {job.user}" if job.user else "",
        f"parent {job.pid}" if job.pid else "",
    ]
    title = tag(
        "h2",
        tag("a", f"Job {job.id}", href=f"/jobs?job={job.id}"),
        f" {job.name}" if job.name else "",
        tag("span", " · ".join(f for f in facts if f), class_="hint"),
        " ",
        tag("a", "runs", href=f"/runs?job={job.id}", class_="small"),
    )
    if not job.callbacks:
        return tag("section", title, tag("p", "No callbacks.", class_="hint"), class_="job")
    rows = []
    for item in _grouped(list(job.callbacks)):
        if isinstance(item, _FrameGroup):
            rows.append(_group_row(item, explanations))
        else:
            rows.append(_callback_row(item, explanations.get(item.id)))
    head = tag(
        "tr",
        *(tag("th", name) for name in ("#", "Trigger", "Latches", "Fired", "Waiting for", "Lang")),
    )
    table = tag("table", tag("thead", head), tag("tbody", *rows), class_="callbacks")
    return tag("section", title, table, class_="job", id=f"job-{job.id}")


def _callback_row(callback: Any, explanation: Explanation | None) -> Html:
    origin = (
        tag("span", "universal", class_="tag", title=callback.source) if callback.universal else ""
    )
    latches: object = "-"
    waiting: object = ""
    if explanation is not None:
        latches = join(
            tag(
                "span",
                "✓ " if atom.latched else "○ ",
                atom.text,
                class_="latch on" if atom.latched else "latch",
                title=("happened: " if atom.latched else "waiting: ") + atom.words,
            )
            for atom in explanation.atoms
        )
        if explanation.spent:
            waiting = tag("span", "nothing: it reached its maximum", class_="hint")
        else:
            waiting = explanation.waiting_for
        if explanation.journal:
            waiting = join([waiting, tag("ul", *(tag("li", line) for line in explanation.journal))])
    return tag(
        "tr",
        tag("td", callback.id, origin),
        tag("td", callback.canonical_triggers or callback.triggers, class_="mono"),
        tag("td", latches, class_="latches"),
        tag("td", _count(callback), class_="num"),
        tag("td", waiting, class_="waiting"),
        tag("td", callback.language),
        data_callback=callback.id,
    )


def _count(callback: Any) -> str:
    return f"{callback.count} / {callback.maximum}" if callback.maximum else f"{callback.count} / ∞"


# -- one callback per frame, drawn as one row -------------------------------------------


@dataclass(frozen=True, slots=True)
class _FrameGroup:
    shape: str
    language: str
    # (frame name, callback), in the job's callback order.
    members: tuple[tuple[str, Any], ...]


@lru_cache(maxsize=4096)
def frame_shape(text: str) -> tuple[str, str] | None:
    """(the trigger with its one work item as ``{frame}``, that item), or None.

    Only a trigger whose ``work`` atoms all name the same item (not ``*``) has a shape.
    """
    try:
        expr = triggers.parse(text)
    except triggers.TriggerSyntaxError:
        return None
    items = {atom.extra for atom in triggers.atoms(expr) if atom.type is EventType.WORK}
    if len(items) != 1 or "*" in items:
        return None
    (item,) = items
    return render(_with_frame(expr)), item


def _with_frame(expr: Expr) -> Expr:
    """``expr`` with every work atom's item replaced by ``{frame}``."""
    if isinstance(expr, Atom):
        return dataclasses.replace(expr, extra=FRAME) if expr.type is EventType.WORK else expr
    return type(expr)(tuple(_with_frame(term) for term in expr.terms))


def _grouped(callbacks: list[Any]) -> list[Any]:
    """The callbacks, with each run of per-frame ones (GROUP_FROM or more) as one group."""
    shapes: dict[tuple[str, str, bool], list[tuple[str, Any]]] = {}
    for callback in callbacks:
        shape = frame_shape(callback.canonical_triggers or callback.triggers)
        if shape is not None:
            key = (shape[0], callback.language, callback.universal)
            shapes.setdefault(key, []).append((shape[1], callback))
    grouped = {k: v for k, v in shapes.items() if len(v) >= GROUP_FROM}
    members = {id(cb) for entries in grouped.values() for _, cb in entries}
    items: list[Any] = []
    placed: set[tuple[str, str, bool]] = set()
    for callback in callbacks:
        if id(callback) not in members:
            items.append(callback)
            continue
        shape = frame_shape(callback.canonical_triggers or callback.triggers)
        if shape is None:  # members all have a shape: grouped above by it
            items.append(callback)
            continue
        key = (shape[0], callback.language, callback.universal)
        if key not in placed:
            placed.add(key)
            items.append(_FrameGroup(key[0], key[1], tuple(grouped[key])))
    return items


def _group_row(group: _FrameGroup, explanations: Mapping[int, Explanation]) -> Html:
    cells = []
    fired = waiting = 0
    for frame, callback in group.members:
        explanation = explanations.get(callback.id)
        partly = any(callback.latches)
        state = "fired" if callback.count else "partly" if partly else "waiting"
        fired += 1 if callback.count else 0
        waiting += 0 if callback.count else 1
        detail = explanation.waiting_for if explanation is not None else ""
        cells.append(
            tag(
                "span",
                frame,
                class_=f"frame {state}",
                title=f"frame {frame}, callback {callback.id}: {state}"
                + (f"; waiting for {detail}" if detail and not callback.count else ""),
            )
        )
    first, last = group.members[0][0], group.members[-1][0]
    return tag(
        "tr",
        tag("td", f"{group.members[0][1].id}-{group.members[-1][1].id}"),
        tag("td", group.shape, class_="mono"),
        tag(
            "td",
            tag("div", *cells, class_="frames"),
            colspan=2,
        ),
        tag(
            "td",
            f"{len(group.members)} per-frame callbacks (frames {first} … {last}): "
            f"{fired} fired, {waiting} waiting",
        ),
        tag("td", group.language),
        class_="frame-group",
    )


def _jobs_registered(total: int) -> str:
    return "1 job registered" if total == 1 else f"{total} jobs registered"
