"""Ownership of an asset's stream, and the recycling handoff without gap or duplicate. Pure.

Each asset is read from one connection, its owner; the same asset arriving on another connection
is dropped. During a recycling handoff the asset also has a candidate connection. The old owner's
events keep flowing and their keys (book hash, or a trade's fields) are remembered; the
candidate's events that were already published are dropped as duplicates, and its first event
that was not is published and makes the candidate the owner, after which the old connection's
events are dropped. The two connections carry the same ordered stream, so the handoff has no gap
and no duplicate.

The states (``Ownership.state``):

- ``owned``: one owner, nothing remembered. The hot path: ``conn == owner and recent is None``.
- ``handoff``: a candidate subscribed; the owner's keys are remembered, the candidate's
  duplicates dropped.
- ``holding``: the candidate delivered a book ahead of the owner's stream: it and what follows it
  are held until the owner's stream reaches that book (or the old connection is gone).
- ``overlap``: the candidate became the owner but may still replay what the old owner published:
  its events with a remembered key are dropped until the first new one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, Literal, Protocol

RECENT_CAP: Final = 4096  # keys remembered per asset during a handoff

Apply = Callable[..., None]
Held = list[tuple[str, Apply, tuple[Any, ...]]]
State = Literal["owned", "handoff", "holding", "overlap"]


class HandoffCounts(Protocol):
    """Where the counters go (the router's stats)."""

    not_owner_drops: int  # an asset's events arriving on a connection that does not own it
    handoff_duplicates: int  # candidate events already published by the old owner
    handoff_switches: int


class Ownership:
    """Who may publish an asset's events; the base of the router's per-asset state."""

    __slots__ = ("candidate", "held", "owner", "recent")

    def __init__(self, owner: str) -> None:
        self.owner = owner
        self.candidate: str | None = None
        self.recent: set[str] | None = None  # keys the old owner published (handoff, overlap)
        self.held: Held | None = None  # the candidate's events held (holding)

    @property
    def state(self) -> State:
        if self.candidate is None:
            return "owned" if self.recent is None else "overlap"
        return "handoff" if self.held is None else "holding"

    def assign(self, conn: str) -> None:
        """``conn`` owns the asset now, whatever was under way (a subscription, a reconnect)."""
        self.owner = conn
        self.candidate = None
        self.recent = None
        self.held = None

    def begin(self, new_conn: str, last_key: str) -> None:
        """``new_conn`` subscribes the asset too; ``last_key`` is the key of the state published."""
        self.candidate = new_conn
        self.recent = {last_key} if last_key else set()
        self.held = None

    def complete(self, new_conn: str, counts: HandoffCounts) -> None:
        """The old connection is gone: ``new_conn`` owns the asset if it has not taken over yet.

        Its duplicates of what the old one published are still dropped until it delivers
        something new (overlap)."""
        if self.candidate != new_conn:
            return
        if self.held is not None:  # publish its book (a resync) and what followed it
            self._switch(self.held, counts)
        else:
            self.owner = new_conn
            self.candidate = None

    def abort(self, new_conn: str) -> None:
        if self.candidate == new_conn:
            self.candidate = None
            self.recent = None
            self.held = None

    def offer(
        self,
        conn: str,
        key: str,
        apply: Apply,
        args: tuple[Any, ...],
        book: bool,
        counts: HandoffCounts,
    ) -> None:
        """Publish (``apply(*args)``), hold or drop an event of ``conn`` whose key is ``key``."""
        recent = self.recent
        if conn == self.owner:
            if recent is None:
                apply(*args)
            elif self.candidate is not None:  # old owner during a handoff: remember what went out
                if len(recent) < RECENT_CAP:
                    recent.add(key)
                apply(*args)
                held = self.held
                if held and held[0][0] == key:  # caught up with the candidate's book: switch
                    counts.handoff_duplicates += 1  # that book, already out from the old owner
                    self._switch(held[1:], counts)
            elif key in recent:  # new owner still replaying what the old one published
                counts.handoff_duplicates += 1
            else:
                self.recent = None  # past the overlap
                apply(*args)
            return
        if conn == self.candidate and recent is not None:
            held = self.held
            if held is not None:
                held.append((key, apply, args))
                if len(held) > RECENT_CAP:  # the old connection never catches up: stop waiting
                    self._switch(held, counts)
            elif key in recent:
                counts.handoff_duplicates += 1
            elif book:  # a book ahead of what the old owner delivered: hold it until it catches up
                self.held = [(key, apply, args)]
            else:
                self._switch([(key, apply, args)], counts)
            return
        counts.not_owner_drops += 1

    def _switch(self, replay: Held, counts: HandoffCounts) -> None:
        assert self.candidate is not None
        self.owner = self.candidate
        self.candidate = None
        self.recent = None
        self.held = None
        counts.handoff_switches += 1
        for _, apply, args in replay:
            apply(*args)
