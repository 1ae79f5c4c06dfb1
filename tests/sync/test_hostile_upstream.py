"""Hostile upstream data at the unit level: ExEx payloads and JSON-RPC replies of every wrong shape
fail with the one error their caller counts (CorruptFrame, ValueError...), never with another
exception that would end the loop reading them; what does get through can be buffered and exported."""

from __future__ import annotations

import random
from typing import Any

import msgspec
import pytest

from services.sync.buffer import BlockAssembler, SequenceGap
from services.sync.eth_logs import V2_SYNC, V3_SWAP, decode_log
from services.sync.rpc import Header
from shared.exex import BeginBlock, CorruptFrame, EndBlock, PoolUpdate, encode_payload

HUGE = "1" + "0" * 400
HASH = b"\x01" * 32


def begin(**kw: Any) -> list[Any]:
    fields = {"seq": 1, "number": 5, "hash": HASH, "parent_hash": HASH, "is_revert": False, "timestamp": 7}
    fields.update(kw)
    return ["BeginBlock", *fields.values()]


@pytest.mark.parametrize(
    "payload",
    [
        begin(number=HUGE),
        begin(number=-1),
        begin(timestamp=HUGE),  # a lag of 10^400 s would break /metrics (float conversion)
        begin(timestamp=-5),
        begin(hash=b"\x01" * 3),
        begin(parent_hash=b"\x01" * 31),
        begin(seq=HUGE),
        ["EndBlock", 1, 5, -1],
        ["EndBlock", 1, HUGE, 0],
        ["BeginBlock", 1, "five", HASH],
        ["BeginBlock", 1],
        ["PoolUpdate", 1, 5, 0, 0, b"\x02" * 20, "v9", "Sync"],
        ["Mystery", 1, 2, 3],
        {"type": "BeginBlock"},
        "BeginBlock",
        [],
    ],
)
def test_impossible_exex_frames_are_corrupt_frames(payload: Any) -> None:
    with pytest.raises(CorruptFrame):
        BlockAssembler().feed(msgspec.msgpack.encode(payload))


def test_random_exex_payloads_raise_only_what_the_client_counts() -> None:
    rng = random.Random(13)
    update = PoolUpdate(
        seq=2, block=5, tx=0, log=0, pool=b"\x02" * 20, protocol="v2", kind="Sync", reserve0=1
    )
    good = [
        encode_payload(BeginBlock(seq=1, number=5, hash=HASH, parent_hash=HASH)),
        encode_payload(update),
        encode_payload(EndBlock(seq=3, number=5, num_updates=1)),
    ]
    junk: list[Any] = [HUGE, "-" + HUGE, "", "x" * 100, None, 1.5, [], {}, b"\x00" * 40, 2**64 - 1, -(2**63)]
    outcomes: dict[str, int] = {}
    for _ in range(3000):
        raw = bytearray(rng.choice(good))
        how = rng.randrange(3)
        if how == 0:  # flip bytes
            for _ in range(rng.randint(1, 4)):
                raw[rng.randrange(len(raw))] = rng.randrange(256)
        elif how == 1:  # truncate
            raw = raw[: rng.randrange(len(raw))]
        else:  # a field replaced by junk
            fields = msgspec.msgpack.decode(bytes(raw))
            fields[rng.randrange(1, len(fields))] = rng.choice(junk)
            raw = bytearray(msgspec.msgpack.encode(fields))
        assembler = BlockAssembler()
        try:
            assembler.feed(good[0])
            assembler.feed(bytes(raw))
            outcome = "accepted"
        except (CorruptFrame, SequenceGap) as exc:
            outcome = type(exc).__name__
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
    assert set(outcomes) == {"accepted", "CorruptFrame", "SequenceGap"}, outcomes


BLOCK = {"number": "0x5", "hash": "0x" + "01" * 32, "parentHash": "0x" + "02" * 32, "timestamp": "0x10"}


@pytest.mark.parametrize(
    "raw",
    [
        None,
        "0x5",
        [BLOCK],
        {**BLOCK, "number": "0x" + "f" * 100},
        {**BLOCK, "timestamp": "0x" + "f" * 100},
        {**BLOCK, "number": 5},
        {**BLOCK, "number": "five"},
        {**BLOCK, "hash": "0x0102"},
        {**BLOCK, "hash": "0x0"},
        {**BLOCK, "parentHash": None},
        {k: v for k, v in BLOCK.items() if k != "hash"},
    ],
)
def test_malformed_block_objects_are_value_errors(raw: Any) -> None:
    with pytest.raises(ValueError):
        Header.parse(raw)


LOGS = [
    {
        "address": "0x" + "11" * 20,
        "topics": [V2_SYNC],
        "data": "0x" + f"{7:064x}{9:064x}",
        "blockNumber": "0x5",
        "blockHash": "0x" + "01" * 32,
        "transactionIndex": "0x0",
        "logIndex": "0x1",
    },
    {
        "address": "0x" + "22" * 20,
        "topics": [V3_SWAP, "0x" + "00" * 32, "0x" + "00" * 32],
        "data": "0x" + "".join(f"{v:064x}" for v in (1, 2**256 - 1, 2**96, 10**18, 5)),
        "blockNumber": "0x5",
        "blockHash": "0x" + "01" * 32,
        "transactionIndex": "0x0",
        "logIndex": "0x2",
    },
]


def test_random_logs_decode_or_fail_with_a_counted_error_and_decoded_ones_can_be_buffered() -> None:
    rng = random.Random(17)
    junk: list[Any] = ["0x" + "f" * 100, "0x", "0xzz", "", None, 5, [], {}, "0x" + "0" * 7, ["0x1"]]
    decoded = failed = 0
    for _ in range(3000):
        base = rng.choice(LOGS)
        entry: dict[str, Any] = dict(base)
        for _ in range(rng.randint(1, 2)):
            key = rng.choice([*entry, "topics"])
            if key == "data" and rng.random() < 0.5:
                entry[key] = base["data"][: rng.randrange(len(base["data"]))]  # truncated
            elif key == "topics" and rng.random() < 0.5:
                entry[key] = [*base["topics"][:1], *rng.sample(junk, 2)]
            else:
                entry[key] = rng.choice(junk)
        try:
            update = decode_log(entry)
        except (KeyError, ValueError, TypeError, IndexError):  # what LogFollower._logs counts
            failed += 1
            continue
        if update is not None:
            encode_payload(update)  # buffering re-encodes every update: it must not overflow
            decoded += 1
    assert decoded and failed
