"""Strategy kinds that workers run: four built-ins and user callables (``module:function``).

A strategy is a function of one :class:`~shared.messages.StrategyJob` (its ``tickers`` moved in the
bucket; ``inputs[ticker]`` holds the bar, zone events and order flow; ``params`` come from config)
returning signals, or an :class:`Outcome` that also reports the symbols it used (universe
discovery)::

    from services.alerts.strategies import Signal

    def wide_spread(job):
        for t in job.tickers:
            bar = job.inputs[t]
            if bar.high - bar.low > job.params.get("range", 0.1):
                yield Signal(t, f"{t} ranged {bar.high - bar.low:.3f}", bar.high - bar.low)
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from services.alerts.params import OrderFlowRule, PercentMove, PriceCross, ZoneEventRule, parse_as
from shared.messages import StrategyJob, TickerInput


class Signal(NamedTuple):
    symbol: str
    message: str
    value: float = 0.0


@dataclass(slots=True)
class Outcome:
    signals: list[Signal] = field(default_factory=list)
    used_symbols: list[str] = field(default_factory=list)


StrategyFn = Callable[[StrategyJob], "Iterable[Signal] | Outcome | None"]


def _bars(job: StrategyJob) -> Iterable[tuple[str, TickerInput]]:
    for t in job.tickers:
        bar = job.inputs.get(t)
        if bar is not None:
            yield t, bar


def price_cross(job: StrategyJob) -> list[Signal]:
    """params: :class:`~services.alerts.params.PriceCross`. Fires when the bar crossed the level:
    from the previous close (or the bar's open when there is none) to the close."""
    p = parse_as(PriceCross, job.params)
    out = []
    for t, bar in _bars(job):
        word = p.crossed(bar.prev_close or bar.open, bar.close)
        if word is not None:
            out.append(Signal(t, p.text(t, word, bar.close), bar.close))
    return out


def percent_move(job: StrategyJob) -> list[Signal]:
    """params: :class:`~services.alerts.params.PercentMove`."""
    p = parse_as(PercentMove, job.params)
    out = []
    for t, bar in _bars(job):
        move = p.moved(bar.prev_close or bar.open, bar.close)
        if move is not None:
            out.append(Signal(t, f"{t} moved {move:+.2f}% to {bar.close:g}", move))
    return out


def zone_event(job: StrategyJob) -> list[Signal]:
    """params: :class:`~services.alerts.params.ZoneEventRule`."""
    p = parse_as(ZoneEventRule, job.params)
    return [Signal(t, p.text(t, z), z.price) for t, bar in _bars(job) for z in bar.zones if p.matches(z)]


def order_flow(job: StrategyJob) -> list[Signal]:
    """params: :class:`~services.alerts.params.OrderFlowRule`."""
    p = parse_as(OrderFlowRule, job.params)
    out = []
    for t, bar in _bars(job):
        if bar.flow is None:
            continue
        v = float(getattr(bar.flow, p.metric))
        if p.holds(v):
            out.append(Signal(t, f"{t} {p.metric} {v:g} {p.op} {p.value:g}", v))
    return out


BUILTIN: dict[str, StrategyFn] = {
    "price_cross": price_cross,
    "percent_move": percent_move,
    "zone_event": zone_event,
    "order_flow": order_flow,
}

_loaded: dict[str, StrategyFn] = {}


def load(spec: str) -> StrategyFn:
    """Import ``package.module:function`` (cached). Only for functions named in the config."""
    fn = _loaded.get(spec)
    if fn is None:
        module_name, _, attr = spec.partition(":")
        if not module_name or not attr:
            raise ValueError(f"expected 'module:function', got {spec!r}")
        obj: Any = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        if not callable(obj):
            raise TypeError(f"{spec} is not callable")
        fn = _loaded[spec] = obj
    return fn


class Refused(Exception):
    """A job the worker will not run; ``reason`` is its metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


REFUSED_PREFIX = "refused:"  # a refused job's error: "refused:<reason>: <detail>"
REFUSAL_REASONS = (
    "unknown_strategy",
    "kind_mismatch",
    "function_mismatch",
    "unloadable",
    "undecodable_job",
    "not_a_job",
)


def refusal_reason(error: str) -> str | None:
    """The reason of a refusal error string; None when the error is not a refusal."""
    if not error.startswith(REFUSED_PREFIX):
        return None
    reason = error[len(REFUSED_PREFIX) :].partition(":")[0]
    return reason if reason in REFUSAL_REASONS else None


class StrategyTable:
    """The strategies a worker runs: resolved once, by strategy id, from its own config.

    A job names a strategy; its kind and function must be the configured ones, and the function
    that runs is the one resolved here at start, never one a job names: a job cannot make a
    worker import anything.
    """

    def __init__(self, strategies: Iterable[tuple[str, str, str]]) -> None:
        """``strategies``: (id, kind, function) of each bucketed strategy in the config."""
        self.kinds: dict[str, tuple[str, str]] = {}
        self.functions: dict[str, StrategyFn] = {}
        self.unloadable: dict[str, str] = {}  # strategy id -> why its function could not be loaded
        for sid, kind, function in strategies:
            self.kinds[sid] = (kind, function if kind == "python" else "")
            if kind != "python":
                fn = BUILTIN.get(kind)
                if fn is None:
                    self.unloadable[sid] = f"unknown strategy kind {kind!r}"
                else:
                    self.functions[sid] = fn
                continue
            try:
                self.functions[sid] = load(function)
            except Exception as exc:  # a broken user module costs its strategy's jobs, not the worker
                self.unloadable[sid] = f"{function}: {type(exc).__name__}: {exc}"

    def resolve(self, job: StrategyJob) -> StrategyFn:
        """The configured function for this job; raises :class:`Refused` for anything else."""
        configured = self.kinds.get(job.strategy)
        if configured is None:
            raise Refused("unknown_strategy", f"strategy {job.strategy[:128]!r} is not configured here")
        kind, function = configured
        if job.kind != kind:
            raise Refused(
                "kind_mismatch", f"strategy {job.strategy} is {kind}, the job says {job.kind[:64]!r}"
            )
        if job.function != function:
            raise Refused(
                "function_mismatch",
                f"strategy {job.strategy} runs {function or 'a built-in'}, the job names {job.function[:128]!r}",
            )
        fn = self.functions.get(job.strategy)
        if fn is None:
            raise Refused("unloadable", self.unloadable.get(job.strategy, "not loaded"))
        return fn


def execute(job: StrategyJob, fn: StrategyFn | None = None) -> Outcome:
    """Run one job with ``fn`` (from a :class:`StrategyTable`), or a built-in kind's function;
    exceptions propagate (the worker reports them)."""
    if fn is None:
        fn = BUILTIN.get(job.kind)
        if fn is None:
            raise ValueError(
                f"unknown strategy kind {job.kind!r} (user functions run through a StrategyTable)"
            )
    got = fn(job)
    if got is None:
        return Outcome()
    if isinstance(got, Outcome):
        return got
    return Outcome(signals=[s if isinstance(s, Signal) else Signal(*s) for s in got])
