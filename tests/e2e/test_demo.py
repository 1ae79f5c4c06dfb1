"""`make demo` end to end: the real processes started through Procfile.demo by honcho.

What is asserted is what a consumer of the topics sees: prices from ingest (``px.pm.*``) and sync
(``px.dex.*``) reach registry (zones are created for those symbols), zones are created, touched,
expired and removed, alerts are caused by zones and fire once per configured frequency, and
SIGTERM to honcho stops everything cleanly within 10 s.
"""

from __future__ import annotations

import itertools
import re
import shlex
import time
from collections import Counter
from pathlib import Path

import pytest
import yaml

from services.simulator.exex_chain import SimChain
from shared.config import check_file
from shared.messages import ZoneCreated, ZoneExpired, ZoneRemoved, ZoneTouched
from tests.e2e.pipeline import (
    BUS_SERVICES,
    DEMO_CONFIG,
    PROCFILE,
    Collector,
    Endpoints,
    S,
    cohosted_procfile,
    demo_config,
    demo_pool_keys,
    honcho,
    procfile,
)

BAR = 5 * S  # the bucket of zone_touch and sweep in deploy/demo.yaml
FIRST_ZONE_BUCKET = 2 * S


def test_demo_config_is_valid() -> None:
    assert check_file(DEMO_CONFIG) == []
    assert set(procfile()) == {"simulator", "exex", "ingest", "sync", "registry", "alerts", "worker"}


def test_demo_pools_are_the_chain_simulators() -> None:
    """deploy/demo.yaml lists the pools the ExEx simulator line of Procfile.demo makes."""
    args = shlex.split(procfile()["exex"].removeprefix("exec "))
    seed = int(args[args.index("--seed") + 1])
    per_protocol = int(args[args.index("--pools") + 1])
    chain = SimChain(seed, per_protocol)
    assert demo_pool_keys() == list(chain.pools)
    specs = demo_config()["sync"]["pools"]
    for spec, pool in zip(specs, chain.pools.values(), strict=True):
        assert spec["protocol"] == pool.protocol
        if pool.protocol == "v4":
            assert (spec["fee"], spec["tick_spacing"]) == (pool.fee, pool.spacing)


def bar_end(ns: int) -> int:
    return ns - ns % BAR + BAR


