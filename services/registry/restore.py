"""What a restarted registry takes back from its store: zones and the detectors' candles."""

from __future__ import annotations

import logging

from services.registry.detectors import Detectors
from services.registry.store import ZoneStore
from services.registry.validate import Limits, check_stored
from shared.messages import Zone
from shared.ratelog import RateLimitedLog

log = logging.getLogger("poolwire.registry")


def stored_zones(store: ZoneStore, now_ns: int, limits: Limits, skip_log: RateLimitedLog) -> list[Zone]:
    """The stored zones an event could have made; the others are dropped from the store
    (counted as corrupt rows): a zone stored with ``created_ns = 2**63 - 1`` never expired."""
    zones = []
    for zone in store.load():
        refusal = check_stored(zone, now_ns, limits)
        if refusal is None:
            zones.append(zone)
            continue
        store.corrupt += 1
        store.removed(zone.id)
        skip_log("stored", "stored zone %s dropped (%s): %s", zone.id[:160], *refusal)
    return zones


def restore_detectors(detectors: Detectors, store: ZoneStore) -> None:
    """Continue the candles stored by the last run; states that do not fit the config are deleted."""
    report = detectors.restore(store.load_detector_state())
    for d in report.dropped[:20]:
        log.warning("stored detector state of %s %s dropped: %s", d.symbol, d.timeframe, d.reason)
    store.states_removed((d.symbol, d.timeframe) for d in report.dropped)
    if report.resized:
        log.info(
            "detectors.swing_bars is now %d: %d restored window(s) kept for another value were resized",
            detectors.swing_bars,
            report.resized,
        )
    log.info(
        "restored the candles of %d (symbol, timeframe) pair(s) from %s; %d dropped, %d corrupt",
        report.restored,
        store.path,
        len(report.dropped),
        store.corrupt_states,
    )
