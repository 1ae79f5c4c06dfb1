"""The ``simulator`` config section."""

from __future__ import annotations

from typing import Annotated

import msgspec

from shared.config import Duration, Port
from shared.constants import PORTS


class SimulatorConfig(msgspec.Struct, kw_only=True, forbid_unknown_fields=True):
    host: str = "127.0.0.1"
    ws_port: Port = PORTS["simulator"]["ws"]  # Polymarket market channel at /ws/market
    http_port: Port = PORTS["simulator"]["http"]  # Gamma REST (/markets/keyset) and /control/*
    metrics_port: Port = PORTS["simulator"]["metrics"]
    assets: Annotated[int, msgspec.Meta(ge=2)] = 2000  # two per market (YES, NO)
    events_per_s: Annotated[float, msgspec.Meta(ge=0)] = 2000.0  # book changes and trades, all assets
    tick: Duration = Duration(0.01)  # how often events are generated and sent
    depth: Annotated[int, msgspec.Meta(ge=2, le=40)] = 10  # initial levels per side
    seed: int = 1
    stall_above: Annotated[int, msgspec.Meta(ge=0)] = (
        0  # connections with more assets stall silently (0: never)
    )
    gamma_page_limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100
