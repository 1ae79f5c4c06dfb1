"""Alert frequency control: once, once per bar, once per bar close, every (with a repeat interval).

The options are TradingView's ("Only once", "Once per bar", "Once per bar close") plus
Alertmanager's ``repeat_interval`` for a condition that keeps firing. The decision is pure: it takes
the persisted :class:`AlertState` of one (strategy, symbol) and returns whether to publish and the
new state; the caller persists the new state *before* publishing, so a restart never repeats one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import msgspec

Frequency = Literal["once", "once_per_bar", "once_per_bar_close", "every"]


class AlertState(msgspec.Struct, array_like=True, kw_only=True):
    """What is remembered of one (strategy, symbol)."""

    fired: int = 0  # alerts published so far
    last_fired_ns: int = 0
    last_bar_ns: int = -1  # start of the bar of the last published alert
    last_bucket_ns: int = -1  # evaluation (bucket boundary) of the last published alert
    active: bool = False  # "every": the condition fired at its last evaluation


STATE_ENCODER = msgspec.msgpack.Encoder()
STATE_DECODER = msgspec.msgpack.Decoder(AlertState)


@dataclass(frozen=True, slots=True)
class Policy:
    frequency: Frequency = "every"
    bar_ns: int = 60_000_000_000
    repeat_interval_ns: int = 0

    def __post_init__(self) -> None:
        if self.bar_ns <= 0:
            raise ValueError("bar must be > 0")


def decide(policy: Policy, state: AlertState | None, bucket_ns: int, now_ns: int) -> tuple[bool, AlertState]:
    """Whether an alert that fired at evaluation ``bucket_ns`` is published, and the state after.

    ``bucket_ns`` is the bucket boundary the job evaluated (the close of the bar that just ended).
    The same evaluation is never published twice, whatever the frequency (a retried job, a replay).
    """
    st = state if state is not None else AlertState()
    if st.last_bucket_ns == bucket_ns:
        return False, st
    bar = bucket_ns - bucket_ns % policy.bar_ns
    freq = policy.frequency
    if freq == "once":
        allow = st.fired == 0
    elif freq == "once_per_bar":
        allow = st.last_bar_ns != bar
    elif freq == "once_per_bar_close":
        allow = bucket_ns % policy.bar_ns == 0 and st.last_bar_ns != bar
    else:  # every
        allow = (
            not st.active
            or policy.repeat_interval_ns <= 0
            or now_ns - st.last_fired_ns >= policy.repeat_interval_ns
        )
    if not allow:
        if freq == "every" and not st.active:
            return False, msgspec.structs.replace(st, active=True)
        return False, st
    return True, AlertState(
        fired=st.fired + 1, last_fired_ns=now_ns, last_bar_ns=bar, last_bucket_ns=bucket_ns, active=True
    )


def resolve(state: AlertState | None) -> AlertState | None:
    """The strategy evaluated the symbol and did not fire: an "every" alert is no longer firing.

    Returns the new state, or None when nothing changed (nothing to persist).
    """
    if state is None or not state.active:
        return None
    return msgspec.structs.replace(state, active=False)
