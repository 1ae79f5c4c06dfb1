"""The work ``python -m bench._instructions`` counts runs against the code as it is (no valgrind here:
the count itself is the tool's; these keep its scripts from drifting from the APIs they drive)."""

from bench import _instructions


def test_the_crud_work_creates_updates_and_expires_its_zones() -> None:
    assert _instructions.crud(100) == 100


def test_the_router_work_routes_updates_after_its_warm_up() -> None:
    assert _instructions.router(0) == 0
    assert _instructions.router(50) > 50  # about 1.9 updates a frame


def test_a_count_is_read_from_callgrinds_summary() -> None:
    assert _instructions.COLLECTED.search("==1== Collected : 2747854572\n").group(1) == "2747854572"  # type: ignore[union-attr]
    assert _instructions.UNITS.search("noise\nunits 7469\n").group(1) == "7469"  # type: ignore[union-attr]


def test_the_events_work_counts_the_events_of_its_lifecycle_mix() -> None:
    assert _instructions.events(0) == 0
    assert _instructions.events(200) > 2 * 200  # each zone created, expired and removed, some touched
