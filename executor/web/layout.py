"""The dashboard's page frame: head, navigation, a live region, the outcome badges.

Styles and script are files the executor serves itself (``static/``): no CDN, no build
step, nothing fetched from elsewhere, so the dashboard works on an offline farm network.
A ``data-live`` element is fetched again every few seconds by ``static/app.js`` and
replaced with what the server renders: the server escapes, the script only swaps.
"""

from __future__ import annotations

from typing import Final

from executor import __version__
from executor.web.html import Html, esc, tag

NAVIGATION: Final = (
    ("/runs", "Runs"),
    ("/jobs", "Jobs & callbacks"),
    ("/universal", "Universal callbacks"),
    ("/health", "Health"),
)
# Outcome -> badge class (colour): good, bad, limit (the callback hit a limit), muted.
_BADGES: Final = {
    "SUCCEEDED": "good",
    "FAILED": "bad",
    "KILLED": "bad",
    "WALL_TIMEOUT": "limit",
    "CPU_LIMIT": "limit",
    "MEMORY_LIMIT": "limit",
    "REJECTED": "muted",
}


def page(title: str, body: Html, *, active: str = "", signed_in: bool = False) -> Html:
    """A whole page: ``body`` inside the frame, ``title`` in the tab and the heading."""
    links = [
        tag("a", label, href=href, class_="active" if href == active else None)
        for href, label in NAVIGATION
    ]
    logout = (
        tag(
            "form",
            tag("button", "Sign out", type="submit", class_="link"),
            method="post",
            action="/logout",
            class_="logout",
        )
        if signed_in
        else ""
    )
    header = tag(
        "header",
        tag("a", tag("span", "cb", class_="logo-mark"), "exec", href="/runs", class_="logo"),
        tag("nav", *links),
        tag("span", "live", id="live-status", class_="live", title="updates every 2 s"),
        logout,
    )
    footer = tag(
        "footer",
        f"cbexec {__version__} · read-only · ",
        tag("a", "/metrics", href="/metrics"),
        " · ",
        tag("a", "/healthz", href="/healthz"),
    )
    document = tag(
        "html",
        tag(
            "head",
            tag("meta", charset="utf-8"),
            tag("meta", name="viewport", content="width=device-width, initial-scale=1"),
            tag("title", f"{title} · cbexec"),
            tag("link", rel="stylesheet", href="/static/app.css"),
            tag("link", rel="icon", href="/static/favicon.svg", type="image/svg+xml"),
            tag("script", src="/static/app.js", defer=True),
        ),
        tag("body", header, tag("main", tag("h1", title), body), footer),
        lang="en",
    )
    return Html("<!doctype html>\n" + document)


def live(url: str, content: Html, *, element: str = "div", **attributes: object) -> Html:
    """A region ``app.js`` refreshes from ``url`` (which answers the region's inner HTML)."""
    return tag(element, content, data_live=url, **attributes)


def badge(outcome: str) -> Html:
    """An outcome as a coloured badge."""
    return tag("span", outcome, class_=f"badge {_BADGES.get(outcome, 'muted')}")


def notice(text: object, kind: str = "info") -> Html:
    """A boxed message: info, warn or error."""
    return tag("p", esc(text), class_=f"notice {kind}")


def definitions(rows: list[tuple[str, object]]) -> Html:
    """A two-column table of label and value."""
    return tag(
        "table",
        tag("tbody", *(tag("tr", tag("th", label), tag("td", value)) for label, value in rows)),
        class_="facts",
    )


def filter_notice(problem: str) -> Html:
    """What a filter page says of values it left out ("" when none): the same on every page."""
    return notice(f"Left out of the filter: {problem}.", "warn") if problem else Html("")
