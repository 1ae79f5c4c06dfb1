"""The ownership/handoff state machine on its own (handoff.py): every transition, every count."""

from __future__ import annotations

from dataclasses import dataclass

from services.ingest.handoff import RECENT_CAP, Ownership


@dataclass
class Counts:
    not_owner_drops: int = 0
    handoff_duplicates: int = 0
    handoff_switches: int = 0


class Rig:
    def __init__(self) -> None:
        self.own = Ownership("old")
        self.counts = Counts()
        self.out: list[str] = []

    def offer(self, conn: str, key: str, book: bool = False) -> None:
        self.own.offer(conn, key, self.out.append, (f"{conn}:{key}",), book, self.counts)

    @property
    def state(self) -> str:
        """The ownership's state, read afresh (an assert on ``own.state`` would narrow it for mypy)."""
        return self.own.state


def test_owned_publishes_the_owner_and_drops_strangers() -> None:
    rig = Rig()
    assert rig.state == "owned"
    rig.offer("old", "a")
    rig.offer("other", "b")
    assert rig.out == ["old:a"] and rig.counts.not_owner_drops == 1


def test_candidate_replaying_what_went_out_is_dropped_then_its_first_new_event_switches() -> None:
    rig = Rig()
    rig.own.begin("new", "h0")
    assert rig.state == "handoff"
    rig.offer("old", "a")
    rig.offer("new", "h0")  # the state published before the handoff
    rig.offer("new", "a")  # already out from the old owner
    assert rig.counts.handoff_duplicates == 2
    rig.offer("old", "b")
    rig.offer("new", "b")
    rig.offer("new", "c")  # new: the candidate takes over
    assert rig.state == "owned" and rig.own.owner == "new"
    assert rig.counts.handoff_switches == 1
    rig.offer("old", "c")  # the old connection's late copy
    assert rig.out == ["old:a", "old:b", "new:c"] and rig.counts.not_owner_drops == 1


def test_a_book_ahead_of_the_old_stream_is_held_until_the_old_owner_reaches_it() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.offer("new", "B", book=True)
    rig.offer("new", "x")
    assert rig.state == "holding" and rig.out == []
    rig.offer("old", "y")
    rig.offer("old", "B", book=True)  # caught up: that book is out, the held rest follows from new
    assert rig.out == ["old:y", "old:B", "new:x"]
    assert rig.own.owner == "new" and rig.state == "owned"
    assert rig.counts.handoff_duplicates == 1 and rig.counts.handoff_switches == 1


def test_held_events_are_released_when_the_old_connection_never_catches_up() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.offer("new", "B", book=True)
    for i in range(RECENT_CAP):
        rig.offer("new", f"k{i}")
    assert rig.own.owner == "new" and len(rig.out) == RECENT_CAP + 1 and rig.out[0] == "new:B"


def test_complete_hands_over_with_an_overlap_that_still_drops_duplicates() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.offer("old", "a")
    rig.own.complete("new", rig.counts)
    assert rig.own.owner == "new" and rig.state == "overlap"
    rig.offer("new", "a")  # still replaying what the old one published
    rig.offer("new", "b")
    rig.offer("new", "a")  # past the overlap: a repeated key is a new event now
    assert rig.out == ["old:a", "new:b", "new:a"] and rig.counts.handoff_duplicates == 1


def test_complete_with_a_held_book_publishes_it_and_what_followed() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.offer("new", "B", book=True)
    rig.offer("new", "x")
    rig.own.complete("new", rig.counts)
    assert rig.out == ["new:B", "new:x"] and rig.state == "owned" and rig.own.owner == "new"


def test_complete_or_abort_by_another_connection_changes_nothing_and_abort_restores_the_owner() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.own.complete("stranger", rig.counts)
    rig.own.abort("stranger")
    assert rig.state == "handoff"
    rig.own.abort("new")
    assert rig.state == "owned" and rig.own.owner == "old"
    rig.offer("new", "z")
    assert rig.out == [] and rig.counts.not_owner_drops == 1


def test_assign_ends_whatever_was_under_way() -> None:
    rig = Rig()
    rig.own.begin("new", "")
    rig.offer("new", "B", book=True)
    rig.own.assign("third")
    assert rig.state == "owned" and rig.own.owner == "third"
    rig.offer("third", "q")
    assert rig.out == ["third:q"]
