"""What the clients refuse before gRPC sees it: TLS halves, empty CAs, tokens, ports, timeouts.

Each of these once reached gRPC, which aborted the process (half a client certificate),
quietly spoke plaintext (an empty CA), raised an error naming nothing (a token with a
newline), connected elsewhere (port 99999 is 34463 to it) or answered DEADLINE_EXCEEDED
at once (NaN seconds).
"""

from __future__ import annotations

import math
from typing import Any

import grpc
import pytest

from executor.api.connections import KEEPALIVE_SERVER_OPTIONS
from supervisor_client import ExecutorClient, FarmClient
from supervisor_client.client import MAX_TIMEOUT_S, check_timeout
from supervisor_client.credentials import (
    KEEPALIVE_OPTIONS,
    KEEPALIVE_TIME_MS,
    MAX_TOKEN_CHARS,
    check_tls,
    clean_token,
)
from tests.helpers.static_pki import CA_CERT, LEAF_CERT, LEAF_KEY, LEAF_KEY_ENCRYPTED, OTHER_KEY

pytestmark = pytest.mark.unit

CA = b"-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
KEY = b"-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n"
ADDRESS = "127.0.0.1:1"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"private_key": KEY}, "private_key without certificate_chain"),
        ({"certificate_chain": CA}, "certificate_chain without private_key"),
        ({"root_certificates": b""}, "root_certificates is empty"),
        ({"root_certificates": b" \n"}, "root_certificates is empty"),
        ({"root_certificates": b"not a pem"}, "root_certificates holds no PEM certificate"),
        ({"private_key": CA, "certificate_chain": CA}, "private_key holds no PEM private key"),
        ({"private_key": KEY, "certificate_chain": KEY}, "certificate_chain holds no PEM"),
    ],
)
async def test_tls_material_gRPC_would_misuse_is_refused(
    given: dict[str, bytes], message: str
) -> None:
    for client in (ExecutorClient, FarmClient):
        with pytest.raises(ValueError, match=message):
            client(ADDRESS, **given)  # type: ignore[arg-type]


def test_tls_material_that_can_work_passes() -> None:
    check_tls(CA_CERT, None, None)
    check_tls(CA_CERT, LEAF_KEY, LEAF_CERT)
    check_tls(None, LEAF_KEY, LEAF_CERT + CA_CERT)  # a chain
    check_tls(CA_CERT + LEAF_CERT, None, None)  # a bundle
    check_tls(None, None, None)
    with pytest.raises(TypeError, match="expected PEM bytes, got str"):
        check_tls(CA.decode(), None, None)  # type: ignore[arg-type]


# A marker with no certificate (or key) inside: gRPC failed every call with a retryable
# UNAVAILABLE "Failed to create security handshaker", the reason only on its stderr.
NOT_A_CERT = b"-----BEGIN CERTIFICATE-----\nZ2FyYmFnZQ==\n-----END CERTIFICATE-----\n"
NOT_A_KEY = b"-----BEGIN PRIVATE KEY-----\nZ2FyYmFnZQ==\n-----END PRIVATE KEY-----\n"


@pytest.mark.parametrize(
    ("given", "message"),
    [
        ({"root_certificates": NOT_A_CERT}, "root_certificates: holds no certificate OpenSSL"),
        ({"root_certificates": CA_CERT + NOT_A_CERT}, "root_certificates: holds no cert"),
        (
            {"certificate_chain": NOT_A_CERT, "private_key": LEAF_KEY},
            "certificate_chain: holds no certificate OpenSSL can read",
        ),
        (
            {"certificate_chain": LEAF_CERT, "private_key": NOT_A_KEY},
            "private_key: holds no private key OpenSSL can read",
        ),
        (
            {"certificate_chain": LEAF_CERT, "private_key": LEAF_KEY_ENCRYPTED},
            "private_key: is encrypted",
        ),
        (
            {"certificate_chain": LEAF_CERT, "private_key": OTHER_KEY},
            "private_key: is not the private key of the certificate in certificate_chain",
        ),
    ],
)
async def test_tls_material_openssl_cannot_use_is_refused_before_any_call(
    given: dict[str, bytes], message: str
) -> None:
    for client in (ExecutorClient, FarmClient):
        with pytest.raises(ValueError, match=message) as refused:
            client(ADDRESS, **given)  # type: ignore[arg-type]
        assert b"BEGIN" not in str(refused.value).encode(), "the material is never shown"


def test_a_token_too_long_for_grpc_metadata_is_refused_without_showing_it() -> None:
    # gRPC refuses a random share of calls whose headers pass 8 KiB, and all past 16 KiB.
    assert clean_token("t" * MAX_TOKEN_CHARS) == "t" * MAX_TOKEN_CHARS
    token = "s3cret" + "t" * MAX_TOKEN_CHARS
    with pytest.raises(ValueError, match=f"{len(token)} characters, more than") as refused:
        clean_token(token)
    assert "s3cret" not in str(refused.value)


