"""The clients' variables: an empty one is unset, as an empty ``CBEXEC_AUTH_TOKEN`` is."""

from __future__ import annotations

import pytest

from executor.cli import build_parser
from executor.cli.connection import DEFAULT_ADDRESS

pytestmark = pytest.mark.unit


def test_an_empty_address_variable_means_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # It was "--address: no executor address given" (no flag had been).
    monkeypatch.setenv("CBEXEC_ADDRESS", "")
    assert build_parser().parse_args(["metrics"]).address == DEFAULT_ADDRESS


def test_the_address_variable_is_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CBEXEC_ADDRESS", "10.0.0.1:50051")
    assert build_parser().parse_args(["runs"]).address == "10.0.0.1:50051"
    given = build_parser().parse_args(["runs", "--address", "10.0.0.2:1"]).address
    assert given == "10.0.0.2:1"
