"""A minimal real service for the backbone's tests: heartbeats, and optionally a stream.

python -m tests.shared.beacon [--config FILE]   (section "beacon" via env POOLWIRE_BEACON__*)
"""

from __future__ import annotations

import msgspec

from shared.bus import Publisher
from shared.config import Duration, Endpoint, Port
from shared.messages import Price
from shared.runner import ServiceContext, run


class BeaconConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    pub: Endpoint = "tcp://127.0.0.1:5599"
    metrics_port: Port = 0
    service: str = "beacon"
    topic: str = "px.test"
    flood: int = 0  # publish this many Price messages as fast as possible, once a subscriber joined
    batching: bool = True
    hwm: int = 100_000
    every: Duration = Duration(0)  # publish one Price every this often (0: never)
    heartbeat: Duration = Duration(1.0)
    stop_delay: Duration = Duration(0)  # pretend cleanup takes this long on stop


async def main(ctx: ServiceContext[BeaconConfig]) -> None:
    cfg = ctx.config
    pub = Publisher(
        cfg.pub,
        service=cfg.service,
        heartbeat_interval=cfg.heartbeat,
        clock=ctx.clock,
        batching=cfg.batching,
        hwm=cfg.hwm,
    )
    ctx.bus_stats.add("pub", pub.stats)
    pub.start()
    if cfg.flood:
        await pub.wait_for_subscriber(cfg.topic, timeout=30)
    for i in range(cfg.flood):
        pub.publish(cfg.topic, Price(symbol="test", price=float(i)))
        if i % 1000 == 999:
            await ctx.clock.sleep(0)
    n = 0
    while not ctx.stopping.is_set():
        if cfg.every > 0:
            n += 1
            pub.publish(cfg.topic, Price(symbol="test", price=float(n)))
            await ctx.clock.sleep(cfg.every)
        else:
            await ctx.stopping.wait()
    if cfg.stop_delay:
        await ctx.clock.sleep(cfg.stop_delay)
    await pub.close()


if __name__ == "__main__":
    raise SystemExit(run("beacon", BeaconConfig, main))