def test_a_token_is_taken_without_surrounding_whitespace() -> None:
    assert clean_token("tok\n") == "tok"
    assert clean_token("  tok-s3cret\r\n") == "tok-s3cret"
    assert clean_token("a b") == "a b"
    assert clean_token("") is None
    assert clean_token(" \n") is None
    assert clean_token(None) is None


@pytest.mark.parametrize("token", ["tøk", "to\nk", "tok\x00", "t\tok"])
async def test_a_token_metadata_cannot_carry_is_refused_without_showing_it(token: str) -> None:
    with pytest.raises(ValueError, match="is not printable ASCII") as refused:
        ExecutorClient(ADDRESS, token=token)
    assert token.strip() not in str(refused.value)


async def test_options_with_a_channel_given_are_refused_not_ignored() -> None:
    async with grpc.aio.insecure_channel(ADDRESS) as channel:
        with pytest.raises(ValueError, match="token: not with a channel given"):
            ExecutorClient(channel, token="tok")
        with pytest.raises(ValueError, match="root_certificates: not with a channel given"):
            FarmClient(channel, root_certificates=CA)
        ExecutorClient(channel)  # alone: fine


@pytest.mark.parametrize(
    ("address", "error", "message"),
    [
        ("127.0.0.1:99999", ValueError, "port 99999 is out of range"),
        ("127.0.0.1:0", ValueError, "port 0 is out of range"),
        ("127.0.0.1:1,127.0.0.1:99999", ValueError, "port 99999 is out of range"),
        ("dns:///localhost:70000", ValueError, "port 70000 is out of range"),
        (b"127.0.0.1:1", TypeError, "as a str .* got bytes"),
        (12345, TypeError, "as a str .* got int"),
        ([b"127.0.0.1:1"], TypeError, "each address as a str, got bytes"),
    ],
)
async def test_an_address_is_refused_for_the_right_reason(
    address: object, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        ExecutorClient(address)  # type: ignore[arg-type]


@pytest.mark.parametrize("timeout", [math.nan, math.inf, -math.inf, 0, -1, 1e300, 1e10])
def test_a_deadline_gRPC_would_misread_is_refused(timeout: float) -> None:
    with pytest.raises(ValueError, match="more than 0 and at most"):
        check_timeout(timeout)


def test_a_deadline_that_works_passes() -> None:
    assert check_timeout(None) is None
    assert check_timeout(0.3) == 0.3
    assert check_timeout(MAX_TIMEOUT_S) == MAX_TIMEOUT_S
    with pytest.raises(TypeError):
        check_timeout("5")  # type: ignore[arg-type]


def test_executors_accept_the_pings_clients_send() -> None:
    """Else an executor answers the third idle ping with GOAWAY too_many_pings."""
    client = dict(KEEPALIVE_OPTIONS)
    server = dict(KEEPALIVE_SERVER_OPTIONS)
    assert client["grpc.keepalive_time_ms"] == KEEPALIVE_TIME_MS
    assert client["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.keepalive_permit_without_calls"] == 1
    assert server["grpc.http2.min_ping_interval_without_data_ms"] < KEEPALIVE_TIME_MS


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda c: c.get_run(1), TypeError, "invocation_id: expected a str, got int"),
        (lambda c: c.explain_callbacks("7"), TypeError, "job_id: expected an int .* got str"),
        (lambda c: c.list_runs(limit=-1), ValueError, "limit: expected an int from 0 to .* -1"),
        (lambda c: c.list_runs(job_id=True), TypeError, "job_id: expected an int .* got bool"),
        (lambda c: c.list_registered_jobs(job_id=2**64), ValueError, "job_id: .* got 1844"),
        (lambda c: c.list_dead_letters(limit=1.5), TypeError, "limit: expected an int"),
        (lambda c: c.health(3), TypeError, "service: expected a str, got int"),
        (lambda c: c.publish_event(name="complete", job_id="9"), TypeError, "job_id: expected"),
        (lambda c: c.dry_run(work_name=5), TypeError, "work_name: expected a str, got int"),
        # A str is not taken as its characters ("a", "b", "c").
        (lambda c: c.retry_dead_letters("abc"), TypeError, "sequence of str, got str"),
        (lambda c: c.retry_dead_letters(["a", 1]), TypeError, "got int at index 1"),
        (lambda c: c.register_job({"id": 1}, published_events="complete"), TypeError, "got str"),
        (
            lambda c: c.execute_callback(language="python", code="", job={"id": 1}, owner=1),
            TypeError,
            "owner: expected a str, got int",
        ),
        (
            lambda c: c.execute_callback(language="python", code=1, job={"id": 1}),
            TypeError,
            "code: expected a str, got int",
        ),
        (
            lambda c: c.execute_callback(language="python", code="", job={"id": 1}, subjob_id="2"),
            TypeError,
            "subjob_id: expected an int",
        ),
        (
            lambda c: c.execute_callback(
                language="python", code="", job={"id": 1}, limits={"wall_seconds": "5"}
            ),
            TypeError,
            "wall_seconds: expected a number, got str",
        ),
    ],
)
async def test_an_argument_the_request_cannot_hold_is_refused_by_name(
    call: Any, error: type[Exception], message: str
) -> None:
    """Protobuf's own error named nothing ("bad argument type for built-in operation")."""
    async with ExecutorClient(ADDRESS) as client:
        with pytest.raises(error, match=message):
            await call(client)


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda f: f.get_job("3"), "job_id: expected an int .* got str"),
        (lambda f: f.take_work(host=1), "host: expected a str, got int"),
        (lambda f: f.change_work(job_id=1, work="1-10", change="complete"), "work: .* got str"),
        (lambda f: f.wait_jobs([1, "2"]), "job_ids: .* got str at index 1"),
    ],
)
async def test_a_farm_argument_the_request_cannot_hold_is_refused_by_name(
    call: Any, message: str
) -> None:
    async with FarmClient(ADDRESS) as farm:
        with pytest.raises(TypeError, match=message):
            await call(farm)


