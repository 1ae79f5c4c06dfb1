"""WhitelistAdd pool specs checked one by one: good pools of a batch survive their bad neighbours."""

from __future__ import annotations

import logging

import msgspec
import pytest

from services.sync.config import SyncConfig
from services.sync.pool import v4_pool_id
from services.sync.whitelist import WhitelistGate, check_spec
from shared.config import ConfigError, convert
from shared.messages import ForceSubscribe, PoolSpec, WhitelistAdd
from shared.ratelog import RateLimitedLog
from tests.sync.test_config import SIMULATED

C0, C1, HOOKS = "0x" + "0a" * 20, "0x" + "0b" * 20, "0x" + "00" * 20
KEY_ID = "0x" + v4_pool_id(C0, C1, 3000, 60, HOOKS).hex()

GOOD = [
    PoolSpec(protocol="v2", address="0x" + "11" * 20),
    PoolSpec(protocol="v2", address="0x" + "aB" * 20, currency0=C0, currency1=C1),
    PoolSpec(protocol="v3", address="0x" + "22" * 20),
    PoolSpec(protocol="v3", address="0x" + "22" * 20, fee=500, tick_spacing=10),
    PoolSpec(protocol="v4", pool_id="0x" + "33" * 32, fee=3000, tick_spacing=60),
    PoolSpec(protocol="v4", currency0=C0, currency1=C1, fee=3000, tick_spacing=60, hooks=HOOKS),
    PoolSpec(protocol="v4", pool_id=KEY_ID, currency0=C0, currency1=C1, fee=3000, tick_spacing=60),
    PoolSpec(protocol="v4", pool_id="0x" + "33" * 32, fee=0x800000, tick_spacing=1),  # dynamic fee
]

BAD = [
    (PoolSpec(protocol="v2", address=""), "bad_address"),
    (PoolSpec(protocol="v2", address="0x" + "11" * 19), "bad_address"),
    (PoolSpec(protocol="v3", address="0x" + "zz" * 20), "bad_address"),
    (PoolSpec(protocol="v3", address="11" * 21), "bad_address"),
    (PoolSpec(protocol="v3", address="0x" + "33" * 32), "bad_address"),  # a V4 id as a V3 address
    (PoolSpec(protocol="v2", address="0x" + "11" * 20, currency0="0x12"), "bad_token"),
    (PoolSpec(protocol="v3", address="0x" + "22" * 20, fee=1_000_001), "bad_fee"),
    (PoolSpec(protocol="v2", address="0x" + "11" * 20, tick_spacing=60), "bad_tick_spacing"),
    (PoolSpec(protocol="v3", address="0x" + "22" * 20, tick_spacing=16384), "bad_tick_spacing"),
    (PoolSpec(protocol="v4", pool_id="0x" + "33" * 31, tick_spacing=60), "bad_pool_id"),
    (PoolSpec(protocol="v4", pool_id="0x" + "g3" * 32, tick_spacing=60), "bad_pool_id"),
    (PoolSpec(protocol="v4", pool_id="0x" + "33" * 32), "bad_tick_spacing"),
    (PoolSpec(protocol="v4", pool_id="0x" + "33" * 32, tick_spacing=32768), "bad_tick_spacing"),
    (PoolSpec(protocol="v4", pool_id="0x" + "33" * 32, tick_spacing=60, fee=2_000_000), "bad_fee"),
    (PoolSpec(protocol="v4", tick_spacing=60), "bad_pool_key"),
    (PoolSpec(protocol="v4", currency0=C0, tick_spacing=60), "bad_pool_key"),
    (PoolSpec(protocol="v4", currency0=C1, currency1=C0, tick_spacing=60, fee=3000), "bad_pool_key"),
    (PoolSpec(protocol="v4", currency0=C0, currency1=C1, tick_spacing=60, hooks="0x1"), "bad_pool_key"),
    (  # the PoolKey names another pool than the id
        PoolSpec(
            protocol="v4", pool_id="0x" + "33" * 32, currency0=C0, currency1=C1, fee=3000, tick_spacing=60
        ),
        "bad_pool_key",
    ),
]


@pytest.mark.parametrize("spec", GOOD)
def test_good_specs_pass(spec: PoolSpec) -> None:
    check_spec(spec)


@pytest.mark.parametrize(("spec", "reason"), BAD)
def test_bad_specs_are_refused_with_their_reason(spec: PoolSpec, reason: str) -> None:
    gate = WhitelistGate()
    assert gate.take(WhitelistAdd(pools=[spec])) == []
    assert {r: n for r, n in gate.refused.items() if n} == {reason: 1}


