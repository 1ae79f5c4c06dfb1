"""A user strategy for the recovery tests: it fires only when the test opens its gate."""

from __future__ import annotations

import socket
from collections.abc import Iterator

from services.alerts.strategies import Signal
from shared.messages import StrategyJob


def gated(job: StrategyJob) -> Iterator[Signal]:
    """Tell the test (a Unix socket at ``params.gate``) which bucket runs, wait for its go, fire."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gate:
        gate.connect(job.params["gate"])
        gate.sendall(f"{job.bucket_ns}\n".encode())
        gate.recv(1)  # the test answers (or closes) when the job may finish
    for ticker in job.tickers:
        yield Signal(ticker, f"{ticker} evaluated at {job.bucket_ns}", 1.0)