class _NotJson:
    """A value no Struct (JSON) can hold."""


CALLBACK = {"triggers": "complete-job-self", "language": "python", "code": "print(1)"}


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        # The job itself, not a dict: Python's own words named nothing.
        (lambda c: c.register_job([1]), TypeError, "job: expected a job dict .* got list"),
        (lambda c: c.register_job("abc"), TypeError, "job: expected a job dict .* got str"),
        (lambda c: c.register_job(None), TypeError, "job: expected a job dict .* got NoneType"),
        (
            lambda c: c.execute_callback(language="python", code="", job=5),
            TypeError,
            "job: expected a job dict .* got int",
        ),
        # A field of a job's callback: protobuf said "bad argument type for built-in operation".
        (
            lambda c: c.register_job({"id": 5, "callbacks": [{**CALLBACK, "code": 5}]}),
            ValueError,
            r"^callbacks\[0\]\.code: expected a str, got int$",
        ),
        (
            lambda c: c.register_job({"id": 5, "callbacks": [CALLBACK, {**CALLBACK, "id": "x"}]}),
            ValueError,
            r"^callbacks\[1\]\.id: expected an int .* got str$",
        ),
        (
            lambda c: c.register_job({"id": 5, "callbacks": [{**CALLBACK, "mode": [1]}]}),
            ValueError,
            r"^callbacks\[0\]\.mode: \[1\]; expected edge or level$",
        ),
        # A field of the job dict, named with what it takes.
        (
            lambda c: c.register_job({"id": "x"}),
            ValueError,
            r"^job field 'id': expected an int .* got 'x'$",
        ),
        (
            lambda c: c.register_job({"id": 1, "agenda": 5}),
            ValueError,
            r"^job field 'agenda': expected a list of work items, got int$",
        ),
        (
            lambda c: c.register_job({"id": 1, "agenda": "123"}),
            ValueError,
            r"^job field 'agenda': expected a list of work items, got str$",
        ),
        (
            lambda c: c.register_job({"id": 1, "agenda": ["1", {"name": "2", "count": "x"}]}),
            ValueError,
            r"^agenda\[1\]\.count: expected an int from 0 to 4294967295, got str$",
        ),
        (
            lambda c: c.register_job({"id": 1, "agenda": [{"name": "1", "resultpackage": 5}]}),
            ValueError,
            r"^agenda\[0\]\.resultpackage: expected a dict, got int$",
        ),
        (
            lambda c: c.register_job({"id": 1, "agenda": [{"name": "1", "count": -1}]}),
            ValueError,
            r"^agenda\[0\]\.count: expected an int from 0 to 4294967295, got -1$",
        ),
        (
            lambda c: c.register_job({"id": 1, "subjobs": [{"id": 2**40}]}),
            ValueError,
            r"^subjobs\[0\]\.id: expected an int from -2147483648 to 2147483647, got 1099511627776$",
        ),
        (
            lambda c: c.register_job({"id": 1, "subjobs": [5]}),
            ValueError,
            r"^subjobs\[0\]: expected a dict, got int$",
        ),
        (
            lambda c: c.register_job({"id": 1, "when": _NotJson()}),
            ValueError,
            r"^job field 'when': expected a JSON value .* got _NotJson$",
        ),
        # The other plain-value arguments.
        (
            lambda c: c.execute_callback(language="python", code="", job={"id": 1}, event=5),
            TypeError,
            "event: expected a dict, got int",
        ),
        (
            lambda c: c.execute_callback(language="python", code="", job={"id": 1}, event="abc"),
            TypeError,
            "event: expected a dict, got str",
        ),
        (
            lambda c: c.execute_callback(
                language="python", code="", job={"id": 1}, event={"bogus": "x"}
            ),
            ValueError,
            r"^event\.bogus: not a field of Event; expected one of name, type, ",
        ),
        (
            lambda c: c.execute_callback(language="python", code="", job={"id": 1}, limits="abc"),
            TypeError,
            "limits: expected a dict, got str",
        ),
        (
            lambda c: c.execute_callback(
                language="python", code="", job={"id": 1}, limits={"wall": 1}
            ),
            ValueError,
            r"^limits\.wall: not a field of Limits; expected one of ",
        ),
        (lambda c: c.execute({"code": ""}), TypeError, "request: expected an ExecuteRequest"),
        (lambda c: c.publish_event({"name": "x"}), TypeError, "request: expected a Publish"),
        (lambda c: c.publish_event(bogus=1), ValueError, "^bogus: not a field of PublishEvent"),
        (lambda c: c.dry_run("x"), TypeError, "request: expected a DryRunRequest, got str"),
        (lambda c: c.list_runs({"job_id": 1}), TypeError, "request: expected a ListRunsRequest"),
        (lambda c: c.list_runs(outcome=5), TypeError, "outcome: expected a str, got int"),
        (lambda c: c.publish_events(5), TypeError, "events: expected a sequence .* got int"),
        (lambda c: c.publish_events("ab"), TypeError, "events: expected a sequence .* got str"),
        (lambda c: c.publish_events([5]), TypeError, r"events\[0\]: expected a dict .* got int"),
        (
            lambda c: c.publish_events([{"name": "complete"}, {"job_id": "x"}]),
            TypeError,
            r"^events\[1\]\.job_id: expected an int",
        ),
    ],
)
async def test_every_argument_is_refused_by_its_name(
    call: Any, error: type[Exception], message: str
) -> None:
    """Each once raised Python's or protobuf's own words, naming no argument."""
    async with ExecutorClient(ADDRESS) as client:
        with pytest.raises(error, match=message):
            await call(client)