def test_a_bad_pool_does_not_cost_its_batch_and_the_log_is_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    now = [0.0]
    logger = logging.getLogger("test.whitelist")
    gate = WhitelistGate(skip_log=RateLimitedLog(logger, burst=3, interval=60, clock=lambda: now[0]))
    bad_v2 = PoolSpec(protocol="v2", address="0xnothex")
    pools = [bad_v2, GOOD[0], bad_v2, GOOD[2], *[bad_v2] * 20, GOOD[4]]
    with caplog.at_level(logging.WARNING, logger="test.whitelist"):
        good = gate.take(WhitelistAdd(pools=pools, publisher="pusher@test"))
        assert good == [GOOD[0], GOOD[2], GOOD[4]]
        assert gate.refused["bad_address"] == 22 and gate.accepted == 3
        lines = [r.getMessage() for r in caplog.records]
        assert len(lines) == 3 and "pusher@test: pool 0 of 25 refused (bad_address)" in lines[0]
        now[0] = 61.0
        gate.skip_log.flush()
        assert "19 more bad_address message(s) suppressed" in caplog.records[-1].getMessage()


def test_other_messages_on_pull_are_counted_by_type() -> None:
    gate = WhitelistGate()
    assert gate.take(ForceSubscribe(asset_ids=["1"])) == []
    assert gate.take(ForceSubscribe(asset_ids=["2"])) == []
    assert gate.ignored == {"ForceSubscribe": 2} and gate.accepted == 0


def test_a_bad_configured_pool_is_a_config_error_naming_it() -> None:
    raw = {
        **SIMULATED,
        "pools": [msgspec.to_builtins(GOOD[0]), {"protocol": "v3", "address": "0x12"}],
    }
    with pytest.raises(ConfigError, match=r"sync.pools\[1\]: v3 address '0x12'"):
        convert(raw, SyncConfig, "sync")


def _add(pools: object, **envelope: object) -> bytes:
    return msgspec.msgpack.encode(
        {"type": "WhitelistAdd", "publisher": "cli", "seq": 4, **envelope, "pools": pools}
    )


SCHEMA_BAD = [  # each breaks the shared schema itself: msgspec refuses the whole WhitelistAdd
    {"protocol": "v2", "address": "0x" + "11" * 20, "fee": -1},
    {"protocol": "v3", "address": "0x" + "a" * 70},
    {"protocol": "v5", "address": "0x" + "11" * 20},
    {"protocol": "v2", "address": 17},
    {"protocol": "v4", "pool_id": "0x" + "33" * 32, "tick_spacing": 2**40},
    "not a pool",
]


def test_a_pool_outside_the_schema_costs_only_itself() -> None:
    gate = WhitelistGate()
    good = [msgspec.to_builtins(spec) for spec in GOOD[:3]]
    payload = _add([good[0], *SCHEMA_BAD[:3], good[1], *SCHEMA_BAD[3:], good[2]])
    with pytest.raises(msgspec.ValidationError):
        msgspec.msgpack.decode(payload, type=WhitelistAdd)  # what the shared decoder alone does
    msgs, bad = gate.decode(payload)
    assert bad == 0 and len(msgs) == 1
    msg = msgs[0]
    assert isinstance(msg, WhitelistAdd) and (msg.publisher, msg.seq) == ("cli", 4)
    assert msg.pools == GOOD[:3]
    assert gate.take(msg) == GOOD[:3]
    assert gate.refused["bad_schema"] == len(SCHEMA_BAD)


def test_frames_that_are_no_whitelist_add_still_count_as_undecodable() -> None:
    gate = WhitelistGate()
    ok = msgspec.msgpack.encode(msgspec.to_builtins(WhitelistAdd(pools=GOOD[:1])))
    for payload, want_bad in [
        (b"\xc1", 1),
        (_add("all of them"), 1),
        (_add([{"protocol": "v2"}] * 1001), 1),  # over the list bound: refused whole
        (msgspec.msgpack.encode({"type": "NoSuchType"}), 1),
        (b"\x92" + ok + _add([SCHEMA_BAD[0], msgspec.to_builtins(GOOD[1])]), 0),  # a batch of two
        (b"\x92" + ok + b"\xc1", 1),  # not msgpack: the whole frame, as the shared decoder does
    ]:
        msgs, bad = gate.decode(payload)
        assert bad == want_bad, payload[:40]
        if not bad:  # the batch: each message's good pools
            assert [p for m in msgs for p in m.pools] == GOOD[:2]  # type: ignore[attr-defined]
    assert gate.refused["bad_schema"] == 1  # the batch's bad pool: the batch was decoded
