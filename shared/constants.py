"""The one place for the pipeline's constants: service names, topic grammar, default ports.

Topics are UTF-8, dot-separated, most general first, so that a SUB prefix filter selects what it
wants: ``md.book.<asset>``, ``px.<symbol>``, ``zone.touched.H1.<symbol>``.
"""

from __future__ import annotations

SERVICES: tuple[str, ...] = ("ingest", "sync", "registry", "alerts", "simulator")

# Topic roots. Builders below keep the grammar in one place.
MD = "md"  # market data from ingest: md.<kind>.<asset>
PX = "px"  # prices from ingest and sync: px.<symbol>, symbol = "pm.<asset>" | "dex.<pool>"
DEX = "dex"  # pool state and blocks from sync
ZONE = "zone"  # zone lifecycle from registry: zone.<event>.<tf>.<symbol>
ALERT = "alert"  # alerts: alert.<strategy>.<symbol>
HEALTH_SUFFIX = "health"


PM_SYMBOL = "pm"  # a Polymarket asset's symbol: pm.<asset>
DEX_SYMBOL = "dex"  # an on-chain pool's symbol: dex.<pool>


def pm_symbol(asset: str) -> str:
    return f"{PM_SYMBOL}.{asset}"


def dex_symbol(pool: str) -> str:
    return f"{DEX_SYMBOL}.{pool}"


def health_topic(service: str) -> str:
    return f"{service}.{HEALTH_SUFFIX}"


def md_topic(kind: str, asset: str) -> str:
    return f"{MD}.{kind}.{asset}"


def px_topic(symbol: str) -> str:
    return f"{PX}.{symbol}"


def zone_topic(event: str, timeframe: str, symbol: str) -> str:
    return f"{ZONE}.{event}.{timeframe}.{symbol}"


def alert_topic(strategy: str, symbol: str) -> str:
    return f"{ALERT}.{strategy}.{symbol}"


def dex_pool_topic(pool_id: str) -> str:
    return f"{DEX}.pool.{pool_id}"


def dex_swap_topic(pool_id: str) -> str:
    return f"{DEX}.swap.{pool_id}"


DEX_BLOCK_TOPIC = f"{DEX}.block"

HOST = "127.0.0.1"

# Default ports, per service. Every publisher binds; every subscriber connects.
PORTS: dict[str, dict[str, int]] = {
    "ingest": {"pub": 5550, "pull": 5551, "snapshot": 5552, "metrics": 9101},
    "sync": {"pub": 5560, "pull": 5561, "snapshot": 5562, "metrics": 9102},
    "registry": {"pub": 5570, "pull": 5571, "snapshot": 5572, "metrics": 9103},
    "alerts": {"pub": 5580, "jobs": 5581, "results": 5582, "metrics": 9104, "worker_metrics": 9106},
    "simulator": {"ws": 8765, "http": 8766, "metrics": 9105},
}


def tcp(service: str, role: str, host: str = HOST) -> str:
    """Default endpoint of one of a service's sockets, e.g. ``tcp("registry", "pub")``."""
    return f"tcp://{host}:{PORTS[service][role]}"


def default_pub_endpoints() -> list[str]:
    """Every service's PUB endpoint: what ``poolwire tap`` connects to by default."""
    return [tcp(name, "pub") for name, roles in PORTS.items() if "pub" in roles]


HEARTBEAT_INTERVAL_S = 1.0
HEARTBEAT_LIVENESS = 3  # missed heartbeats before a publisher is presumed dead (guide: Paranoid Pirate)
SHUTDOWN_GRACE_S = 10.0
