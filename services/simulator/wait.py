"""Wait until the simulated outside world accepts connections (Procfile.demo orders start-up with it).

    python -m services.simulator.wait [--timeout 30] unix:/tmp/exex.sock tcp:127.0.0.1:8766 ...

Exits 0 once every target accepts a connection, 1 (naming what is missing) after the timeout.
A Unix socket file that exists but refuses connections (left by a killed server) is not ready.
"""

from __future__ import annotations

import argparse
import socket
import sys
import time


def ready(target: str) -> bool:
    kind, _, where = target.partition(":")
    if kind == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        address: str | tuple[str, int] = where
    elif kind == "tcp":
        host, _, port = where.rpartition(":")
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        address = (host, int(port))
    else:
        raise SystemExit(f"bad target {target!r}: expected unix:PATH or tcp:HOST:PORT")
    with sock:
        sock.settimeout(1.0)
        return sock.connect_ex(address) == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m services.simulator.wait")
    parser.add_argument("targets", nargs="+", metavar="TARGET", help="unix:PATH or tcp:HOST:PORT")
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args(argv)
    deadline = time.monotonic() + args.timeout
    todo = list(args.targets)
    while todo:
        todo = [t for t in todo if not ready(t)]
        if todo and time.monotonic() >= deadline:
            print(f"wait: not ready after {args.timeout:g} s: {' '.join(todo)}", file=sys.stderr)
            return 1
        if todo:
            time.sleep(0.1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
