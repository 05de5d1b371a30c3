"""A fleet's PostgreSQL statements past 1024 descriptors (select()'s FD_SETSIZE).

The executor may hold more (connections, slots): its statements wait on a socket whose
number is then above 1023, which select() refuses (ValueError) and poll() does not.
"""

from __future__ import annotations

import os

import pytest

from executor.sql import connect_postgres
from tests.helpers.descriptors import FIRST_FREE, descriptors_past_fd_setsize

pytestmark = pytest.mark.service


def test_a_prepared_statement_runs_on_a_socket_numbered_past_1023(pg_url: str) -> None:
    with descriptors_past_fd_setsize():
        db = connect_postgres(pg_url)
        try:
            assert db.execute("SELECT 1").fetchone()[0] == 1
            assert db.fetchone_prepared("SELECT ?::bigint AS n", (7,)) == {"n": 7}
        finally:
            db.close()


def test_the_filler_numbers_new_descriptors_past_fd_setsize() -> None:
    with descriptors_past_fd_setsize():
        fd = os.open(os.devnull, os.O_RDONLY)
        os.close(fd)
    assert fd >= FIRST_FREE
