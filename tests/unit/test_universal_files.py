"""What a callbacks.conf and the files it names may hold: anything else is an error, never a crash.

Probe 69: a Python file the compiler refuses with RecursionError, a NUL in a file name
or a FIFO named as a file escaped the loader (start-up and check-config crashed, a reload
answered INTERNAL); a callbacks.conf linked out of its directory was read and quoted
whole, line by line; a directory named twice through a link fired every callback twice.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest

from executor.cli.check_config import _universal
from executor.config import Settings
from executor.errors import ConfigError
from executor.model import Language
from executor.runtimes.check import check_source
from executor.triggers.universal import UniversalCallback, UniversalConfigError, load_universal
from tests.helpers.trigger_engines import Engines, Recorder

pytestmark = pytest.mark.unit

# CPython 3.11 gives up on each: "maximum recursion depth exceeded during compilation",
# and a MemoryError for the unary chain.
TOO_DEEP = "MSG = " + " + ".join(f'"s{i}"' for i in range(3000)) + "\n"
TOO_MANY_UNARY = "x = " + "-" * 200_000 + "1\n"


def _directory(path: Path, conf: str, **files: str) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "ok.py").write_text("print('ok')\n")
    for name, text in files.items():
        (path / name).write_text(text)
    (path / "callbacks.conf").write_text(conf)
    return path


def _errors(directories: list[Path]) -> list[str]:
    with pytest.raises(UniversalConfigError) as raised:
        load_universal(directories, lambda _: None, check_code=check_source)
    return raised.value.errors


@pytest.mark.parametrize(
    ("code", "error"), [(TOO_DEEP, "RecursionError"), (TOO_MANY_UNARY, "MemoryError")]
)
def test_a_file_too_deep_to_compile_is_an_error_of_its_line(
    tmp_path: Path, code: str, error: str
) -> None:
    conf = _directory(
        tmp_path, "ok.py = done-job-self\ndeep.py = done-job-self\n", **{"deep.py": code}
    )

    (said,) = _errors([conf])

    assert said.startswith(f"{conf}/deep.py:1: {error}")
    assert said.endswith(f"(named at {conf}/callbacks.conf:2)")


def test_a_nul_in_a_file_name_is_an_error_of_its_line(tmp_path: Path) -> None:
    conf = _directory(tmp_path, "ok.py = done-job-self\nok\x00.py = done-job-self\n")

    assert _errors([conf]) == [
        f"{conf}/callbacks.conf:2: 'ok\\x00.py' holds a control character: not a file name"
    ]


def test_a_fifo_with_a_writer_is_refused_unread(tmp_path: Path) -> None:
    conf = _directory(tmp_path, "ok.py = done-job-self\npipe.py = done-job-self\n")
    os.mkfifo(conf / "pipe.py")
    loaded = threading.Event()

    def write() -> None:
        """Hold the FIFO open with nothing written until the load is over."""
        with open(conf / "pipe.py", "wb"):
            loaded.wait(timeout=30)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        assert _errors([conf]) == [
            f"{conf}/callbacks.conf:2: pipe.py is not a regular file: not read"
        ]
    finally:
        loaded.set()
        # A writer still waiting in its open (the load's was too short to meet) gets a reader.
        with open(os.open(conf / "pipe.py", os.O_RDONLY | os.O_NONBLOCK), "rb"):
            writer.join(timeout=30)
    assert not writer.is_alive()


def test_a_callbacks_conf_that_is_no_regular_file_is_refused_unread(tmp_path: Path) -> None:
    conf = tmp_path / "callback"
    conf.mkdir()
    os.mkfifo(conf / "callbacks.conf")  # no writer: a blocking open would wait for ever

    assert _errors([conf]) == [
        f"{conf}/callbacks.conf: callbacks.conf is not a regular file: not read"
    ]


def test_a_callbacks_conf_linked_out_of_its_directory_is_refused_unread(tmp_path: Path) -> None:
    secret = tmp_path / "private" / "tls.key"
    secret.parent.mkdir()
    secret.write_text("MIGHAgEAMBMGByqGSM49AgEGCCqGSM49AwEHBG0wawIBAQQg=\nroot:$6$salt:19000::\n")
    conf = tmp_path / "callback"
    conf.mkdir()
    (conf / "callbacks.conf").symlink_to(secret)

    assert _errors([conf]) == [
        f"{conf}/callbacks.conf: callbacks.conf leads outside {conf} (a symbolic link?): not read"
    ]


def test_an_unparseable_line_is_quoted_short(tmp_path: Path) -> None:
    long_line = "x" * 5000
    conf = _directory(
        tmp_path, f"{long_line}\n{'y' * 5000} = done-job-self\n{'z' * 200}.py = done-job-self\n"
    )

    first, second, third = _errors([conf])

    assert first == (
        f"{conf}/callbacks.conf:1: expected 'filename [options] = trigger', got "
        f"'{'x' * 60}'... (5000 characters)"
    )
    assert second == (
        f"{conf}/callbacks.conf:2: '{'y' * 60}'... (5000 characters) has no known extension "
        "(.py, .pl, .qcb)"
    )
    assert third == (
        f"{conf}/callbacks.conf:3: cannot read {'z' * 60}... (203 characters): No such file or directory"
    )


def test_a_byte_order_mark_is_not_part_of_the_first_line(tmp_path: Path) -> None:
    conf = _directory(tmp_path, "")
    (conf / "callbacks.conf").write_bytes("\ufeffok.py = done-job-self\n".encode())

    (loaded,) = load_universal([conf], lambda _: None, check_code=check_source)

    assert loaded.source == f"{conf}/ok.py"


def test_check_config_warns_of_a_file_too_deep_to_compile(tmp_path: Path) -> None:
    callbacks = _directory(
        tmp_path / "callback", "deep.py = done-job-self\n", **{"deep.py": TOO_DEEP}
    )
    settings = Settings(data_dir=tmp_path / "data", universal_callback_path=str(callbacks))

    said = _universal(settings)

    assert said.startswith("NOT LOADED: callbacks.conf has 1 problem; start-up would run without")
    assert f"WARNING: {callbacks}/deep.py:1: RecursionError" in said
    with pytest.raises(ConfigError, match="RecursionError"):
        _universal(settings.replace(strict=True))


async def test_a_reload_that_meets_a_file_too_deep_to_compile_keeps_the_set(
    tmp_path: Path, engines: Engines
) -> None:
    conf = _directory(tmp_path / "callback", "ok.py = done-job-self\n")
    engine = engines(Recorder(), universal_dirs=[conf], check_code=check_source)
    assert engine.reload_universal() == []
    (conf / "deep.py").write_text(TOO_DEEP)
    (conf / "callbacks.conf").write_text("ok.py = done-job-self\ndeep.py = done-job-self\n")

    (problem,) = engine.reload_universal()

    assert f"{conf}/deep.py:1: RecursionError" in problem
    assert engine.universal_reload.errors == (problem,)  # the metrics and the dashboard say it
    assert [cb.source for cb in engine.universal] == [f"{conf}/ok.py"]


def test_a_directory_named_again_through_a_link_is_refused(tmp_path: Path) -> None:
    conf = _directory(tmp_path / "cb", "ok.py = done-job-self\n")
    (tmp_path / "cb-link").symlink_to(conf)
    (tmp_path / "sub").mkdir()
    aliases = [tmp_path / "cb-link", tmp_path / "sub" / ".." / "cb"]

    for alias in aliases:
        assert _errors([conf, alias]) == [
            f"universal_callback_path: '{alias}' is the directory '{conf}' names too "
            f"({conf}); name each directory once"
        ]
        entries = f"{conf}, {alias}"
        with pytest.raises(ConfigError) as raised:
            Settings(universal_callback_path=entries).universal_callback_policies  # noqa: B018
        assert str(raised.value) == (
            f"universal_callback_path: '{alias}' names the same directory as '{conf}' "
            f"({conf}); name each directory once, with its [policy=NAME] if any"
        )


def test_a_line_in_a_disabled_language_loads_with_a_warning(tmp_path: Path) -> None:
    # It loaded silently, then each firing was REJECTED: the admin learnt of it only then.
    conf = _directory(
        tmp_path / "callback",
        "ok.py = done-job-self\nlog.pl = done-job-self\n",
        **{"log.pl": "print qq(done\\n);\n"},
    )

    python, perl = load_universal([conf], lambda _: None, languages={"python"})

    assert python.warnings == ()
    assert perl.warnings == (
        f"{conf}/callbacks.conf:2: perl callbacks are disabled by the executor's 'languages' "
        "setting: each firing of this line is refused (REJECTED)",
    )
    settings = Settings(
        data_dir=tmp_path / "data",
        universal_callback_path=str(conf),
        languages=frozenset({Language.PYTHON}),
    )
    said = _universal(settings)
    assert said.startswith("2 from ")
    assert "WARNING: " + perl.warnings[0] in said


def test_a_qcb_file_with_a_byte_order_mark_loads_without_it(tmp_path: Path) -> None:
    # Probe 99: '\ufeffmail-status' was an unknown code string and refused the reload.
    conf = _directory(tmp_path, "bom.qcb = done-job-self\n")
    (conf / "bom.qcb").write_bytes("\ufeffmail-status\r\n".encode())

    (loaded,) = load_universal([conf], lambda _: None, check_code=check_source)

    assert (loaded.language, loaded.code) == ("qube", "mail-status")


def test_a_qcb_comment_holding_a_semicolon_is_no_code(tmp_path: Path) -> None:
    # Probe 99: "prose.qcb:1: unknown qube code string 'nothing else'" refused the reload.
    conf = _directory(
        tmp_path,
        "prose.qcb = done-job-self\n",
        **{"prose.qcb": "# Mails the status; nothing else\nmail-status\n"},
    )

    (loaded,) = load_universal([conf], lambda _: None, check_code=check_source)

    assert loaded.source == f"{conf}/prose.qcb"


def test_a_qcb_file_commented_out_loads_and_an_empty_one_does_not(tmp_path: Path) -> None:
    # Probe 144: a callback that is only a comment runs nothing (it was refused as
    # naming no code string); an empty file is a save caught half-way, refused as ever.
    conf = _directory(
        tmp_path / "off",
        "off.qcb = done-job-self\n",
        **{"off.qcb": "# not yet; mail-status\n"},
    )
    (loaded,) = load_universal([conf], lambda _: None, check_code=check_source)
    assert (loaded.language, loaded.code) == ("qube", "# not yet; mail-status")

    empty = _directory(tmp_path / "empty", "empty.qcb = done-job-self\n", **{"empty.qcb": "\n"})
    (error,) = _errors([empty])
    assert error.startswith(f"{empty}/empty.qcb:1: the qube callback has no code string")


def _checkout(directory: Path, version: str) -> None:
    """As ``git checkout`` writes a file: unlinked, then created anew."""
    for name, text in [
        ("a.py", f"print('{version}')\n"),
        ("b.py", f"print('{version}')\n"),
        ("callbacks.conf", f"a.py = submit-job-self\nb.py = done-{version}-self\n"),
    ]:
        (directory / name).unlink(missing_ok=True)
        (directory / name).write_text(text)


def _as_read(callbacks: list[UniversalCallback]) -> list[tuple[str, str, str]]:
    return [(Path(cb.source).name, cb.triggers, cb.code.strip()) for cb in callbacks]


def test_a_load_that_meets_a_checkout_half_way_reads_again(tmp_path: Path) -> None:
    # Probe 102: a load read v1's callbacks.conf and, the checkout going on meanwhile,
    # v2's b.py, and took that mix as the new good set.
    _checkout(tmp_path, "job")
    checked: list[Path] = []

    def check_while_checking_out(language: str, code: str, path: Path) -> str | None:
        checked.append(path)
        if len(checked) == 1:  # a.py read: the rest of the checkout lands now
            _checkout(tmp_path, "work")
        return None

    loaded = load_universal([tmp_path], lambda _: None, check_code=check_while_checking_out)

    assert _as_read(loaded) == [
        ("a.py", "submit-job-self", "print('work')"),
        ("b.py", "done-work-self", "print('work')"),
    ]
    assert len(checked) > 2, "read again: the first pass's files had changed"


def test_files_that_never_hold_still_are_refused_and_the_set_kept(tmp_path: Path) -> None:
    _checkout(tmp_path, "job")
    versions = iter(["work", "job"] * 10)

    def check_while_checking_out(language: str, code: str, path: Path) -> str | None:
        if path.name == "a.py":
            _checkout(tmp_path, next(versions))
        return None

    with pytest.raises(UniversalConfigError) as raised:
        load_universal([tmp_path], lambda _: None, check_code=check_while_checking_out)

    assert raised.value.errors == [
        f"{tmp_path}: files changed while being read (5 tries): not loaded; the previous "
        "set stays (reload again once the files are saved)"
    ]


def test_a_load_waits_for_a_checkout_that_pauses_half_way(tmp_path: Path) -> None:
    # Read and checked again within the pause, the half-way state held still: files
    # changed within the last 0.1 s are not taken as saved.
    _checkout(tmp_path, "job")
    time.sleep(0.2)
    (tmp_path / "callbacks.conf").write_text("a.py = submit-job-self\nb.py = done-work-self\n")
    rest = threading.Timer(0.03, _checkout, (tmp_path, "work"))
    rest.start()
    try:
        loaded = load_universal([tmp_path], lambda _: None)
    finally:
        rest.join()

    assert _as_read(loaded) == [
        ("a.py", "submit-job-self", "print('work')"),
        ("b.py", "done-work-self", "print('work')"),
    ]


def _linked_through_sub(tmp_path: Path, via: str) -> Path:
    """``c.py`` in a callbacks directory leads into its sub-directory ``sub`` (``via``)."""
    conf = _directory(tmp_path / "callback", "c.py = done-job-self\n")
    (conf / "sub").mkdir()
    (conf / "x.py").write_text("print('x')\n")
    (conf / "sub" / "x.py").write_text("print('sub x')\n")
    if via == "file":  # c.py -> sub/x.py
        (conf / "c.py").symlink_to("sub/x.py")
    else:  # c.py -> sub/y -> ../x.py: a link in sub, the file outside it
        (conf / "sub" / "y").symlink_to("../x.py")
        (conf / "c.py").symlink_to("sub/y")
    return conf


@pytest.mark.parametrize("via", ["file", "link"])
def test_a_link_through_a_sub_directory_others_may_write_is_refused(
    tmp_path: Path, via: str
) -> None:
    # Probe 138: whoever could write `sub` chose which file runs as c.py.
    conf = _linked_through_sub(tmp_path, via)
    (conf / "sub").chmod(0o777)

    assert _errors([conf]) == [
        f"{conf}/callbacks.conf:1: c.py leads through {conf}/sub, which is writable by group "
        "or others (mode 0777): whoever can write there has code run by the executor; "
        f"chmod go-w {conf}/sub"
    ]


def test_a_link_through_a_sub_directory_of_another_user_is_refused(tmp_path: Path) -> None:
    conf = _linked_through_sub(tmp_path, "link")
    os.chown(conf / "sub", 65534, -1)

    assert _errors([conf]) == [
        f"{conf}/callbacks.conf:1: c.py leads through {conf}/sub, which is owned by uid "
        f"65534, neither root nor the executor's user (uid {os.geteuid()}): whoever owns it "
        f"has code run by the executor; chown root {conf}/sub"
    ]


@pytest.mark.parametrize("via", ["file", "link"])
def test_a_link_through_a_safe_sub_directory_loads(tmp_path: Path, via: str) -> None:
    conf = _linked_through_sub(tmp_path, via)

    (loaded,) = load_universal([conf], lambda _: None)

    assert loaded.code == ("print('sub x')\n" if via == "file" else "print('x')\n")


def test_a_directory_of_another_user_is_refused_in_plain_words(tmp_path: Path) -> None:
    conf = _directory(tmp_path / "callback", "ok.py = done-job-self\n")
    os.chown(conf, 65534, -1)

    assert _errors([conf]) == [
        f"{conf}: the directory is owned by uid 65534, neither root nor the executor's user "
        f"(uid {os.geteuid()}): whoever owns it has code run by the executor; chown root {conf}"
    ]
