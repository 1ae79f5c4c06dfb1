"""Which ForceSubscribe ids to take (issue 13). Pure.

Any local peer can push a ForceSubscribe, and every id it names costs an upstream subscription
(400 of them a new WebSocket to Polymarket). Ids ingest already knows (Gamma discovery, the static
list, ``new_market``) are always taken; ids it does not know are taken up to ``per_minute`` in
each minute, the rest refused. An id that is not a CLOB token id (a decimal uint256) is refused
whatever the budget. Every refused id is counted by reason.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

MAX_TOKEN_DIGITS = 78  # 2**256 - 1 has 78 decimal digits

REASON_MALFORMED = "malformed"  # not a decimal token id
REASON_RATE = "unknown_over_cap"  # not known from discovery, over the per-minute budget


def is_token_id(asset: str) -> bool:
    return 0 < len(asset) <= MAX_TOKEN_DIGITS and asset.isascii() and asset.isdigit()


@dataclass(slots=True)
class Admission:
    taken: list[str] = field(default_factory=list)
    unknown_taken: int = 0
    refused: dict[str, int] = field(default_factory=dict)  # reason -> ids

    @property
    def refused_total(self) -> int:
        return sum(self.refused.values())


class ForceGate:
    """A fixed one-minute window of ``per_minute`` unknown ids (0: none unless known)."""

    def __init__(self, per_minute: int, clock: Callable[[], float], window: float = 60.0) -> None:
        self.per_minute = per_minute
        self.clock = clock
        self.window = window
        self.refused: dict[str, int] = {}  # over the gate's lifetime, by reason
        self._start = -1e18
        self._used = 0

    def admit(self, asset_ids: Iterable[str], known: Callable[[str], bool]) -> Admission:
        out = Admission()
        now = self.clock()
        if now - self._start >= self.window:
            self._start, self._used = now, 0
        seen: set[str] = set()
        for asset in asset_ids:
            if asset in seen:
                continue
            seen.add(asset)
            if not is_token_id(asset):
                reason = REASON_MALFORMED
            elif known(asset):
                out.taken.append(asset)
                continue
            elif self._used < self.per_minute:
                self._used += 1
                out.unknown_taken += 1
                out.taken.append(asset)
                continue
            else:
                reason = REASON_RATE
            out.refused[reason] = out.refused.get(reason, 0) + 1
        for reason, n in out.refused.items():
            self.refused[reason] = self.refused.get(reason, 0) + n
        return out
