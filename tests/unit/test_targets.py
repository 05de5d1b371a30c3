"""Where clients find executors: one address, a list, a DNS name (supervisor_client.targets)."""

from __future__ import annotations

import json
import re

import pytest

from executor.cli import build_parser, main
from supervisor_client import ExecutorClient, FarmClient
from supervisor_client.targets import FLEET_SERVICE_CONFIG, HEALTH_SERVICE, resolve_target

pytestmark = pytest.mark.unit


def test_one_address_is_used_as_given_without_a_fleet_policy() -> None:
    for address in (
        "127.0.0.1:50051",
        "executor.example:50051",
        "unix:/run/cbexec.sock",
        "[::1]:50051",
    ):
        target = resolve_target(address)
        assert (target.target, target.service_config, target.is_fleet) == (address, None, False)


def test_a_list_is_a_static_ipv4_target_balanced_round_robin_over_healthy_executors() -> None:
    joined = resolve_target("10.0.0.1:50051, 10.0.0.2:50052,")
    repeated = resolve_target(["10.0.0.1:50051", "10.0.0.2:50052"])

    assert joined == repeated
    assert joined.target == "ipv4:10.0.0.1:50051,10.0.0.2:50052"
    assert joined.service_config == FLEET_SERVICE_CONFIG
    assert json.loads(FLEET_SERVICE_CONFIG) == {
        "loadBalancingConfig": [{"round_robin": {}}],
        "healthCheckConfig": {"serviceName": "qbcallback.v1.CallbackExecutorService"},
    }
    assert HEALTH_SERVICE == "qbcallback.v1.CallbackExecutorService"


def test_an_ipv6_list_and_the_dns_and_static_forms() -> None:
    assert resolve_target("[::1]:1,[fd00::2]:2").target == "ipv6:[::1]:1,[fd00::2]:2"
    for fleet in ("dns:///executors.example:50051", "ipv4:10.0.0.1:1,10.0.0.2:1"):
        assert resolve_target(fleet) == resolve_target([fleet])
        assert resolve_target(fleet).target == fleet and resolve_target(fleet).is_fleet


def test_a_lists_calls_carry_its_first_entry_as_their_authority() -> None:
    """Not the whole list, which past ~8 KiB exceeds an executor's metadata limit."""
    assert resolve_target("10.0.0.1:1,10.0.0.2:2").authority == "10.0.0.1:1"
    assert resolve_target("ipv4:10.0.0.3:3,10.0.0.2:2").listed == ("10.0.0.3:3", "10.0.0.2:2")
    assert resolve_target("[::1]:1,[fd00::2]:2").authority == "[::1]:1"
    for own in ("10.0.0.1:1", "dns:///executors.example:50051"):
        assert resolve_target(own).authority is None  # gRPC's own: the address, the name


@pytest.mark.parametrize(
    ("addresses", "message"),
    [
        ("", "no executor address"),
        ("exec1:50051,exec2:50051", "not an IP address.*dns:///NAME:PORT"),
        ("10.0.0.1,10.0.0.2:1", "needs a port"),
        ("10.0.0.1:0,10.0.0.2:1", "port 0 is out of range"),
        # gRPC took -1 as 65535 and an empty port as 443 (said "needs a port" in a list).
        ("10.0.0.1:-1,10.0.0.2:1", r"port '-1' is not a number 1 to 65535"),
        ("127.0.0.1:-1", r"port '-1' is not a number 1 to 65535"),
        ("[::1]:-5", r"port '-5' is not a number 1 to 65535"),
        ("127.0.0.1:4.7", r"port '4.7' is not a number 1 to 65535"),
        ("127.0.0.1:", "nothing after ':'; expected a port 1 to 65535"),
        ("dns:///exec:x", r"port 'x' is not a number 1 to 65535"),
        ("10.0.0.1:1,[::1]:1", "all IPv4 or all IPv6"),
        ("::1:5,10.0.0.1:1", "brackets"),
        ("unix:/a.sock,10.0.0.1:1", "cannot be part of a list"),
        ("dns:///a:1,10.0.0.1:1", "cannot be part of a list"),
        # One address gRPC could never reach (the supervisor setting's rule too).
        ("127.0.0.1:0", "port 0 is out of range"),
        ("a b:1", "'a b' is not a host name or an IP address"),
        ("http://127.0.0.1:1", "gRPC has no 'http' scheme"),
        ("[::1x]:1", r"\[::1x\] is not an IPv6 address"),
        # No port: gRPC dialled 443, and a forgotten port ended as UNAVAILABLE.
        ("127.0.0.1", r"address '127.0.0.1' needs a port: host:port"),
        ("localhost", r"address 'localhost' needs a port: host:port"),
        ("executor.example", r"address 'executor.example' needs a port: host:port"),
        ("[::1]", r"address '\[::1\]' needs a port: \[IPv6\]:PORT"),
        ("::1", r"address '::1': write an IPv6 address in brackets, \[IPv6\]:PORT"),
        ("dns:///executors.example", r"needs a port: dns:///NAME:PORT"),
        ("dns://10.0.0.53/executors.example", r"needs a port: dns:///NAME:PORT"),
        ("10.0.0.1:1,10.0.0.2", r"address '10.0.0.2' needs a port: IP:PORT"),
        (["10.0.0.1:1", "10.0.0.2"], r"address '10.0.0.2' needs a port: IP:PORT"),
    ],
)
def test_bad_lists_are_refused_naming_the_entry(addresses: str | list[str], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        resolve_target(addresses)


def test_the_address_flag_takes_a_list_or_repeats() -> None:
    parser = build_parser()
    one = parser.parse_args(["metrics", "--address", "10.0.0.1:1"])
    several = parser.parse_args(
        ["metrics", "--address", "10.0.0.1:1", "--address", "10.0.0.2:1,10.0.0.3:1"]
    )
    assert one.address == "10.0.0.1:1"
    assert several.address == "10.0.0.1:1,10.0.0.2:1,10.0.0.3:1"
    assert parser.parse_args(["metrics"]).address  # the default stays one address


def test_a_bad_address_list_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", "--address", "exec1:1,exec2:1"]) == 2
    assert "cbexec: --address: address 'exec1:1' in a list" in capsys.readouterr().err


def test_an_address_without_a_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", "--address", "127.0.0.1"]) == 2
    assert "cbexec: --address: address '127.0.0.1' needs a port: host:port" in (
        capsys.readouterr().err
    )
    with pytest.raises(ValueError, match="needs a port"):
        ExecutorClient("127.0.0.1")


def test_a_farm_is_one_executor(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ValueError, match="one executor"):
        FarmClient("10.0.0.1:1,10.0.0.2:1")
    assert main(["farm", "jobs", "--address", "dns:///executors.example:1"]) == 2
    assert "the farm is one executor's embedded supervisor" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("addresses", "written"),
    [
        ("10.0.0.1:50051 10.0.0.2:50051", "spaces"),
        ("10.0.0.1:50051;10.0.0.2:50051", "';'"),
        ("10.0.0.1:50051 ; 10.0.0.2:50051", "spaces"),
        ("10.0.0.1:50051|10.0.0.2:50051", "'|'"),
        ("10.0.0.1:50051\n10.0.0.2:50051", "'\\n'"),
        ("[::1]:1 [::1]:2", "spaces"),  # was "port '1 [::1]:2' is not a number"
        ("exec1:1 exec2:1", "spaces"),
        ("10.0.0.9:1,10.0.0.1:1 10.0.0.2:1", "spaces"),  # was "... in a list is not an IP"
        ("ipv4:10.0.0.1:1;10.0.0.2:1", "';'"),
        (["10.0.0.9:1", "10.0.0.1:1;10.0.0.2:1"], "';'"),
    ],
)
def test_a_list_not_separated_by_commas_is_refused_saying_so(
    addresses: str | list[str], written: str
) -> None:
    """It was refused with "write an IPv6 address in brackets", which misled (probe 154)."""
    message = f"separate a list's addresses with commas, not {written}: IP:PORT,IP:PORT"
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_target(addresses)