@pytest.mark.slow
@pytest.mark.parametrize("processes", ["one per service", "cohosted"])
async def test_demo_end_to_end_through_the_procfile(tmp_path: Path, processes: str) -> None:
    """The demo as its Procfile runs it, and with its four services in one process."""
    ep = Endpoints.allocate(tmp_path)
    lines, path = procfile(), PROCFILE
    if processes == "cohosted":
        path = tmp_path / "Procfile.cohosted"
        lines = cohosted_procfile(path)
    # The demo as configured, with zones that live 10 s and leave grace after 6 s, so that a whole
    # life (created, touched, expired, removed) fits in the test. The heartbeat interval comes from a
    # copy of the demo's file named by POOLWIRE_CONFIG, as a user would point `make demo` at theirs.
    config = demo_config()
    config["common"]["heartbeat_interval"] = "200ms"
    own_config = tmp_path / "my-demo.yaml"
    own_config.write_text(yaml.safe_dump(config))
    env = ep.env(
        {
            "POOLWIRE_CONFIG": str(own_config),
            "POOLWIRE_REGISTRY__POOLS__S5__TTL": "10s",
            "POOLWIRE_REGISTRY__POOLS__GRACE_PERIOD_MINUTES": "0.1",
        }
    )
    t_start = time.monotonic()
    with honcho(env, tmp_path / "honcho.log", path) as h:
        async with Collector(ep.pubs) as c:

            def why() -> str:
                created = c.zone_events(ZoneCreated)
                return (
                    f"heartbeats from {sorted(c.heartbeats)}; prices {len(c.prices)}; zone events "
                    f"{Counter(type(s.msg).__name__ for s in c.zones)}; symbols with zones "
                    f"{len({z.zone.symbol for z in created})}; alerts "
                    f"{Counter(a.msg.strategy for a in c.alerts)}\n{h.output()[-3000:]}"  # type: ignore[attr-defined]
                )

            await c.until(lambda: set(BUS_SERVICES) <= set(c.heartbeats), 30, why)
            t_up = time.monotonic() - t_start
            # The README's promise: within a minute of `make demo`, `poolwire tap alert.` shows alerts.
            await c.until(lambda: bool(c.alerts), max(1.0, 60 - (time.monotonic() - t_start)), why)
            t_first_alert = time.monotonic() - t_start

            def lifecycle_seen() -> bool:
                created = c.zone_events(ZoneCreated)
                zone_symbols = {z.zone.symbol for z in created}
                first = {a.symbol for a in c.alerts_of("first_zone")}
                return (
                    any(s.startswith("pm.") for s in zone_symbols)
                    and any(s.startswith("dex.") for s in zone_symbols)
                    and bool(c.zone_events(ZoneTouched))
                    and bool(c.zone_events(ZoneExpired))
                    and bool(c.zone_events(ZoneRemoved))
                    and len(first) >= 3
                    and bool(c.alerts_of("zone_touch"))
                )

            await c.until(lifecycle_seen, 90, why)
            t_lifecycle = time.monotonic() - t_start

            # Every symbol whose zone was created by now gets its first_zone alert (bucket 2 s).
            cut = time.time_ns()
            wanted = {z.zone.symbol for z in c.zone_events(ZoneCreated)}

            def firsts_complete() -> bool:
                return wanted <= {a.symbol for a in c.alerts_of("first_zone")}

            await c.until(firsts_complete, 15, lambda: f"first_zone alerts for {wanted} ({why()})")
            # ... and one more bar, so that a repeated alert would have had its chance to show up
            await c.until(lambda: c.heartbeat_after("alerts", cut + BAR + 2 * S), 15, why)

        rc, took = h.stop()
        stopped = h.stopped()
        output = h.output()

    # -- every service read the file POOLWIRE_CONFIG named --------------------------------------
    intervals = {seen.msg.interval_ms for beats in c.heartbeats.values() for seen in beats}  # type: ignore[attr-defined]
    assert intervals == {200}, intervals

    # -- prices from both sources reached registry ----------------------------------------------
    pm, dex = c.symbols("ingest"), c.symbols("sync")
    assert pm and all(s.startswith("pm.") for s in pm)
    assert {f"dex.0x{k.hex()}" for k in demo_pool_keys()} == dex
    created = c.zone_events(ZoneCreated)
    zone_symbols = {z.zone.symbol for z in created}
    assert zone_symbols <= pm | dex
    assert zone_symbols & pm and zone_symbols & dex

    # -- zone lifecycle: every event is about a zone created while we watched (or restored) -----
    ids = {z.zone.id for z in created}
    touched = c.zone_events(ZoneTouched)
    expired = c.zone_events(ZoneExpired)
    removed = c.zone_events(ZoneRemoved)
    assert {e.zone.id for e in touched + expired + removed} <= ids
    assert {e.zone.id for e in removed} <= {e.zone.id for e in expired}
    assert all(e.zone.touches >= 1 for e in touched)
    assert {e.reason for e in expired} <= {"ttl", "filled", "evicted"}
    assert len(ids) == len(created), "a zone was created twice"

    # -- alerts: caused by zones, once per configured frequency ---------------------------------
    alerts = [s.msg for s in c.alerts]
    keys = Counter((a.strategy, a.symbol, a.bucket_ns) for a in alerts)  # type: ignore[attr-defined]
    assert max(keys.values()) == 1, "an evaluation was published twice"

    firsts = c.alerts_of("first_zone")
    per_symbol = Counter(a.symbol for a in firsts)
    assert per_symbol and max(per_symbol.values()) == 1, f"once fired twice: {per_symbol.most_common(3)}"
    assert set(per_symbol) <= zone_symbols
    assert all(" created " in a.message for a in firsts)

    touches_by_symbol: dict[str, list[int]] = {}
    for seen in c.zones:
        if isinstance(seen.msg, ZoneTouched):
            touches_by_symbol.setdefault(seen.msg.zone.symbol, []).append(seen.msg.publish_ns)
    zone_touch = c.alerts_of("zone_touch")
    assert zone_touch
    bars = Counter((a.symbol, a.bucket_ns) for a in zone_touch)
    assert max(bars.values()) == 1, "once_per_bar fired twice in a bar"
    for a in zone_touch:  # caused by a touch of that symbol's zone during the bar that closed
        assert a.bucket_ns % BAR == 0
        assert any(
            a.bucket_ns - BAR - S // 2 <= t <= a.bucket_ns + S // 2
            for t in touches_by_symbol.get(a.symbol, [])
        ), a
    sweeps: dict[str, list[int]] = {}
    for a in c.alerts_of("sweep"):
        assert re.search(r" touched \w+ (bsl|ssl) zone ", a.message), a.message
        sweeps.setdefault(a.symbol, []).append(a.bucket_ns)
    for symbol, buckets in sweeps.items():  # "every" with repeat_interval 30 s: never two bars running
        buckets.sort()
        assert all(b - a > BAR or b - a >= 30 * S for a, b in itertools.pairwise(buckets)), symbol

    # -- a clean stop ----------------------------------------------------------------------------
    assert took < 10, f"honcho took {took:.1f} s to stop\n{output[-3000:]}"
    assert rc in (0, 143), output[-3000:]  # honcho exits 143 after a SIGTERM it passed on
    assert stopped == dict.fromkeys(lines, 0), f"{stopped}\n{output[-3000:]}"
    assert "Traceback" not in output, output[output.index("Traceback") - 500 :][:3000]
    print(
        f"\ndemo: all publishers up {t_up:.1f} s after start, first alert at {t_first_alert:.1f} s; created/touched/expired/removed and "
        f"alerts seen at {t_lifecycle:.1f} s; {len(created)} zones on {len(zone_symbols)} symbols, "
        f"{len(alerts)} alerts {dict(Counter(a.strategy for a in alerts))}; stop took {took:.2f} s"  # type: ignore[attr-defined]
    )
