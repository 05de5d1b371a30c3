"""The site's secret files outside every mask, readable by anyone: no callback reads them.

As a site lays them out (``/etc``, root's default umask: mode 0644): the config file
holding ``auth_token``, the TLS key, a policy's ``env_files``. Each child binds
``/dev/null`` over them, on both launchers, in Python and Perl, under the ``job``
policy, under a host-network one (whose callbacks could call the executor's port with
the token) and under one whose group may read the env file (a cold child).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pytest

from executor import server
from supervisor_client import ExecutorClient
from supervisor_client.qbcallback.v1 import executor_pb2
from tests.conftest import TEST_UID_BASE, stack_settings
from tests.service.test_security import _make_pki

pytestmark = [
    pytest.mark.hostile,
    pytest.mark.timeout(120),
    pytest.mark.skipif(os.geteuid() != 0, reason="the hardened tier needs root"),
]

Outcome = executor_pb2.Outcome
SITE_TOKEN: Final = "site-token-no-callback-may-read"
PIPELINE_SECRET: Final = "pipeline-secret-of-the-env-file"
# The group the admin policy gives its callbacks, which may read the env file.
GRANTED_GROUP: Final = TEST_UID_BASE + 902
# Slots of the executor whose prepared children are checked: each has a cell per language.
SLOTS: Final = 2

# Each path, a tab, then what reading it gave: its bytes in hex, or ! and the error.
READ: Final = {
    "python": (
        "for path in PATHS:\n"
        "    try:\n"
        "        with open(path, 'rb') as f:\n"
        "            print(path, f.read().hex(), sep='\\t')\n"
        "    except OSError as err:\n"
        "        print(path, '!' + err.strerror, sep='\\t')\n"
    ),
    "perl": (
        "for my $path (PATHS) {\n"
        "    if (open(my $f, '<:raw', $path)) {\n"
        "        local $/;\n"
        "        my $content = <$f> // '';\n"
        '        print "$path\\t", unpack("H*", $content), "\\n";\n'
        "    } else {\n"
        '        print "$path\\t!$!\\n";\n'
        "    }\n"
        "}\n"
    ),
}


@dataclass(frozen=True)
class SiteFiles:
    config: Path
    tls_cert: Path
    tls_key: Path
    ca: Path
    env_file: Path

    @property
    def secret(self) -> list[Path]:
        return [self.config, self.tls_key, self.env_file]


@pytest.fixture
def site_files() -> Iterator[SiteFiles]:
    """The files in a directory of /etc (no mask covers it), open to everyone as umask 022 makes them."""
    directory = Path(tempfile.mkdtemp(prefix=f"cbexec-test-{TEST_UID_BASE}-", dir="/etc"))
    try:
        directory.chmod(0o755)
        pki_dir = directory / "pki"
        pki_dir.mkdir(mode=0o755)
        pki = _make_pki(pki_dir)
        config = directory / "cbexec.toml"
        config.write_text(f'auth_token = "{SITE_TOKEN}"\n')
        env_file = directory / "pipeline-token"
        env_file.write_text(PIPELINE_SECRET)
        os.chown(env_file, 0, GRANTED_GROUP)
        for path in (config, pki.server_cert, pki.server_key, pki.ca):
            path.chmod(0o644)
        env_file.chmod(0o640)  # its group may read it: the admin policy's callbacks
        yield SiteFiles(config, pki.server_cert, pki.server_key, pki.ca, env_file)
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
async def started() -> AsyncIterator[list[server.RunningServer]]:
    running: list[server.RunningServer] = []
    try:
        yield running
    finally:
        for each in running:
            await each.stop()


async def site_executor(
    started: list[server.RunningServer], tmp_path: Path, files: SiteFiles, **overrides: object
) -> ExecutorClient:
    """An executor with the site's files as its settings name them, and a TLS client."""
    settings = stack_settings(
        tmp_path / "data",
        config_file=str(files.config),
        tls_cert=str(files.tls_cert),
        tls_key=str(files.tls_key),
        policies={
            "pipeline": {
                "network": "host",
                "env_files": {"PIPELINE_TOKEN": str(files.env_file)},
                "users": ["pipeline"],
            },
            "admin": {"group": GRANTED_GROUP, "users": ["admin"]},
        },
        **overrides,
    )
    running = await server.start(settings)
    started.append(running)
    return ExecutorClient(f"127.0.0.1:{running.port}", root_certificates=files.ca.read_bytes())