def test_a_space_that_separates_no_addresses_is_judged_as_before() -> None:
    for one, message in (
        ("a b:1", "'a b' is not a host name or an IP address"),
        ("dns:///a b:1", "'a b' is not a host name or an IP address"),
    ):
        with pytest.raises(ValueError, match=re.escape(message)):
            resolve_target(one)
    # A path may hold a space.
    assert resolve_target("unix:/run/my executor.sock").target == "unix:/run/my executor.sock"


def test_a_list_not_separated_by_commas_is_refused_by_every_client(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    hint = "separate a list's addresses with commas"
    assert main(["runs", "--address", "10.0.0.1:50051 10.0.0.2:50051"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "cbexec: --address: address '10.0.0.1:50051 10.0.0.2:50051': "
        f"{hint}, not spaces: IP:PORT,IP:PORT"
    ]
    monkeypatch.setenv("CBEXEC_ADDRESS", "127.0.0.1:1;127.0.0.2:1")
    assert main(["runs"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"cbexec: $CBEXEC_ADDRESS: address '127.0.0.1:1;127.0.0.2:1': {hint}, not ';': "
        "IP:PORT,IP:PORT"
    ]
    with pytest.raises(ValueError, match=hint):
        ExecutorClient("127.0.0.1:1 127.0.0.2:1")


@pytest.mark.parametrize(
    ("address", "message"),
    [
        ("ipv4:127.0.0.1", "address '127.0.0.1' needs a port"),
        ("ipv4:127.0.0.1:99999", "port 99999 is out of range"),
        ("ipv4:127.0.0.1:0", "port 0 is out of range"),
        ("ipv4:localhost:1", "'localhost:1' in a list is not an IP address"),
        ("ipv4:10.0.0.1:1,10.0.0.2", "address '10.0.0.2' needs a port"),
        ("ipv6:[::1]", "address '[::1]' needs a port"),
        ("ipv6:::1:5", "write an IPv6 address in brackets"),
        ("ipv4:[::1]:5", "'[::1]:5' in 'ipv4:[::1]:5' is not an IPv4 address"),
        ("ipv6:127.0.0.1:5", "'127.0.0.1:5' in 'ipv6:127.0.0.1:5' is not an IPv6 address"),
    ],
)
def test_an_ipv4_or_ipv6_target_is_checked_entry_by_entry(address: str, message: str) -> None:
    """Once passed to gRPC as is: C-core log lines, and UNKNOWN or a dial to port 0."""
    with pytest.raises(ValueError, match=re.escape(message)):
        resolve_target(address)
    with pytest.raises(ValueError, match=re.escape(message)):
        ExecutorClient(address)


def test_an_ipv4_target_without_a_port_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["metrics", "--address", "ipv4:127.0.0.1"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        "cbexec: --address: address '127.0.0.1' needs a port: IP:PORT, or [IPv6]:PORT"
    ]
