"""Limit merging (defaults, caps) and the rlimits the launcher applies."""

from __future__ import annotations

import pytest

from executor.errors import InvalidRequestError
from executor.model import Limits
from executor.sandbox.limits import merge, rlimits

pytestmark = pytest.mark.unit

DEFAULT = Limits(10, 30, 512 << 20, 1 << 20, 64, 256 << 20)
CAP = Limits(60, 600, 4 << 30, 16 << 20, 256, 1 << 30)


def test_zero_fields_take_the_default_and_others_are_kept() -> None:
    merged = merge(Limits(0, 5, 0, 2048, 0, 0), DEFAULT, CAP)
    assert merged == Limits(10, 5, 512 << 20, 2048, 64, 256 << 20)


def test_above_the_cap_names_the_limit_and_the_cap() -> None:
    with pytest.raises(
        InvalidRequestError, match=r"limits.max_processes = 999 exceeds the server's cap of 256"
    ):
        merge(Limits(0, 0, 0, 0, 999, 0), DEFAULT, CAP)


def test_a_cap_the_settings_gave_as_a_float_reads_as_they_wrote_it() -> None:
    # A configured cap is a float (wall_seconds = 5 in a file is 5.0): "of 5", not "of 5.0".
    cap = Limits(60.0, 5.0, 4 << 30, 16 << 20, 256, 1 << 30)
    with pytest.raises(InvalidRequestError) as caught:
        merge(Limits(0, 10.0, 0, 0, 0, 0), DEFAULT, cap)
    assert str(caught.value) == "limits.wall_seconds = 10.0 exceeds the server's cap of 5"
    with pytest.raises(InvalidRequestError, match=r"cap of 2\.5$"):
        merge(Limits(0, 10.0, 0, 0, 0, 0), DEFAULT, Limits(60.0, 2.5, 1, 1, 1, 1))


def test_negative_is_rejected() -> None:
    with pytest.raises(InvalidRequestError, match=r"limits\.wall_seconds must not be negative"):
        merge(Limits(0, -1, 0, 0, 0, 0), DEFAULT, CAP)


def test_rlimits_round_cpu_up_and_keep_a_hard_margin() -> None:
    limits = rlimits(Limits(1.2, 5, 256 << 20, 1 << 20, 8, 1 << 20), cap_processes_with_nproc=True)
    assert limits["CPU"] == [2, 3]
    assert limits["AS"] == [256 << 20, 256 << 20]
    assert limits["CORE"] == [0, 0]
    assert limits["NPROC"] == [8, 8]
    assert "NPROC" not in rlimits(Limits(1, 5, 1, 1, 8, 1), cap_processes_with_nproc=False)