@pytest.mark.parametrize(
    ("call", "error", "message"),
    [
        (lambda f: f.submit_jobs(5), TypeError, "jobs: expected a sequence of job dicts, got int"),
        (lambda f: f.submit_jobs("ab"), TypeError, "jobs: expected a sequence .* got str"),
        (lambda f: f.submit_jobs({"name": "a"}), TypeError, "jobs: expected a sequence .* dict"),
        (lambda f: f.submit_jobs([{}, 5]), TypeError, r"^jobs\[1\]: expected a dict, got int$"),
        # README "Limits and outcomes": the executor names it so, counting from 0.
        (
            lambda f: f.submit_jobs([{"name": "a"}, {"name": "b", "priority": math.nan}]),
            ValueError,
            r"^jobs\[1\]\.priority: NaN is not a JSON number; a Struct's numbers must be finite$",
        ),
        (
            lambda f: f.submit_jobs(
                [{"agenda": [{"name": "1", "resultpackage": {"x": [1, -math.inf]}}]}]
            ),
            ValueError,
            r"^jobs\[0\]\.agenda\[0\]\.resultpackage\.x\[1\]: -Infinity is not a JSON number",
        ),
        (
            lambda f: f.submit_jobs([{"name": "a", "when": _NotJson()}]),
            TypeError,
            r"^jobs\[0\]\.when: expected a JSON value .* got _NotJson$",
        ),
        (lambda f: f.list_jobs("x"), TypeError, "request: expected a ListJobsRequest, got str"),
        (
            lambda f: f.change_work(job_id=1, work=["1"], change=5),
            TypeError,
            "change: expected a str, got int",
        ),
        (
            lambda f: f.change_work(job_id=1, work=["1"], change="complete", result_package="ab"),
            TypeError,
            "result_package: expected a dict, got str",
        ),
        (
            lambda f: f.change_work(
                job_id=1, work=["1"], change="complete", result_package={"x": _NotJson()}
            ),
            TypeError,
            r"^result_package\.x: expected a JSON value .* got _NotJson$",
        ),
        (lambda f: f.change_job(job_id=1, verb=5), TypeError, "verb: expected a str, got int"),
        (lambda f: f.wait_jobs([1], wait_seconds="x"), TypeError, "^wait_seconds: expected a"),
    ],
)
async def test_every_farm_argument_is_refused_by_its_name(
    call: Any, error: type[Exception], message: str
) -> None:
    async with FarmClient(ADDRESS) as farm:
        with pytest.raises(error, match=message):
            await call(farm)
