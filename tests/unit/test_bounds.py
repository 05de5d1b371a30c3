"""``bounds.cut``, ``bounds.cut_utf8`` and ``bounds.cut_utf8_end``: text cut to a stated size, the marker included."""

from __future__ import annotations

import pytest

from executor.bounds import cut, cut_utf8, cut_utf8_end, utf8_size


def test_text_within_the_limit_is_kept_whole() -> None:
    assert cut("x" * 10, 10) == "x" * 10


@pytest.mark.parametrize(("length", "limit"), [(11, 10), (5000, 4096), (10**6, 65536), (300, 256)])
def test_a_cut_text_with_its_marker_stays_within_the_limit(length: int, limit: int) -> None:
    text = "".join(chr(ord("a") + i % 26) for i in range(length))
    kept = cut(text, limit)
    assert len(kept) <= limit
    if limit > 40:
        head, _, marker = kept.partition("…[")
        assert text.startswith(head) and len(kept) >= limit - 2
        assert marker == f"{length - len(head)} more characters]"


# A 1-, 2-, 3- and 4-byte character in turn: every cut point falls somewhere different.
MIXED = "a\u00e9\u20ac\U0001f600"


def test_text_within_the_byte_limit_is_kept_whole() -> None:
    assert cut_utf8("\U0001f600" * 10, 40) == "\U0001f600" * 10


@pytest.mark.parametrize("limit", [4096, 4097, 4098, 4099, 65536])
@pytest.mark.parametrize("text", ["x" * 70_000, "\U0001f600" * 20_000, MIXED * 8000])
def test_a_text_cut_to_bytes_stays_within_them_on_a_character_boundary(
    text: str, limit: int
) -> None:
    kept = cut_utf8(text, limit)

    assert utf8_size(kept) <= limit
    head, _, marker = kept.rpartition("…[")
    assert text.startswith(head)
    # Little is given up: the part of a character that did not fit (the marker's room is
    # kept for the count at its longest, the whole text's size: the same digits here).
    assert utf8_size(kept) > limit - 4
    assert marker == f"{utf8_size(text) - utf8_size(head)} more bytes]"


def test_a_limit_too_small_for_the_marker_keeps_whole_characters_only() -> None:
    assert cut_utf8("\U0001f600" * 10, 6) == "\U0001f600"


def test_a_lone_surrogate_counts_the_three_bytes_of_the_u_fffd_it_becomes() -> None:
    assert utf8_size("\ud800") == utf8_size("\ufffd") == 3
    assert utf8_size(cut_utf8("\ud800" * 100, 50)) <= 50


@pytest.mark.parametrize("limit", [4096, 4097, 4098, 4099, 65536])
@pytest.mark.parametrize("text", ["x" * 70_000, "\U0001f600" * 20_000, MIXED * 8000])
def test_a_text_cut_to_its_end_keeps_the_end_after_the_marker(text: str, limit: int) -> None:
    kept = cut_utf8_end(text, limit)

    assert utf8_size(kept) <= limit and utf8_size(kept) > limit - 4
    marker, _, tail = kept.partition("]")
    assert text.endswith(tail)
    assert marker == f"…[{utf8_size(text) - utf8_size(tail)} earlier bytes"


def test_a_text_within_the_limit_or_too_small_for_the_marker_keeps_whole_characters() -> None:
    assert cut_utf8_end("\U0001f600" * 10, 40) == "\U0001f600" * 10
    assert cut_utf8_end("a\U0001f600" * 10, 6) == "a\U0001f600"
