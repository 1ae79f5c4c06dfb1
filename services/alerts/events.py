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

from services.alerts.params import EVENT_KINDS, PriceCross, StrategyParams, ZoneEventRule, parse
from services.alerts.strategies import Signal
from services.alerts.throttle import StrategySpec
from shared.messages import AlertZoneEvent


def check_params(kind: str, params: Mapping[str, Any]) -> StrategyParams:
    """An event strategy's params as their struct; ValueError naming what is wrong."""
    if kind not in EVENT_KINDS:
        raise ValueError(f"kind {kind} cannot be event-triggered (only {', '.join(EVENT_KINDS)})")
    return parse(kind, params)


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


class EventEvaluator:
    """Which event strategies a message fires. Universes are resolved once per symbol and cached."""

    def __init__(self, strategies: Iterable[EventStrategy]) -> None:
        self.strategies = {s.id: s for s in strategies}
        self.stats = EventStats()
        self._crosses: dict[str, tuple[tuple[str, PriceCross], ...]] = {}
        self._zones: dict[str, tuple[tuple[str, ZoneEventRule], ...]] = {}
        self._last: dict[str, float] = {}  # previous price of symbols some price_cross watches
        self._cross_rules: list[tuple[str, PriceCross]] = []
        self._zone_rules: list[tuple[str, ZoneEventRule]] = []
        for s in self.strategies.values():
            p = check_params(s.kind, s.params)
            if isinstance(p, PriceCross):
                self._cross_rules.append((s.id, p))
            elif isinstance(p, ZoneEventRule):
                self._zone_rules.append((s.id, p))

    def __bool__(self) -> bool:
        return bool(self.strategies)

    def _resolve(self, symbol: str) -> None:
        """The rules covering ``symbol``: tuples of the shared rule objects (a symbol costs its
        two tuples, not copies of every rule)."""
        self._crosses[symbol] = tuple(r for r in self._cross_rules if self.strategies[r[0]].covers(symbol))
        self._zones[symbol] = tuple(r for r in self._zone_rules if self.strategies[r[0]].covers(symbol))

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
        for sid, p in rules:
            word = p.crossed(prev, price)
            if word is not None:
                out.append((sid, Signal(symbol, p.text(symbol, word, price), price)))
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
        out = [(sid, Signal(symbol, p.text(symbol, z), z.price)) for sid, p in rules if p.matches(z)]
        self.stats.signals += len(out)
        return out
