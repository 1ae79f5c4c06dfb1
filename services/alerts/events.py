"""Event-triggered strategies: evaluated on each message, in the service, the moment it arrives.

A strategy with ``trigger: event`` is not run at bucket boundaries by the workers: the service
checks it against every ``Price`` and zone event of its universe as it comes in, and what fires is
published at once (after frequency control), so an alert leaves within a millisecond or two of
the price that caused it instead of at the next bucket boundary.

Only the cheap, trusted built-ins run here, O(1) per message: ``price_cross`` (the step from the
symbol's previous price to this one crosses ``level``) and ``zone_event`` (a matching zone
event). Anything that needs a bar, order flow or user code stays bucketed on the workers, where a
slow or crashing strategy costs its own job and never the service.

Pure and synchronous: no sockets, no clock (every call takes the message's facts).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.alerts.strategies import Signal
from services.alerts.throttle import StrategySpec
from shared.messages import AlertZoneEvent

EVENT_KINDS = ("price_cross", "zone_event")
DIRECTIONS = ("up", "down", "any")
ZONE_EVENTS = ("created", "touched", "expired", "removed")


def check_params(kind: str, params: Mapping[str, Any]) -> None:
    """Raise ValueError naming what is wrong with an event strategy's params."""
    if kind == "price_cross":
        level = params.get("level")
        if isinstance(level, bool) or not isinstance(level, int | float):
            raise ValueError(f"params.level must be a number, got {level!r}")
        if params.get("direction", "any") not in DIRECTIONS:
            raise ValueError(f"params.direction must be one of {', '.join(DIRECTIONS)}")
    elif kind == "zone_event":
        events = params.get("events", ["touched"])
        if not isinstance(events, list) or not all(e in ZONE_EVENTS for e in events):
            raise ValueError(f"params.events must be a list of {', '.join(ZONE_EVENTS)}; got {events!r}")
        for key in ("timeframes", "kinds"):
            value = params.get(key, [])
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"params.{key} must be a list of strings; got {value!r}")
    else:
        raise ValueError(f"kind {kind} cannot be event-triggered (only {', '.join(EVENT_KINDS)})")


@dataclass(frozen=True, slots=True)
class EventStrategy:
    id: str
    kind: str
    universe: StrategySpec  # list / glob / discover (= every ticker)
    params: Mapping[str, Any]

    def covers(self, ticker: str) -> bool:
        u = self.universe
        if u.mode == "discover":
            return True
        return ticker in u.tickers or u.matches(ticker)


@dataclass(slots=True)
class EventStats:
    evaluations: int = 0  # (message, strategy) pairs checked
    signals: int = 0  # of which fired (before frequency control)


@dataclass(slots=True)
class _Cross:
    id: str
    level: float
    up: bool
    down: bool


@dataclass(slots=True)
class _ZoneRule:
    id: str
    events: frozenset[str]
    timeframes: frozenset[str]
    kinds: frozenset[str]


class EventEvaluator:
    """Which event strategies a message fires. Universes are resolved once per symbol and cached."""

    def __init__(self, strategies: Iterable[EventStrategy]) -> None:
        self.strategies = {s.id: s for s in strategies}
        for s in self.strategies.values():
            check_params(s.kind, s.params)
        self.stats = EventStats()
        self._crosses: dict[str, tuple[_Cross, ...]] = {}
        self._zones: dict[str, tuple[_ZoneRule, ...]] = {}
        self._last: dict[str, float] = {}  # previous price of symbols some price_cross watches
        self._cross_rules: list[_Cross] = []
        self._zone_rules: list[_ZoneRule] = []
        for s in self.strategies.values():
            p = s.params
            if s.kind == "price_cross":
                direction = p.get("direction", "any")
                self._cross_rules.append(
                    _Cross(s.id, float(p["level"]), direction != "down", direction != "up")
                )
            else:
                self._zone_rules.append(
                    _ZoneRule(
                        s.id,
                        frozenset(p.get("events", ["touched"])),
                        frozenset(p.get("timeframes", [])),
                        frozenset(p.get("kinds", [])),
                    )
                )

    def __bool__(self) -> bool:
        return bool(self.strategies)

    def _resolve(self, symbol: str) -> None:
        """The rules covering ``symbol``: tuples of the shared rule objects (a symbol costs its
        two tuples, not copies of every rule)."""
        self._crosses[symbol] = tuple(r for r in self._cross_rules if self.strategies[r.id].covers(symbol))
        self._zones[symbol] = tuple(r for r in self._zone_rules if self.strategies[r.id].covers(symbol))

    def on_price(self, symbol: str, price: float) -> list[tuple[str, Signal]]:
        """The price_cross strategies the step from the symbol's previous price to ``price`` fires."""
        rules = self._crosses.get(symbol)
        if rules is None:
            self._resolve(symbol)
            rules = self._crosses[symbol]
        if not rules:
            return []
        prev = self._last.get(symbol)
        self._last[symbol] = price
        self.stats.evaluations += len(rules)
        if prev is None or prev == price:
            return []
        out: list[tuple[str, Signal]] = []
        for r in rules:
            level = r.level
            if r.up and prev < level <= price:
                out.append((r.id, Signal(symbol, f"{symbol} crossed above {level:g} at {price:g}", price)))
            elif r.down and prev > level >= price:
                out.append((r.id, Signal(symbol, f"{symbol} crossed below {level:g} at {price:g}", price)))
        self.stats.signals += len(out)
        return out

    def on_zone(self, symbol: str, z: AlertZoneEvent) -> list[tuple[str, Signal]]:
        """The zone_event strategies this zone event fires (the same message as the bucketed kind)."""
        rules = self._zones.get(symbol)
        if rules is None:
            self._resolve(symbol)
            rules = self._zones[symbol]
        if not rules:
            return []
        self.stats.evaluations += len(rules)
        out: list[tuple[str, Signal]] = []
        for r in rules:
            if (
                z.event in r.events
                and (not r.timeframes or z.timeframe in r.timeframes)
                and (not r.kinds or z.kind in r.kinds)
            ):
                text = f"{symbol} {z.event} {z.timeframe} {z.kind} zone {z.bottom:g}-{z.top:g}"
                out.append((r.id, Signal(symbol, text, z.price)))
        self.stats.signals += len(out)
        return out
