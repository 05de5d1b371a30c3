"""The gRPC port's connection options: keepalive, the caps on connections and streams, idle and age.

gRPC keeps each answer in full until the client has read it (HTTP/2 flow control), for
as long as the connection lives, and nothing else bounds it: a frozen client (SIGSTOP, a
hung host) with six unread 32 MiB answers held 630 MB, eight peers that never opened
their window 840 MB, and 60,000 idle health Watch streams 1.2 GB (probe 85). So:

- the server pings a connection that has been quiet for ``keepalive_seconds`` and closes
  it when no answer comes within ``keepalive_timeout_seconds``: a frozen or vanished
  peer lets go of everything sent to it;
- at most ``max_connections`` connections at once (a further one is closed as it
  comes), each with at most ``max_streams`` calls open (advertised as HTTP/2's
  ``SETTINGS_MAX_CONCURRENT_STREAMS``: a client queues the rest, but a call it sends
  before it has seen a stream end may be refused, RST_STREAM REFUSED_STREAM, which the
  client library sends again);
- gRPC counts a connection from accept, before any handshake, and keepalive cannot reach
  one that never speaks HTTP/2: 256 TCP connections that sent nothing held every place
  for 60 s (120 s under TLS; probe 105). So a connection that has not finished its TLS
  handshake and sent HTTP/2's SETTINGS within ``handshake_timeout_seconds`` is closed
  (gRPC's ``grpc.server_handshake_timeout_ms``, which bounds both: measured on grpcio
  1.85, plaintext and TLS alike, silent peers lost their places at the timeout);
  ``connection_watch.py`` says when the places are all taken, and by whom;
- a connection with no call for ``MAX_CONNECTION_IDLE_MS`` is closed (GOAWAY; a channel
  reconnects for its next call);
- a connection is told to go away (GOAWAY) after ``MAX_CONNECTION_AGE_MS``, and then
  closed once its calls have ended, or after ``MAX_CONNECTION_AGE_GRACE_MS`` at the
  latest: a peer that answers pings but never reads its answers is let go of then. The
  grace is longer than any call the README allows (a ``WaitJobs`` of 3600 s, a run at the
  3600 s wall cap after waiting for a slot), so no such call is cut;
- every call within those caps is taken. gRPC holds a call that has arrived until the
  application asks for it, and gRPC Python's aio server asks for one at a time, one
  turn of the event loop each: calls sent at once pile up there. Past
  ``grpc.server.max_pending_requests`` (gRPC's default 1000) gRPC refused new ones at
  random, all of them past ``..._hard_limit`` (3000), and one held longer than
  ``grpc.server_max_unrequested_time_in_server`` (30 s, a busy loop) was dropped: the
  client saw CANCELLED "CANCELLED", as for its own cancel, and nothing was logged
  (probe 111: 535-654 of 3000 WaitJobs sent at once on three connections; none of 1000
  on one). Both limits are now the caps' product (``pending_calls_limit``), which the
  streams bound already, and the wait is the caller's deadline's to end.
"""

from __future__ import annotations

from typing import Final

from executor.config import Settings
from executor.config_checks import MAX_CONNECTION_COUNT
from supervisor_client.credentials import KEEPALIVE_TIME_MS

HOUR_MS: Final = 3_600_000
MAX_CONNECTION_IDLE_MS: Final = HOUR_MS // 4
MAX_CONNECTION_AGE_MS: Final = HOUR_MS
MAX_CONNECTION_AGE_GRACE_MS: Final = 2 * HOUR_MS
# A call not yet taken by the application is let go of after this long (gRPC: seconds).
# Longer than any call may last (the age's grace): its caller's deadline ends it first.
MAX_UNREQUESTED_S: Final = MAX_CONNECTION_AGE_GRACE_MS // 1000

# Accept the pings our clients send to find a frozen executor (credentials.KEEPALIVE_OPTIONS:
# every 10 s, with or without a call). gRPC's defaults take a ping more often than every
# 5 minutes without data as abuse, and answer the third with GOAWAY too_many_pings.
KEEPALIVE_SERVER_OPTIONS: Final = (
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", KEEPALIVE_TIME_MS // 2),
)


def pending_calls_limit(settings: Settings) -> int:
    """How many calls gRPC may hold untaken: as many as the port has open at most."""
    # gRPC reads the count as a signed 32-bit number, as it does the two caps.
    return min(settings.max_connections * settings.max_streams, MAX_CONNECTION_COUNT)


def server_options(
    settings: Settings,
    *,
    idle_ms: int = MAX_CONNECTION_IDLE_MS,
    age_ms: int = MAX_CONNECTION_AGE_MS,
    age_grace_ms: int = MAX_CONNECTION_AGE_GRACE_MS,
) -> list[tuple[str, int]]:
    """The gRPC server arguments that bound what a connection can make the server hold.

    ``idle_ms``, ``age_ms`` and ``age_grace_ms`` are for tests (the defaults are hours).
    """
    keepalive_timeout_ms = round(settings.keepalive_timeout_seconds * 1000)
    return [
        *KEEPALIVE_SERVER_OPTIONS,
        ("grpc.keepalive_time_ms", round(settings.keepalive_seconds * 1000)),
        ("grpc.keepalive_timeout_ms", keepalive_timeout_ms),
        # Any ping of ours unanswered, not only keepalive's (a flow-control ping sent as
        # the peer froze would hold keepalive's back for gRPC's default 60 s).
        ("grpc.http2.ping_timeout_ms", keepalive_timeout_ms),
        ("grpc.http2.max_pings_without_data", 0),  # 0: no limit (the default stops at 2)
        # Our SETTINGS unacknowledged, as a ping unanswered: gRPC's default, max(2 x that,
        # 60 s), let a peer that sent HTTP/2's preface and nothing more hold its place 60 s.
        ("grpc.http2.settings_timeout", keepalive_timeout_ms),
        # gRPC aborts the process on 2^31 - 1 itself (it must be below): the top of the
        # setting's range is taken as one less, a difference no host can tell.
        (
            "grpc.max_allowed_incoming_connections",
            min(settings.max_connections, MAX_CONNECTION_COUNT - 1),
        ),
        ("grpc.server_handshake_timeout_ms", round(settings.handshake_timeout_seconds * 1000)),
        ("grpc.max_concurrent_streams", settings.max_streams),
        # Soft and hard alike: none refused below it, and the streams keep below it.
        ("grpc.server.max_pending_requests", pending_calls_limit(settings)),
        ("grpc.server.max_pending_requests_hard_limit", pending_calls_limit(settings)),
        ("grpc.server_max_unrequested_time_in_server", MAX_UNREQUESTED_S),
        ("grpc.max_connection_idle_ms", idle_ms),
        ("grpc.max_connection_age_ms", age_ms),
        ("grpc.max_connection_age_grace_ms", age_grace_ms),
        # No window grown by bandwidth probes: a call's stream takes what the executor reads
        # (a request being read opens the window to its whole size) plus HTTP/2's first
        # 64 KiB. Grown, 64 calls with a wrong token, waiting their turn unread, were sent
        # most of their 15 MiB each: 800 MB (probe 172).
        ("grpc.http2.bdp_probe", 0),
    ]
