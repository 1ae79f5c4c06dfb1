"""Prometheus plumbing: a registry per service, its HTTP port, and zero-cost bus counters.

Hot paths bump plain integers in stats dataclasses; :class:`StatsCollector` reads them only when
Prometheus scrapes. Names carry units, counters end in ``_total``, variants are labels.
"""

from __future__ import annotations

import ctypes
import sys
from collections.abc import Callable, Iterable
from dataclasses import fields, is_dataclass
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# stats field -> (metric suffix, help, is_counter); fields not listed are exported as gauges.
_KNOWN: dict[str, tuple[str, str]] = {
    "sent": ("messages_sent_total", "Messages sent"),
    "received": ("messages_received_total", "Messages received"),
    "frames": ("frames_total", "Payload frames (a batch is one frame)"),
    "flushes": ("flushes_total", "Sends of what was queued (each wakes a subscriber at most once)"),
    "wakeups": ("wakeups_total", "Waits that suspended until a message came (each a loop wakeup)"),
    "bytes": ("payload_bytes_total", "Payload bytes sent"),
    "heartbeats": ("heartbeats_sent_total", "Heartbeats sent"),
    "gaps": ("gaps_total", "Sequence gaps seen (messages lost upstream or at the HWM)"),
    "missed": ("messages_missed_total", "Messages known lost from sequence gaps"),
    "decode_errors": ("decode_errors_total", "Messages or frames that did not decode, skipped"),
    "restarts": ("publisher_restarts_total", "Publishers whose numbering started over"),
    "dead": ("publishers_dead_total", "Publishers presumed dead after missed heartbeats"),
    "revived": ("publishers_revived_total", "Publishers heard from again after presumed dead"),
    "would_block": ("would_block_total", "Sends refused because the peer queue was full"),
    "topics": ("topics", "Topics whose sequence numbers the socket keeps (its per-topic state)"),
}


class StatsCollector(Collector):
    """Exports stats dataclasses (PublisherStats, SubscriberStats, ...) labelled by socket name."""

    def __init__(self, prefix: str = "poolwire_bus") -> None:
        self.prefix = prefix
        self._sources: list[tuple[str, Callable[[], Any]]] = []

    def add(self, socket: str, stats: Any | Callable[[], Any]) -> None:
        getter = stats if callable(stats) and not is_dataclass(stats) else (lambda: stats)
        self._sources.append((socket, getter))

    def collect(self) -> Iterable[Metric]:
        families: dict[str, CounterMetricFamily | GaugeMetricFamily] = {}
        for socket, getter in self._sources:
            stats = getter()
            for f in fields(stats):
                value = getattr(stats, f.name)
                if not isinstance(value, int | float):
                    continue
                suffix, doc = _KNOWN.get(f.name, (f.name, f.name.replace("_", " ")))
                name = f"{self.prefix}_{suffix}"
                fam = families.get(name)
                if fam is None:
                    if suffix.endswith("_total"):
                        fam = CounterMetricFamily(name.removesuffix("_total"), doc, labels=["socket"])
                    else:
                        fam = GaugeMetricFamily(name, doc, labels=["socket"])
                    families[name] = fam
                fam.add_metric([socket], value)
        yield from families.values()


class HeapCollector(Collector):
    """Where a process's memory is, beside its RSS: the blocks Python's allocator holds for live
    objects, and SQLite's own heap where the process uses SQLite. An RSS that grows while both stay
    flat is the allocator's arenas and pages (fragmentation), not objects kept."""

    def __init__(self) -> None:
        self._sqlite_used: Callable[[], int] | None = None
        self._sqlite_tried = False

    def _sqlite(self) -> Callable[[], int] | None:
        if not self._sqlite_tried and "_sqlite3" in sys.modules:
            self._sqlite_tried = True
            # sqlite3 exposes no memory statistics; its C library does, and the extension module's
            # handle resolves the symbol in the very library it loaded (the same counters). An
            # interpreter with sqlite3 built in has no file: its own symbols are searched.
            try:
                lib = ctypes.CDLL(getattr(sys.modules["_sqlite3"], "__file__", None))
                used = lib.sqlite3_memory_used
            except (OSError, AttributeError):
                return None  # no such symbol here: the gauge is left out
            used.restype = ctypes.c_int64
            self._sqlite_used = used
        return self._sqlite_used

    def collect(self) -> Iterable[Metric]:
        yield GaugeMetricFamily(
            "poolwire_python_allocated_blocks",
            "Memory blocks Python's allocator holds for live objects (sys.getallocatedblocks)",
            value=sys.getallocatedblocks(),
        )
        used = self._sqlite()
        if used is not None:
            yield GaugeMetricFamily(
                "poolwire_sqlite_memory_bytes",
                "Bytes of SQLite's heap in use, page caches included (sqlite3_memory_used)",
                value=used(),
            )


def new_registry() -> CollectorRegistry:
    """A registry with the process collectors (CPU, memory, fds, heaps) a service should always export."""
    from prometheus_client import GC_COLLECTOR, PLATFORM_COLLECTOR, PROCESS_COLLECTOR  # noqa: F401
    from prometheus_client.gc_collector import GCCollector
    from prometheus_client.platform_collector import PlatformCollector
    from prometheus_client.process_collector import ProcessCollector

    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    registry.register(HeapCollector())
    return registry


def serve(registry: CollectorRegistry, port: int, host: str = "127.0.0.1") -> Any:
    """Serve /metrics on ``host:port`` (port 0 disables). Returns the server, or None."""
    if port <= 0:
        return None
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return server
