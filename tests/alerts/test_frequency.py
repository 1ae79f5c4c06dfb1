"""Frequency options: once, once per bar, once per bar close, every with a repeat interval."""

from __future__ import annotations

from typing import Any

from services.alerts.frequency import AlertState, Policy, decide, resolve

S = 1_000_000_000
M = 60 * S
H = 60 * M
T0 = 1_700_000_000 * S // H * H  # on an hour boundary


def run(policy: Policy, fired_at: list[int], state: AlertState | None = None) -> list[int]:
    """Evaluations (bucket boundaries) at which an alert that fired was published."""
    published = []
    for b in fired_at:
        ok, state = decide(policy, state, b, b)
        if ok:
            published.append(b)
    return published


def test_once_ever() -> None:
    assert run(Policy("once", H), [T0 + M, T0 + 2 * M, T0 + 2 * H]) == [T0 + M]


def test_once_per_bar_fires_intrabar_once() -> None:
    evals = [T0 + k * M for k in range(1, 130)]  # 1m evaluations over two hour bars and more
    assert run(Policy("once_per_bar", H), evals) == [T0 + M, T0 + H, T0 + 2 * H]


def test_once_per_bar_close_only_at_the_close() -> None:
    evals = [T0 + k * M for k in range(1, 130)]
    assert run(Policy("once_per_bar_close", H), evals) == [T0 + H, T0 + 2 * H]


def test_every_with_repeat_interval_and_resolution() -> None:
    policy = Policy("every", M, repeat_interval_ns=5 * M)
    state: AlertState | None = None
    published = []
    for k in range(1, 13):
        b = T0 + k * M
        if k == 8:  # the condition stopped firing: resolved
            state = resolve(state) or state
            continue
        ok, state = decide(policy, state, b, b)
        if ok:
            published.append(k)
    # fires at 1, repeats at 6 (5 min later), resolved at 8, fires again at once at 9
    assert published == [1, 6, 9]


def test_every_without_repeat_interval_fires_each_evaluation() -> None:
    assert run(Policy("every", M), [T0 + M, T0 + 2 * M]) == [T0 + M, T0 + 2 * M]


def test_same_evaluation_is_never_published_twice() -> None:
    for freq in ("once", "once_per_bar", "once_per_bar_close", "every"):
        policy: Any = Policy(freq, M)
        ok, state = decide(policy, None, T0, T0)
        assert ok
        again, _ = decide(policy, state, T0, T0 + S)  # a retried job, a replay after restart
        assert not again, freq


def test_resolve_only_changes_an_active_state() -> None:
    assert resolve(None) is None
    assert resolve(AlertState()) is None
    st = resolve(AlertState(active=True, fired=3))
    assert st is not None and not st.active and st.fired == 3


def test_states_persist_in_both_stores(store_factory: Any) -> None:
    store = store_factory()
    _ok, st = decide(Policy("once", M), None, T0, T0)
    store.put_alert_states({("s1", "pm.1"): st})
    store2 = store_factory()  # a restart
    got = store2.get_alert_states([("s1", "pm.1"), ("s1", "pm.2")])
    assert got == {("s1", "pm.1"): st}
    assert decide(Policy("once", M), got[("s1", "pm.1")], T0 + M, T0 + M)[0] is False
