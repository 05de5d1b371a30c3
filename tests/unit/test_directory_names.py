"""``directory_names.DirectoryNames``: a directory named again under another name is found."""

from __future__ import annotations

from pathlib import Path

from executor.directory_names import Alias, DirectoryNames


def test_a_second_name_of_a_directory_names_the_first_and_the_real_path(tmp_path: Path) -> None:
    real = tmp_path / "cb"
    real.mkdir()
    (tmp_path / "cb-link").symlink_to(real)
    (tmp_path / "sub").mkdir()
    names = DirectoryNames()

    assert names.alias(real) is None
    # A symbolic link, "..", a doubled slash: each the same directory again.
    for again in (tmp_path / "cb-link", tmp_path / "sub" / ".." / "cb", Path(f"{tmp_path}//cb")):
        assert names.alias(again) == Alias(first=real, real=str(real))


def test_distinct_directories_and_missing_ones_are_each_named_once(tmp_path: Path) -> None:
    names = DirectoryNames()
    (tmp_path / "a").mkdir()

    # A directory not there (yet) has a real path too: its name as resolved so far.
    assert [names.alias(tmp_path / d) for d in ("a", "b", "missing")] == [None, None, None]
    assert names.alias(tmp_path / "missing") == Alias(
        tmp_path / "missing", str(tmp_path / "missing")
    )


def test_an_alias_is_not_remembered_in_place_of_the_first_name(tmp_path: Path) -> None:
    (tmp_path / "cb").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "cb")
    names = DirectoryNames()
    names.alias(tmp_path / "cb")
    names.alias(tmp_path / "link")

    # The third name is still told the first, not the alias refused before it.
    assert names.alias(tmp_path / "sub" / ".." / "cb") == Alias(
        tmp_path / "cb", str(tmp_path / "cb")
    )
