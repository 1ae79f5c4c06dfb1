"""The zone registry core: pure, synchronous, no sockets, no clock: every call takes its time.

Lifecycle: ACTIVE -(price enters)-> TOUCHED -(ttl | filled | evicted)-> EXPIRED -> GRACE
-(grace period over)-> removed. Every transition appends a message to :attr:`Registry.events`
(``ZoneCreated``, ``ZoneTouched``, ``ZoneExpired`` with its reason, ``ZoneRemoved``), each carrying
a copy of the zone as it was then and the event time of its cause (README, "Event time").

Structures (zones.py: the touch and fill rules): ``id -> entry`` (O(1) get/update/delete); a
book per (symbol, timeframe), kept while it has an active zone, so expiring an H1 zone never touches
an H4 zone; :class:`~services.registry.due.DueTimers`, every TTL and grace period on event time; a
price index per symbol (price_index.py). Capacity: at most ``max_per_tf`` active zones per timeframe
(all symbols); one more evicts the weakest (lowest strength, then oldest created_ns), counted.
Confluence: a ``ZoneCreated`` lists the active zones of *other* timeframes of the same symbol whose
``[bottom, top]`` overlaps the new zone's. Compiled by mypyc where it can be (shared/compiled.py)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator
from typing import Final

from services.registry.books import Book, WeakestFirst
from services.registry.due import DueTimers
from services.registry.entry import OUT, Entry
from services.registry.messages import copy_zone as _copy
from services.registry.messages import new_zone, zone_created, zone_expired, zone_removed, zone_touched
from services.registry.price_index import PriceIndex, PriceMoves
from services.registry.stats import LAG_BOUNDS_NS, RegistryStats
from services.registry.zones import FILL_NONE, FILL_SIDE, Rules, ZoneError, check_range, zone_id
from shared.messages import Message, Zone

MAX_TTL_NS: Final = 7 * 86400 * 1_000_000_000  # the horizon the wheel is laid out for (wheel.py)


class Registry(PriceMoves):
    """Zones per (symbol, timeframe), their TTLs on a timing wheel, and a price index per symbol."""

    def __init__(self, rules: Rules, now_ns: int = 0, *, wall: Callable[[], int] | None = None) -> None:
        """``wall``: the wall clock, if any (:class:`~services.registry.due.DueTimers`)."""
        self.rules = rules
        self.events: list[Message] = []
        self.stats = RegistryStats()
        self._entries: dict[str, Entry] = {}
        self._books: dict[str, dict[str, Book]] = {}  # symbol -> tf -> book
        self._prices = PriceIndex(self.stats, self)
        self.timers: DueTimers[str] = DueTimers(now_ns, wall)  # on event time
        self._weakest = WeakestFirst()
        # Told of each zone whose expiry raised (a bug), after it is counted; the others go on.
        self.on_expiry_error: Callable[[str, Exception], None] | None = None
        for tf in rules.timeframes:
            self.stats.tf(tf)

    # ------------------------------------------------------------------------------------------
    # Reads

    def __len__(self) -> int:
        """Every zone held: active, touched and in grace."""
        return len(self._entries)

    def __contains__(self, zone_id: object) -> bool:
        return zone_id in self._entries

    def get(self, zone_id: str) -> Zone | None:
        entry = self._entries.get(zone_id)
        return None if entry is None else entry.zone

    def query_active(self, symbol: str, timeframe: str) -> list[Zone]:
        book = self._books.get(symbol, {}).get(timeframe)
        return [] if book is None else list(book.zones.values())

    def active(self) -> Iterator[Zone]:
        """Every active (or touched) zone."""
        for tfs in self._books.values():
            for book in tfs.values():
                yield from book.zones.values()

    def zones(self) -> Iterator[Zone]:
        """Every zone held, grace included."""
        for entry in self._entries.values():
            yield entry.zone

    def active_count(self, timeframe: str) -> int:
        return self.stats.tf(timeframe).active

    def next_deadline_ns(self) -> int | None:
        return self.timers.next_deadline_ns()

    def last_price(self, symbol: str) -> float | None:
        return self._prices.last_price(symbol)

    def on_price(self, symbol: str, price: float, event_ns: int) -> None:
        """A price at its event time: the zones due expire first (their deadline reached by its
        event time, or by the wheel's point: it cannot touch them), then it touches the zones the
        move enters and fills those it crosses."""
        timers = self.timers
        if event_ns > timers.seen_ns:
            timers.see(event_ns)
        if event_ns >= timers.next_ns:
            to = timers.cap(event_ns)
            if to >= timers.next_ns:
                timers.fire(to)
                self._handle(to, None)
        self._prices.on_price(symbol, price, event_ns)

    def drain(self) -> list[Message]:
        """The events since the last drain, oldest first."""
        out, self.events = self.events, []
        return out

    # Create / update / delete ---------------------------------------------------------------

    def reject(self, reason: str) -> None:
        self.stats.rejected[reason] = self.stats.rejected.get(reason, 0) + 1

    def create(
        self,
        symbol: str,
        timeframe: str,
        kind: str,
        top: float,
        bottom: float,
        strength: float,
        created_ns: int,
        now_ns: int,
        *,
        ttl_ns: int = 0,
        event_ns: int = 0,
    ) -> Zone | None:
        """Create a zone; returns it, the existing zone for a repeated detection, or None if too weak.
        ``event_ns``: its cause's event time, the ZoneCreated's (default and at least ``created_ns``).
        Raises ZoneError (counted in ``stats.rejected``) for a bad range, unknown timeframe or a
        ``ttl_ns`` outside ``[0, MAX_TTL_NS]`` (0: the timeframe's configured TTL).
        ``created_ns`` may lie in the past (out of order): the TTL counts from it, and a zone
        already past its TTL expires on the next :meth:`advance`.
        """
        tf_rules = self.rules.timeframes.get(timeframe)
        try:
            if tf_rules is None:
                raise ZoneError("unknown_timeframe", f"timeframe {timeframe!r} is not configured")
            if not symbol:
                raise ZoneError("bad_symbol", "symbol is empty")
            if not 0 <= ttl_ns <= MAX_TTL_NS:
                raise ZoneError("bad_ttl", f"ttl_ns {ttl_ns} is outside [0, {MAX_TTL_NS}] (0: configured)")
            check_range(top, bottom, strength)
        except ZoneError as exc:
            self.reject(exc.reason)
            raise
        if strength < self.rules.strength_threshold:
            self.reject("weak")
            return None
        if created_ns <= 0:
            created_ns = now_ns
        zid = zone_id(timeframe, created_ns, symbol, kind, top, bottom)
        entry = self._entries.get(zid)
        if entry is not None:
            self.stats.duplicates += 1
            return entry.zone
        st = self.stats.by_tf[timeframe]
        if st.active >= self.rules.max_per_tf:
            self._evict_one(timeframe, event_ns or created_ns)  # the new zone is the cause
        zone = new_zone(
            id=zid,
            symbol=symbol,
            timeframe=timeframe,
            kind=kind,
            top=top,
            bottom=bottom,
            strength=strength,
            created_ns=created_ns,
            expires_ns=created_ns + (ttl_ns or tf_rules.ttl_ns),
        )
        confluence = self._confluence(symbol, timeframe, bottom, top)
        self._insert(zone, tf_rules.hit_tolerance)
        st.created += 1
        ev = max(event_ns, created_ns)
        self.events.append(zone_created(zone=_copy(zone), confluence=confluence, event_ns=ev))
        return zone

    def _confluence(self, symbol: str, timeframe: str, bottom: float, top: float) -> list[str]:
        tfs = self._books.get(symbol)
        if tfs is None or len(tfs) < 2 - (timeframe not in tfs):
            return []
        found: list[str] = []
        for tf, book in tfs.items():
            if tf != timeframe:
                found.extend(book.overlapping(bottom, top))
        return found

    def _insert(self, zone: Zone, tolerance: float) -> None:
        """Index an active zone and schedule its TTL (no event)."""
        top, bottom = zone.top, zone.bottom
        tol = tolerance * abs(top)
        st = self.stats.by_tf[zone.timeframe]
        entry = Entry(zone, bottom - tol, top + tol, FILL_SIDE.get(zone.kind, FILL_NONE), st)
        zid, symbol, tf = entry.id, entry.symbol, entry.timeframe
        self._entries[zid] = entry
        tfs = self._books.get(symbol)
        if tfs is None:
            tfs = self._books[symbol] = {}
        book = tfs.get(tf)
        if book is None:
            book = tfs[tf] = Book()
        book.add(zid, bottom, top, zone)
        st.active += 1
        if zone.state == "touched":
            st.touched_now += 1
        self._weakest.push(tf, zone.strength, entry.created_ns, zid, st.active)
        self.timers.schedule(zid, entry.expires_ns)
        self._prices.place(entry)

    def update(
        self,
        zone_id: str,
        *,
        top: float | None = None,
        bottom: float | None = None,
        strength: float | None = None,
    ) -> Zone:
        """Change an active zone's range or strength in place (its id stays). KeyError if unknown."""
        entry = self._entries[zone_id]
        zone = entry.zone
        if entry.side == OUT:
            raise ZoneError("not_active", f"zone {zone_id} is not active")
        new_top = zone.top if top is None else top
        new_bottom = zone.bottom if bottom is None else bottom
        new_strength = zone.strength if strength is None else strength
        check_range(new_top, new_bottom, new_strength)
        if new_strength != zone.strength:
            zone.strength = new_strength
            self._weakest.push(entry.timeframe, new_strength, entry.created_ns, zone_id, entry.st.active)
        if new_top != zone.top or new_bottom != zone.bottom:
            zone.top = new_top
            zone.bottom = new_bottom
            book = self._books[entry.symbol][entry.timeframe]
            book.recent.append((new_bottom, new_top, zone_id))
            if new_top - new_bottom > book.max_height:
                book.max_height = new_top - new_bottom
            tol = self.rules.timeframes[entry.timeframe].hit_tolerance * abs(new_top)
            entry.lo = new_bottom - tol
            entry.hi = new_top + tol
            self._prices.replace(entry)
        return zone

    def delete(self, zone_id: str, now_ns: int) -> bool:
        """Remove a zone now, grace or not (an operator's delete): emits ZoneRemoved only."""
        entry = self._entries.get(zone_id)
        if entry is None:
            return False
        if entry.side != OUT:
            self._deactivate(entry)
        self.timers.wheel.cancel(zone_id)
        self._remove(entry, now_ns)
        return True

    # ------------------------------------------------------------------------------------------
    # Lifecycle

    def _deactivate(self, entry: Entry) -> None:
        tf = entry.timeframe
        book = (tfs := self._books[entry.symbol])[tf]
        del book.zones[entry.id]
        if not book.zones:  # only dead spans left: dropped, made again by the next zone
            del tfs[tf]
            if not tfs:
                del self._books[entry.symbol]
        st = entry.st
        st.active -= 1
        if entry.zone.state == "touched":
            st.touched_now -= 1
        self._prices.unplace(entry)

    def _expire(self, entry: Entry, reason: str, event_ns: int) -> None:
        """Active -> expired (event) -> grace, ended at the cause's ``event_ns`` (not before its
        creation; README "Event time"); removal scheduled after the grace period."""
        self._deactivate(entry)
        zone = entry.zone
        zone.state = "expired"
        zone.ended_ns = ended = max(event_ns, entry.created_ns)
        st = entry.st
        if reason == "ttl":
            st.expired_ttl += 1
        elif reason == "filled":
            st.expired_filled += 1
        else:
            st.expired_evicted += 1
        self.events.append(zone_expired(zone=_copy(zone), reason=reason, event_ns=ended))  # type: ignore[arg-type]
        zone.state = "grace"
        st.grace += 1  # _remove takes it off again
        if self.rules.grace_ns > 0:
            self.timers.schedule(entry.id, ended + self.rules.grace_ns)
        else:
            self.timers.wheel.cancel(entry.id)
            self._remove(entry, ended)

    def on_touch(self, entry: Entry, price: float, event_ns: int) -> None:
        zone = entry.zone
        zone.touches += 1
        st = entry.st
        if zone.state != "touched":
            zone.state = "touched"
            st.touched_now += 1
        st.touched += 1
        ev = max(event_ns, entry.created_ns)
        self.events.append(zone_touched(zone=_copy(zone), price=price, event_ns=ev))

    def on_fill(self, entry: Entry, event_ns: int) -> None:
        self._expire(entry, "filled", event_ns)

    def _remove(self, entry: Entry, event_ns: int) -> None:
        zone = entry.zone
        del self._entries[entry.id]
        st = entry.st
        st.removed += 1
        if zone.state == "grace":
            st.grace -= 1
        self.events.append(zone_removed(zone=_copy(zone), event_ns=event_ns))

    def _evict_one(self, timeframe: str, event_ns: int) -> None:
        def active(zone_id: str) -> Zone | None:
            entry = self._entries.get(zone_id)
            return None if entry is None or entry.side == OUT else entry.zone

        books = [b for tfs in self._books.values() if (b := tfs.get(timeframe)) is not None]
        zid = self._weakest.pop(timeframe, self.stats.by_tf[timeframe].active, active, books)
        if zid is not None:
            self._expire(self._entries[zid], "evicted", event_ns)

    def advance(self, now_ns: int, limit: int | None = None) -> int:
        """Fire every TTL and grace period due at ``now_ns`` (the shell's point: the clock when
        live, else event time); returns how many were handled. ``limit``: at most that many, the
        rest wait in :attr:`due_backlog`. Each one's lateness goes to ``stats.lag_counts``."""
        self.timers.fire(now_ns)
        return self._handle(now_ns, limit)

    def _handle(self, to_ns: int, limit: int | None) -> int:
        """Expire (or remove) the due timers, at most ``limit``; the events carry the deadline."""
        timers = self.timers
        due, waiting, wall, entries = timers.due, timers.wheel.holds, timers.wall, self._entries
        grace = self.rules.grace_ns
        stats = self.stats
        counts = stats.lag_counts
        lag = total = handled = n = 0
        while due and (limit is None or n < limit):
            zid, known = due.popleft()
            n += 1
            entry = entries.get(zid)
            if entry is None or waiting(zid):  # gone, or rescheduled meanwhile (on the wheel again)
                continue
            active = entry.side != OUT
            deadline = entry.expires_ns if active else entry.zone.ended_ns + grace
            handled += 1
            try:
                self._expire(entry, "ttl", deadline) if active else self._remove(entry, deadline)
            except Exception as exc:  # a bug with one zone: the others still expire
                stats.expiry_errors += 1
                if self.on_expiry_error is not None:
                    self.on_expiry_error(zid, exc)
                continue
            late = (to_ns if wall is None else wall()) - (known if known > deadline else deadline)
            late = late if late > 0 else 0
            counts[bisect_left(LAG_BOUNDS_NS, late)] += 1
            total += late
            lag = late if late > lag else lag
        if n:
            timers.refresh()
        if handled:
            stats.lag_sum_ns += total
            stats.last_lag_ns = lag
            stats.max_lag_ns = max(stats.max_lag_ns, lag)
        return handled

    @property
    def due_backlog(self) -> int:
        """Timers due at the last advance but not yet handled (its limit left them)."""
        return len(self.timers.due)

    def restore(self, zones: Iterable[Zone], now_ns: int) -> int:
        """Load zones kept across a restart, without events; the next advance expires the overdue.
        Active zones get their TTL back on the wheel (a past deadline fires on the next advance);
        zones in grace get the rest of their grace period. Returns how many were restored."""
        count = 0
        for zone in zones:
            if zone.id in self._entries:
                continue
            tf_rules = self.rules.timeframes.get(zone.timeframe)
            if zone.state in ("active", "touched"):
                if tf_rules is None:
                    self.reject("unknown_timeframe")
                    continue
                self._insert(zone, tf_rules.hit_tolerance)
            else:
                zone.state = "grace"
                if zone.ended_ns <= 0:
                    zone.ended_ns = now_ns
                st = self.stats.tf(zone.timeframe)
                self._entries[zone.id] = Entry(zone, zone.bottom, zone.top, FILL_NONE, st)
                st.grace += 1
                self.timers.schedule(zone.id, zone.ended_ns + self.rules.grace_ns)
            count += 1
        return count
