"""The built-in strategy kinds' parameters: one msgspec tagged union, each predicate once. Pure.

A strategy's ``params`` (config, and each job on the wire) are converted to the struct of its
``kind`` (:func:`parse`): types, defaults and unknown keys are checked when the config is read,
and both the workers' bucketed strategies (strategies.py, over a closed bar) and the service's
event-triggered ones (events.py, on each message) ask the same struct the same question
(:meth:`PriceCross.crossed`, :meth:`ZoneEventRule.matches`) and word what fired the same way.
``python`` strategies take any params: they are their function's business.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping
from typing import Any, Final, Literal, TypeVar

import msgspec

from shared.messages import AlertZoneEvent, ZoneEventName

Direction = Literal["up", "down", "any"]
FlowMetric = Literal[
    "delta", "cvd", "cvd_change", "imbalance", "trades_per_s", "buy_volume", "sell_volume", "trades"
]
Comparison = Literal[">", ">=", "<", "<="]
_OPS: Final[dict[str, Callable[[Any, Any], bool]]] = {
    ">": operator.gt,
    ">=": operator.ge,
    "<": operator.lt,
    "<=": operator.le,
}


class _Params(msgspec.Struct, tag_field="kind", forbid_unknown_fields=True, frozen=True):
    pass


class PriceCross(_Params, tag="price_cross", frozen=True):
    level: float
    direction: Direction = "any"

    def crossed(self, start: float, end: float) -> Literal["above", "below"] | None:
        """Whether the step from ``start`` to ``end`` crossed the level in a watched direction."""
        level = self.level
        if start < level <= end and self.direction != "down":
            return "above"
        if start > level >= end and self.direction != "up":
            return "below"
        return None

    def text(self, symbol: str, word: str, price: float) -> str:
        return f"{symbol} crossed {word} {self.level:g} at {price:g}"


class PercentMove(_Params, tag="percent_move", frozen=True):
    pct: float
    direction: Direction = "any"

    def moved(self, start: float, end: float) -> float | None:
        """The move from ``start`` to ``end`` in %, if it is at least ``pct`` in a watched direction."""
        if start <= 0:
            return None
        move = (end - start) / start * 100.0
        if (move >= self.pct and self.direction != "down") or (move <= -self.pct and self.direction != "up"):
            return move
        return None


class ZoneEventRule(_Params, tag="zone_event", frozen=True):
    events: frozenset[ZoneEventName] = frozenset({"touched"})
    timeframes: frozenset[str] = frozenset()  # empty: any
    kinds: frozenset[str] = frozenset()  # empty: any

    def matches(self, z: AlertZoneEvent) -> bool:
        return (
            z.event in self.events
            and (not self.timeframes or z.timeframe in self.timeframes)
            and (not self.kinds or z.kind in self.kinds)
        )

    @staticmethod
    def text(symbol: str, z: AlertZoneEvent) -> str:
        return f"{symbol} {z.event} {z.timeframe} {z.kind} zone {z.bottom:g}-{z.top:g}"


class OrderFlowRule(_Params, tag="order_flow", frozen=True):
    metric: FlowMetric
    value: float
    op: Comparison = ">"

    def holds(self, v: float) -> bool:
        return _OPS[self.op](v, self.value)


StrategyParams = PriceCross | PercentMove | ZoneEventRule | OrderFlowRule
P = TypeVar("P", PriceCross, PercentMove, ZoneEventRule, OrderFlowRule)
BUILTIN_KINDS: Final = ("price_cross", "percent_move", "zone_event", "order_flow")
EVENT_KINDS: Final = ("price_cross", "zone_event")


def parse_as(cls: type[P], params: Mapping[str, Any]) -> P:
    """``params`` as the struct of one kind (a worker's job: its kind is checked already)."""
    try:
        return msgspec.convert(params, cls)
    except msgspec.ValidationError as exc:
        raise ValueError(f"params: {exc}") from None


def parse(kind: str, params: Mapping[str, Any]) -> StrategyParams:
    """The params of a built-in kind as its struct; ValueError naming what is wrong."""
    if kind not in BUILTIN_KINDS:
        raise ValueError(f"kind {kind!r} has no built-in params (one of {', '.join(BUILTIN_KINDS)})")
    try:
        parsed: StrategyParams = msgspec.convert({**params, "kind": kind}, StrategyParams)
    except msgspec.ValidationError as exc:
        raise ValueError(f"params: {exc}") from None
    return parsed
