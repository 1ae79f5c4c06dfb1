"""The registry's loops driven by the clock (a mixin of
:class:`~services.registry.service.RegistryService`): the expiry loop, which advances the timers to
the price stream's point at each deadline, and the candle loop, which closes the candles of live
symbols gone quiet. Each turn is bounded by the clock, then publishes and yields."""

from __future__ import annotations

import asyncio
import logging
import time

from services.registry.candles import Watermark
from services.registry.config import PoolsConfig
from services.registry.intake import Intake
from services.registry.turns import Turns
from services.registry.zones import NS
from shared.backoff import sleep_or_wake
from shared.clock import RealClock

log = logging.getLogger("poolwire.registry")

# Every turn of the expiry and candle loops is bounded by the clock, not by a count: a count's
# time varies tenfold with what the pieces hold (a candle close creating zones or not).
EXPIRY_STEP = 100  # zones expired (or removed) between two looks at the clock (~0.3 ms)
# A turn handles due timers this long (~2 000 here), then publishes and yields. A price handles
# every due timer before it anyway (event time), so a longer turn holds no price back; it lets a
# burst sharing one deadline (every symbol's candle closed together) go out whole, where 4 ms
# turns left the rest of a burst behind the candles' and the outbox's turns (wheel lag p99 27 ->
# 15 ms with a core of its own).
EXPIRY_TURN_S = 0.012
CANDLE_STEP = 10  # symbols whose candles are closed between two looks at the clock
CANDLE_TURN_S = 0.002  # (100 symbols a turn took up to 18 ms of CPU when their candles closed)


class ClockedLoops(Intake):
    pools: PoolsConfig
    stream: Watermark  # the price stream's event time
    turns: Turns
    _wake: asyncio.Event  # wakes the expiry loop before its planned time
    _wake_below_ns: int  # a zone due before this (event time) wakes the expiry loop

    async def next_turn(self) -> None:
        raise NotImplementedError

    def point_ns(self, now_ns: int) -> int:
        """How far the wheel goes: the clock until the first price, and while the stream is live;
        else (a replay of history) the newest event time of its prices, whatever the pace."""
        if not self.registry.timers.seen_ns:
            return now_ns
        return self.stream.point(now_ns) + self.stream.lateness_ns

    def observe_stream(self, arrived_ns: int = 0) -> None:
        """After a turn of prices: the stream's newest event time, and whether it is live, as of
        ``arrived_ns``, when the turn's last price was sent (else the clock): the stream's lag, not
        this process's (on the clock, a registry behind its input took itself for a replay)."""
        seen = self.registry.timers.seen_ns
        if seen:
            stream = self.stream
            now = self.clock.time_ns()
            stream.observe(seen, arrived_ns if 0 < arrived_ns < now else now)
            if stream.live != self.registry.timers.live:
                self.registry.timers.live = stream.live
                log.info(
                    "the price stream is %s",
                    "live: TTLs on the clock"
                    if stream.live
                    else "behind the clock (a replay): TTLs on its event time",
                )
                self._wake.set()  # the expiry loop plans on the other time

    async def expiry_loop(self) -> None:
        interval = self.pools.auto_expire_interval or 30.0
        planned = 0  # the deadline the last sleep was for (0: the interval's backstop, or none)
        while True:
            t0 = self.turns.start()
            now = self.clock.time_ns()
            point = self.point_ns(now)
            handled = 0
            reg = self.registry
            try:  # a burst due at one instant handled together, before what it caused is published
                handled = reg.advance(point, EXPIRY_STEP)  # guarded per zone inside
                while reg.due_backlog and time.perf_counter() - t0 < EXPIRY_TURN_S:
                    handled += reg.advance(point, EXPIRY_STEP)
            except Exception:
                self.internal(self.bad_events, "the expiry pass")
            late_ms = (now - self._planned_wake_ns) / 1e6
            self.turns.by_expiry_loop += handled
            if planned:
                self.turns.woke(late_ms)
                planned = 0
            if self.registry.due_backlog:  # a big pass: publish this chunk, let the loop turn
                self.emit_safely()
                self.turns.done("expiry", t0, "%d timers, woke %.1f ms late, more due", handled, late_ms)
                await self.next_turn()
                continue
            self.emit_safely()
            self.turns.done("expiry", t0, "%d timers, woke %.1f ms late", handled, late_ms)
            wake = now + int(interval * 1e9)
            if not self.registry.timers.seen_ns or self.stream.live:  # on the clock: at the next deadline
                nxt = self.registry.timers.next_wake_ns()
                if nxt is not None and nxt < wake:
                    wake = planned = nxt
                self._wake_below_ns = wake
            else:  # event time moves with the prices, and a price expires what it reaches first
                self._wake_below_ns = point + 1  # only a zone due already (created late) wakes it
            self._planned_wake_ns = wake
            self._wake.clear()
            if await self._sleep_or_wake(max(0.0, (wake - self.clock.time_ns()) / 1e9)):
                planned = 0  # woken before its time: no lateness to count

    async def _sleep_or_wake(self, seconds: float) -> bool:
        """Sleep, unless ``_wake`` is set first (True then). On the real clock a timer sets it: one
        future, so the loop resumes in the loop iteration the timer fires in (uvloop runs timers
        first). shared.backoff.sleep_or_wake's two tasks, asyncio.wait and the cancellations took
        ~6 iterations, each holding a price turn: under load the wake came 100 ms+ late when a
        sleep of the same loop was 20-50 ms late."""
        if not isinstance(self.clock, RealClock):  # a fake clock's sleep is the only timer there is
            return await sleep_or_wake(self.clock, seconds, self._wake)
        if self._wake.is_set():
            return True
        fired = False

        def ring() -> None:
            nonlocal fired
            fired = True
            self._wake.set()

        timer = asyncio.get_running_loop().call_later(seconds, ring)
        try:
            await self._wake.wait()
        finally:
            timer.cancel()
        return not fired

    async def candle_loop(self) -> None:
        """Close the candles of live symbols that went quiet, when the next one is due (a look at
        least every second: a symbol that turns live is seen within one). Apart from the expiry
        loop: a pass walks every symbol (~3 ms for 2 000), and zone deadlines come every few ms.
        A pass runs only when a candle is due (``Detectors.next_due_ns``)."""
        detectors = self.detectors
        assert detectors is not None
        while True:
            now = self.clock.time_ns()
            due = detectors.next_due_ns()
            symbols = detectors.symbol_list() if due is not None and due <= now else []
            i = 0
            while i < len(symbols):  # at a boundary every symbol closes a candle
                t0 = self.turns.start()
                first = i
                try:
                    while i < len(symbols):
                        i += CANDLE_STEP
                        for d in detectors.on_time(now, symbols[i - CANDLE_STEP : i]):
                            self.create(d, now, now)  # closed by the clock: the clock is the cause
                        if time.perf_counter() - t0 > CANDLE_TURN_S:
                            break
                except Exception:
                    self.internal(self.prices_refused, "the candles' close on time")
                self.emit_safely()
                self.turns.done("candles", t0, "%d symbols", min(i, len(symbols)) - first)
                await self.next_turn()
            wake = now + NS
            close = detectors.next_due_ns() if symbols else due
            if close is not None and now < close < wake:  # (still due after a pass: its close raised)
                wake = close
            self._planned_close_ns = wake
            await self.clock.sleep(max(0.0, (wake - self.clock.time_ns()) / 1e9))