async def read_as(
    client: ExecutorClient, user: str, language: str, paths: list[Path]
) -> dict[str, str]:
    """What ``user``'s callback read of each path: its content, or ! and the error."""
    listed = ", ".join(repr(str(p)) for p in paths)
    code = READ[language].replace("PATHS", f"[{listed}]" if language == "python" else listed)
    response = await client.execute_callback(
        language=language, code=code, job={"id": 1, "user": user}, timeout=60
    )
    assert response.outcome == Outcome.OUTCOME_SUCCEEDED, response
    seen = {}
    for line in response.stdout.splitlines():
        path, _, result = line.partition("\t")
        seen[path] = result if result.startswith("!") else bytes.fromhex(result).decode()
    assert sorted(seen) == sorted(str(p) for p in paths), response.stdout
    return seen


def read_anything(seen: dict[str, str]) -> dict[str, str]:
    return {path: content for path, content in seen.items() if content and content[0] != "!"}


@pytest.mark.parametrize("launcher", ["zygote", "cold"])
async def test_no_callback_reads_the_config_file_the_tls_key_or_an_env_file(
    tmp_path: Path, site_files: SiteFiles, started: list[server.RunningServer], launcher: str
) -> None:
    client = await site_executor(started, tmp_path, site_files, launcher=launcher)
    async with client:
        for user in ("alice", "pipeline", "admin"):  # job, host network, a group (cold)
            for language in ("python", "perl"):
                seen = await read_as(client, user, language, site_files.secret)
                assert not read_anything(seen), (user, language, seen)
        # The public certificate stays readable: nothing secret in it.
        seen = await read_as(client, "alice", "python", [site_files.tls_cert])
        assert read_anything(seen), seen


async def test_a_config_file_replaced_or_removed_while_running_stays_hidden(
    tmp_path: Path, site_files: SiteFiles, started: list[server.RunningServer]
) -> None:
    # An editor's save writes a new file and renames it over the old one: the kernel
    # then takes away every mount on the old file, in every namespace (a zygote's too).
    # Each child covers the file the name holds when it starts.
    client = await site_executor(started, tmp_path, site_files, prepare_ahead=False)
    async with client:
        for language in ("python", "perl"):
            assert not read_anything(await read_as(client, "alice", language, site_files.secret))
        saved = site_files.config.with_suffix(".new")
        saved.write_text(f'auth_token = "{SITE_TOKEN}-edited"\n')
        saved.chmod(0o644)
        saved.rename(site_files.config)
        for language in ("python", "perl"):
            seen = await read_as(client, "pipeline", language, [site_files.config])
            assert not read_anything(seen), (language, seen)
        site_files.config.unlink()  # nothing left to hide: the runs go on
        for language in ("python", "perl"):
            seen = await read_as(client, "alice", language, [site_files.config])
            assert seen == {str(site_files.config): "!No such file or directory"}, seen


async def test_a_child_prepared_before_the_config_file_was_replaced_is_not_run(
    tmp_path: Path, site_files: SiteFiles, started: list[server.RunningServer]
) -> None:
    # A prepared child covered the file the name held when it started: a save by rename
    # since took its cover away, and the new file would be there to read, for as long
    # as that child waited for its run.
    client = await site_executor(
        started, tmp_path, site_files, prepare_ahead=True, max_concurrent=SLOTS
    )
    async with client:
        for language in ("python", "perl") * SLOTS:  # each cell has a prepared child now
            assert not read_anything(await read_as(client, "alice", language, site_files.secret))
        await asyncio.sleep(1)  # the last ones prepared before the save, not during it
        saved = site_files.config.with_suffix(".new")
        saved.write_text(f'auth_token = "{SITE_TOKEN}-edited"\n')
        saved.chmod(0o644)
        saved.rename(site_files.config)
        for language in ("python", "perl") * SLOTS:  # runs go round the slots' cells
            seen = await read_as(client, "alice", language, [site_files.config])
            assert not read_anything(seen), (language, seen)
        # Removed, then made again: the children prepared meanwhile had nothing to cover.
        site_files.config.unlink()
        for language in ("python", "perl") * SLOTS:
            await read_as(client, "alice", language, [site_files.config])
        site_files.config.write_text(f'auth_token = "{SITE_TOKEN}-made-again"\n')
        for language in ("python", "perl") * SLOTS:
            seen = await read_as(client, "alice", language, [site_files.config])
            assert not read_anything(seen), (language, seen)
