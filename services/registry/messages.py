"""The wire messages the registry core builds, their classes under Final names.

Compiled code reads a name imported from a module outside its group (shared/messages.py) from its
module's dict at each use, ~150 instructions; a Final name of a module of the group it reads as a
C static (shared/compiled.py). A touch builds a ``ZoneTouched``: one lookup of seven thousand
instructions, the same for each event.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

from shared import messages

new_zone: Final = messages.Zone
zone_created: Final = messages.ZoneCreated
zone_expired: Final = messages.ZoneExpired
zone_removed: Final = messages.ZoneRemoved
zone_touched: Final = messages.ZoneTouched
copy_zone: Final[Callable[[messages.Zone], messages.Zone]] = messages.Zone.__copy__  # type: ignore[attr-defined]
