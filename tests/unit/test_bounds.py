"""``bounds.cut``: text cut to a stated size, the marker included."""

from __future__ import annotations

import pytest

from executor.bounds import cut


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
