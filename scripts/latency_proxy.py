"""A TCP proxy that delays every byte by a fixed time each way: a server across a network.

For benchmarks only (``bench_fleet.py --pg-latency-ms``): PostgreSQL on this machine
answers a round trip in ~0.1 ms, where a studio's database server, on another machine,
takes longer. ``python scripts/latency_proxy.py LISTEN_PORT TARGET_PORT DELAY_MS``
listens on 127.0.0.1:LISTEN_PORT and forwards to 127.0.0.1:TARGET_PORT, each chunk
written DELAY_MS after it was read, in order, in both directions (so a round trip
takes twice DELAY_MS more). It prints "ready" once it listens, and runs until killed.

Threads, not an event loop: an event loop's timers wait in whole milliseconds (epoll),
and the delays worth measuring are fractions of one; ``time.sleep`` is exact enough.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import sys
import threading
import time


def _forward(source: socket.socket, target: socket.socket, delay_s: float) -> None:
    """Read from ``source``; a second thread writes each chunk to ``target`` when it is due."""
    due: queue.SimpleQueue[tuple[float, bytes]] = queue.SimpleQueue()

    def write() -> None:
        with contextlib.suppress(OSError):
            while True:
                at, chunk = due.get()
                if not chunk:
                    break
                wait_s = at - time.monotonic()
                if wait_s > 0:
                    time.sleep(wait_s)
                target.sendall(chunk)
        with contextlib.suppress(OSError):
            target.shutdown(socket.SHUT_WR)

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    with contextlib.suppress(OSError):
        while chunk := source.recv(1 << 16):
            due.put((time.monotonic() + delay_s, chunk))
    due.put((0.0, b""))
    writer.join()


def _connection(client: socket.socket, target_port: int, delay_s: float) -> None:
    with client, socket.create_connection(("127.0.0.1", target_port)) as upstream:
        for sock in (client, upstream):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        back = threading.Thread(target=_forward, args=(upstream, client, delay_s), daemon=True)
        back.start()
        _forward(client, upstream, delay_s)
        back.join()


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    listen_port, target_port, delay_s = int(argv[1]), int(argv[2]), float(argv[3]) / 1000
    with socket.create_server(("127.0.0.1", listen_port)) as server:
        print("ready", flush=True)
        while True:
            client, _ = server.accept()
            threading.Thread(
                target=_connection, args=(client, target_port, delay_s), daemon=True
            ).start()


if __name__ == "__main__":
    sys.exit(main(sys.argv))
