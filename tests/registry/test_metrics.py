"""/metrics is read on the HTTP server's thread while the event loop changes the zones."""

from __future__ import annotations

import random
import sys
import threading
from collections import Counter
from collections.abc import Iterator

import pytest
from prometheus_client import CollectorRegistry, generate_latest

from services.registry.metrics import RegistryCollector
from services.registry.registry import Registry
from services.registry.zones import FVG_BEARISH, FVG_BULLISH, Rules, TimeframeRules

S = 1_000_000_000
T0 = 1_700_000_000 * S
TFS = ("M1", "H1", "H4")


def rules(grace_ns: int = 60 * S, max_per_tf: int = 10_000, ttl_ns: int = 30 * S) -> Rules:
    return Rules(
        timeframes={tf: TimeframeRules(ttl_ns=(i + 1) * ttl_ns) for i, tf in enumerate(TFS)},
        strength_threshold=0.1,
        grace_ns=grace_ns,
        max_per_tf=max_per_tf,
    )


def churn(reg: Registry, rng: random.Random, steps: int, now: int) -> Iterator[int]:
    """Creates, prices (touches, fills), deletes and expiry passes; yields the time after each."""
    for i in range(steps):
        now += rng.randrange(1, S // 2)
        sym = f"pm.{rng.randrange(20)}"
        r = rng.random()
        if r < 0.45:
            lo = rng.uniform(0.1, 0.9)
            kind = FVG_BULLISH if rng.random() < 0.5 else FVG_BEARISH
            reg.create(sym, rng.choice(TFS), kind, lo + rng.uniform(0, 0.1), lo, 0.5, now - i, now)
        elif r < 0.9:
            reg.on_price(sym, rng.uniform(0.05, 1.0), now)
        elif r < 0.95 and len(reg):
            reg.delete(rng.choice([z.id for z in reg.zones()]), now)
        else:
            reg.advance(now)
        reg.drain()
        yield now


def zone_gauges(reg: Registry) -> dict[tuple[str, str], float]:
    text = generate_latest(scrape_registry(reg)).decode()
    out: dict[tuple[str, str], float] = {}
    for line in text.splitlines():
        if line.startswith("poolwire_registry_zones{"):
            labels, value = line.removeprefix("poolwire_registry_zones{").split("} ")
            tf = labels.split('timeframe="')[1].split('"')[0]
            state = labels.split('state="')[1].split('"')[0]
            out[(tf, state)] = float(value)
    return out


def scrape_registry(reg: Registry) -> CollectorRegistry:
    metrics = CollectorRegistry()
    metrics.register(RegistryCollector(reg, None, None))
    return metrics


def recount(reg: Registry) -> dict[tuple[str, str], float]:
    counts = Counter((z.timeframe, "grace" if z.state == "expired" else z.state) for z in reg.zones())
    return {(tf, state): float(counts[(tf, state)]) for tf in TFS for state in ("active", "touched", "grace")}


@pytest.mark.parametrize("grace_ns", [0, 60 * S])
@pytest.mark.parametrize("max_per_tf", [15, 10_000])
def test_zone_gauges_equal_a_recount_through_churn(grace_ns: int, max_per_tf: int) -> None:
    rng = random.Random(grace_ns + max_per_tf)
    reg = Registry(rules(grace_ns, max_per_tf), T0)
    states_seen: set[str] = set()
    for _ in churn(reg, rng, 3_000, T0):
        states_seen.update(z.state for z in reg.zones())
        if rng.random() < 0.05:
            assert zone_gauges(reg) == recount(reg)
    assert zone_gauges(reg) == recount(reg)
    assert {"active", "touched"} <= states_seen
    assert ("grace" in states_seen) == (grace_ns > 0)


def test_restored_zones_are_counted_in_their_state() -> None:
    reg = Registry(rules(), T0)
    for _ in churn(reg, random.Random(7), 2_000, T0):
        pass
    zones = [z for z in reg.zones()]
    assert {z.state for z in zones} == {"active", "touched", "grace"}
    fresh = Registry(rules(), T0)
    fresh.restore([z.__copy__() for z in zones], T0)  # type: ignore[attr-defined]
    assert zone_gauges(fresh) == recount(fresh) == recount(reg)


def test_a_scrape_never_fails_while_the_zones_churn() -> None:
    """The old collector walked the zone dict from the scrape thread: 'dictionary changed size'."""
    reg = Registry(rules(ttl_ns=3600 * S), T0)
    metrics = scrape_registry(reg)
    stop = threading.Event()
    errors: list[BaseException] = []
    scrapes = 0

    def scraper() -> None:
        nonlocal scrapes
        while not stop.is_set():
            try:
                generate_latest(metrics)
            except BaseException as exc:  # any failure is the finding
                errors.append(exc)
                return
            scrapes += 1

    old_interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # hand the GIL over as often as possible
    thread = threading.Thread(target=scraper)
    thread.start()
    try:
        rng = random.Random(3)
        for _ in churn(reg, rng, 20_000, T0):
            if errors:
                break
    finally:
        stop.set()
        thread.join(timeout=10)
        sys.setswitchinterval(old_interval)
    assert not thread.is_alive()
    assert errors == []
    assert scrapes > 10
    assert len(reg) > 150  # the scrapes ran over a registry of many zones
