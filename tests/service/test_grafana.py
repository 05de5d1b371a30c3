"""scripts/grafana-dashboard.json asks only for metrics a real executor's /metrics has."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.service.test_http import fetch, url, web  # noqa: F401 - the fixture
from tests.service.test_runs import FAIL, run_py

pytestmark = pytest.mark.service

DASHBOARD: Final = Path(__file__).resolve().parents[2] / "scripts" / "grafana-dashboard.json"
# PromQL words that are not metric names: aggregation modifiers, set operators, offsets.
KEYWORDS: Final = frozenset(
    {
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
    }
)


def expressions(dashboard: dict[str, Any]) -> Iterator[str]:
    """Every PromQL expression: the panels' targets and the template variables' queries."""
    for panel in dashboard["panels"]:
        for target in panel.get("targets", []):
            yield target["expr"]
    for variable in dashboard["templating"]["list"]:
        query = variable.get("query")
        if isinstance(query, dict):
            # label_values(<series selector>, <label name>): only the selector is PromQL.
            found = re.fullmatch(r"label_values\((.*),\s*\w+\)", query["query"])
            yield found.group(1) if found else query["query"]


def metric_names(expression: str) -> set[str]:
    """The metric names a PromQL expression selects."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expression)  # string literals
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)
    text = re.sub(r"\$\w+", "", text)  # Grafana variables ($__rate_interval)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        following = text[match.end() :].lstrip()
        if following.startswith("(") or word in KEYWORDS:
            continue  # a function, or a keyword
        if match.start() > 0 and text[match.start() - 1].isdigit():
            continue  # an exponent (1e-9)
        names.add(word)
    return names


def test_the_extractor_finds_metric_names_only() -> None:
    assert metric_names(
        'histogram_quantile(0.99, sum by (le, language) (rate(x_bucket{a="b(c)"}[$__rate_interval])))'
        " / clamp_min(sum(y), 1e-9) and on (instance) z"
    ) == {"x_bucket", "y", "z"}


async def test_every_dashboard_metric_is_in_a_scrape(web: Any) -> None:  # noqa: F811
    dashboard = json.loads(DASHBOARD.read_text())
    await run_py(web, "print('ok')", 1)
    await run_py(web, FAIL, 1)
    await web.client.register_job(
        {"id": 9, "callbacks": [{"triggers": "complete-job-self", "language": "qube", "code": "x"}]}
    )
    await web.client.publish_event(name="complete", type="job", job_id=9, wait=True)
    status, _, scrape = await fetch(url(web, "/metrics"))
    assert status == 200
    scraped = {
        sample.name
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }

    wanted = {name for expression in expressions(dashboard) for name in metric_names(expression)}

    assert wanted, "the dashboard has queries"
    assert sorted(wanted - scraped) == []
    assert {p["datasource"]["uid"] for p in dashboard["panels"] if "datasource" in p} == {
        "${datasource}"
    }
