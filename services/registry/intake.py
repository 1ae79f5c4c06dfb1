"""What the registry does with its input, a bounded piece per event-loop turn: prices (the
detectors' candles, then the price index) and detector events from outside; each refusal counted
by reason and logged rate-limited. A mixin of :class:`~services.registry.service.RegistryService`,
which owns the sockets and the loops that call it.
"""

from __future__ import annotations

import time
import traceback

from services.registry.detectors import Detectors
from services.registry.patterns import Detection
from services.registry.registry import Registry
from services.registry.validate import MIN_TIME_NS, Limits, Refusal, check_event, check_price_input
from services.registry.zones import ZoneError
from shared.clock import Clock
from shared.messages import DetectorEvent, Message, Price
from shared.ratelog import RateLimitedLog

# How long one loop turn spends on input before it publishes and lets the other tasks (the expiry
# timer, heartbeats, snapshots) run: a burst of replayed ticks held the loop for 15 s otherwise.
# A turn ends TURN_BUDGET_S after the next planned timer (so timers fire at most that late), and
# lasts at most TURN_MAX_S when none is near: each turn's store commit and publisher flush cost
# ~0.5 ms, so longer turns carry a burst faster (replay: 2 ms turns 14 k ticks/s, 10 ms 18 k).
TURN_BUDGET_S = 0.002
TURN_MAX_S = 0.02
# Once a price caused a zone event, the turn ends within this, so that the event (a touch the
# pipeline waits for) does not wait for the rest of a 20 ms turn to be published.
EVENT_WAIT_S = 0.001


class Intake:
    registry: Registry
    detectors: Detectors | None
    clock: Clock
    limits: Limits
    skip_log: RateLimitedLog
    bad_events: dict[str, int]  # detector events refused, by reason
    prices_refused: dict[str, int]
    _symbols_ok: set[str]  # symbols whose names passed the checks (the hot path)
    _planned_wake_ns: int  # when the expiry loop next wakes (a zone's deadline)
    _planned_close_ns: int  # when the candle loop next wakes (a live candle's close)

    def emit_safely(self, oldest_ns: int = 0) -> int:
        raise NotImplementedError

    def bad(self, reason: str, detail: str) -> None:
        self.bad_events[reason] = self.bad_events.get(reason, 0) + 1
        self.skip_log(reason, "refused a detector event (%s): %s", reason, detail)

    def refuse_price(self, refusal: Refusal) -> None:
        reason = refusal.reason
        self.prices_refused[reason] = self.prices_refused.get(reason, 0) + 1
        self.skip_log(f"price_{reason}", "skipped a price (%s): %s", reason, refusal.detail)

    def internal(self, counts: dict[str, int], what: str) -> None:
        """An exception from handling one input (a bug): counted, logged with its traceback, and
        the next input is handled."""
        counts["internal"] = counts.get("internal", 0) + 1
        self.skip_log("internal", "handling %s raised; skipped:\n%s", what, traceback.format_exc())

    def _expiry_error(self, zone_id: str, exc: Exception) -> None:
        """One zone's expiry raised (a bug; counted by the core): logged, the others expire."""
        self.skip_log(
            "expiry_error",
            "expiring zone %r raised; skipped:\n%s",
            zone_id[:128],
            "".join(traceback.format_exception(exc)),
        )

    def create(self, d: Detection | DetectorEvent, now_ns: int, event_ns: int = 0) -> None:
        """A zone for a detection. Its ``created_ns`` (whence its TTL counts): a detection's own (the
        end of its last candle), an outside event's, else that message's ``event_ns``, else
        ``now_ns``. The ZoneCreated's event time is its cause's: ``event_ns``, the input that
        closed the candle (a detection), or the message's ``event_ns`` (an outside event)."""
        if isinstance(d, DetectorEvent):
            ttl, created, event_ns = d.ttl_ns, d.created_ns or d.event_ns, d.event_ns
        else:
            ttl, created = 0, d.created_ns
        try:
            self.registry.create(
                d.symbol, d.timeframe, d.kind, d.top, d.bottom, d.strength, created, now_ns,
                ttl_ns=ttl, event_ns=event_ns or now_ns,
            )  # fmt: skip
        except ZoneError as exc:  # counted by the core
            self.skip_log(exc.reason, "refused a zone (%s): %s", exc.reason, exc)

    # ------------------------------------------------------------------------------------------

    def turn_budget(self, now_ns: int) -> float:
        """Seconds this turn may spend on input: up to TURN_BUDGET_S past the next planned timer."""
        until_timer = (
            min(self._planned_wake_ns, self._planned_close_ns or self._planned_wake_ns) - now_ns
        ) / 1e9
        return min(TURN_MAX_S, max(0.0, until_timer) + TURN_BUDGET_S)

    def prices(self, batch: list[tuple[str, Message]], start: int) -> int:
        """Handle the prices of ``batch`` from ``start`` for at most TURN_BUDGET_S, publish what
        they caused; returns where it stopped. (Its time is the caller's to observe: Turns.done.)"""
        reg = self.registry
        detectors = self.detectors
        clock = self.clock
        symbols_ok = self._symbols_ok
        t0 = time.perf_counter()
        now = clock.time_ns()
        until = t0 + self.turn_budget(now)
        latest = now + self.limits.horizon_ns
        oldest = 0
        evented = False
        i = start
        n = len(batch)
        while i < n:
            if not i & 15 and i > start:
                t = time.perf_counter()
                if t > until:
                    break
                if not evented and reg.events:
                    evented = True
                    until = min(until, t + EVENT_WAIT_S)
            msg = batch[i][1]
            i += 1
            if not isinstance(msg, Price):
                continue
            try:
                symbol, ev = msg.symbol, msg.event_ns
                timely = True
                if symbol not in symbols_ok or (ev and not MIN_TIME_NS <= ev <= latest):
                    refusal = check_price_input(symbol, ev, now, self.limits)
                    if refusal is not None:
                        self.refuse_price(refusal)
                        if refusal.reason != "bad_time":
                            continue
                        timely = False  # touches zones, but no candle at that time
                    if len(symbols_ok) > 100_000:
                        symbols_ok.clear()
                    symbols_ok.add(symbol)
                if detectors is not None and timely:
                    for d in detectors.on_price(symbol, ev or now, msg.price, now):
                        self.create(d, now, ev or now)
                reg.on_price(symbol, msg.price, ev if ev and timely else now)
            except Exception:
                self.internal(self.prices_refused, f"a price of {msg.symbol[:128]!r}")
            if oldest == 0 and msg.publish_ns:
                oldest = msg.publish_ns
        self.emit_safely(oldest)
        return i

    def detector_events(self, msgs: list[Message], start: int) -> int:
        """Like :meth:`prices`, for detector events from PULL."""
        t0 = time.perf_counter()
        now = self.clock.time_ns()
        until = t0 + self.turn_budget(now)
        i = start
        while i < len(msgs):
            msg = msgs[i]
            i += 1
            try:
                refusal = check_event(msg, now, self.limits)
                if refusal is not None:
                    self.bad(*refusal)
                elif isinstance(msg, DetectorEvent):
                    self.create(msg, now)
            except Exception:
                self.internal(self.bad_events, f"a {type(msg).__name__} from {msg.publisher[:128]!r}")
            if not i & 63 and time.perf_counter() > until:
                break
        self.emit_safely()
        return i
