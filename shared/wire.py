"""PUB payloads, version 1 and version 2 (README, "The wire").

Version 1 (the default): msgspec's map of one message, or an array of such maps; every map carries
the whole envelope and its ``"type"``. Version 2: one envelope per frame, then array bodies::

    [2, publisher, first_seq, first_topic_seq, publish_ns, count, [body, ...]]
    body = [type, event_ns, field, field, ...]   # the message's fields in declaration order

The i-th body (from 0) has ``seq = first_seq + i`` and ``topic_seq = first_topic_seq + i``: a
frame carries a consecutive run of one topic. A version 2 payload is a 7-element msgpack array
whose first element is the integer 2, so it always starts with the bytes ``97 02``; a version 1
payload is a map or an array of maps, which never does.

Bodies are array-like twins of the message Structs, generated from their fields, so a field added
at the end with a default stays compatible both ways (a decoder ignores extra trailing elements
and fills missing trailing ones with their defaults). A field must never be inserted or reordered.

The converters between a frame's messages and its bodies are generated source per type (as
``dataclasses`` generates ``__init__``): each field read and passed by name in one loop, with no
call or lookup per message, on the bus's per-message hot path.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from typing import Any

import msgspec
from msgspec import NODEFAULT, Struct

from shared.messages import ENCODER, MESSAGE_TYPES, Message, decode_v1_payload

WIRE_VERSIONS = (1, 2)
V2_PREFIX = b"\x97\x02"  # msgpack: a fixarray of 7 elements, then the positive fixint 2
ENVELOPE = tuple(f.name for f in msgspec.structs.fields(Message))

# (messages, publisher, first seq, first topic_seq, publish_ns) -> bodies, the messages stamped
StampBodies = Callable[[Sequence[Message], str, int, int, int], list[tuple[Any, ...]]]
# (bodies, publisher, first seq, first topic_seq, publish_ns) -> messages
ToMessages = Callable[[Sequence[Any], str, int, int, int], list[Message]]


def _body_struct(cls: type[Message]) -> type[Struct]:
    fields: list[tuple[str, Any, Any]] = [("event_ns", int, NODEFAULT)]
    for f in msgspec.structs.fields(cls):
        if f.name in ENVELOPE:
            continue
        default = (
            f.default if f.default_factory is NODEFAULT else msgspec.field(default_factory=f.default_factory)
        )
        fields.append((f.name, f.type, default))
    return msgspec.defstruct(
        f"{cls.__name__}Body",
        fields,
        array_like=True,
        tag=cls.__name__,
        kw_only=True,
        gc=False,
        module=__name__,
    )


def _compile(name: str, source: str, namespace: dict[str, Any]) -> Any:
    exec(compile(source, f"<shared.wire {name}>", "exec"), namespace)
    return namespace[name]


def _converters(cls: type[Message], body: type[Struct]) -> tuple[StampBodies, ToMessages]:
    """A frame's bodies from its messages, and its messages from its bodies, for one type.

    Both handle their own type inline (a frame is nearly always of one type) and hand any other
    to the converter of that type.
    """
    names = [f.name for f in msgspec.structs.fields(body)][1:]  # after event_ns
    stamp_bodies = _compile(
        "stamp_bodies",
        "def stamp_bodies(msgs, publisher, seq, topic_seq, publish_ns):\n"
        "    bodies = []\n"
        "    append = bodies.append\n"
        "    for m in msgs:\n"
        "        m.publisher = publisher\n"
        "        m.seq = seq\n"
        "        m.topic_seq = topic_seq\n"
        "        m.publish_ns = publish_ns\n"
        f"        append(({cls.__name__!r}, m.event_ns, {''.join(f'm.{n}, ' for n in names)})\n"
        "               if type(m) is cls else other(m, publisher, seq, topic_seq, publish_ns))\n"
        "        seq += 1\n"
        "        topic_seq += 1\n"
        "    return bodies\n",
        {"cls": cls, "other": _stamp_body},
    )
    fields = "".join(f", {n}=b.{n}" for n in names)
    to_messages = _compile(
        "to_messages",
        "def to_messages(bodies, publisher, seq, topic_seq, publish_ns):\n"
        "    end = seq + len(bodies)\n"
        "    return [\n"
        "        cls(publisher=publisher, seq=s, topic_seq=t, event_ns=b.event_ns, publish_ns=publish_ns"
        f"{fields})\n"
        "        if type(b) is body else other(b, publisher, s, t, publish_ns)\n"
        "        for b, s, t in zip(bodies, range(seq, end), range(topic_seq, topic_seq + len(bodies)))\n"
        "    ]\n",
        {"cls": cls, "body": body, "other": _to_message},
    )
    return stamp_bodies, to_messages


def _stamp_body(msg: Message, publisher: str, seq: int, topic_seq: int, publish_ns: int) -> tuple[Any, ...]:
    return _stamp_bodies_of(type(msg))((msg,), publisher, seq, topic_seq, publish_ns)[0]


def _stamp_bodies_of(cls: type[Message]) -> StampBodies:
    """The encoder of ``cls``; a Message subclass defined after this module (not in the union, so
    subscribers count it undecodable, as in version 1) gets one on first use."""
    stamp_bodies = _STAMP_BODIES.get(cls)
    if stamp_bodies is None:
        stamp_bodies = _STAMP_BODIES[cls] = _converters(cls, _body_struct(cls))[0]
    return stamp_bodies


def _to_message(body: Any, publisher: str, seq: int, topic_seq: int, publish_ns: int) -> Message:
    return _TO_MESSAGES[type(body)]([body], publisher, seq, topic_seq, publish_ns)[0]


BODY_TYPES: dict[type[Message], type[Struct]] = {cls: _body_struct(cls) for cls in MESSAGE_TYPES}
_STAMP_BODIES: dict[type[Message], StampBodies] = {}
_TO_MESSAGES: dict[type[Struct], ToMessages] = {}
for _cls, _body in BODY_TYPES.items():
    _STAMP_BODIES[_cls], _TO_MESSAGES[_body] = _converters(_cls, _body)
AnyBody: Any = typing.Union[tuple(BODY_TYPES.values())]  # noqa: UP007 - built at runtime


class FrameV2(Struct, array_like=True, gc=False):
    version: int
    publisher: str
    seq: int
    topic_seq: int
    publish_ns: int
    count: int
    bodies: list[AnyBody]


class RawFrameV2(Struct, array_like=True, gc=False):
    """The same frame with its bodies left undecoded: the fallback that keeps a batch's good bodies."""

    version: int
    publisher: str
    seq: int
    topic_seq: int
    publish_ns: int
    count: int
    bodies: list[msgspec.Raw]


FRAME_DECODER = msgspec.msgpack.Decoder(FrameV2)
RAW_FRAME_DECODER = msgspec.msgpack.Decoder(RawFrameV2)
BODY_DECODER: msgspec.msgpack.Decoder[Any] = msgspec.msgpack.Decoder(AnyBody)


def stamp_and_encode_v2(
    publisher: str, seq: int, topic_seq: int, publish_ns: int, msgs: Sequence[Message]
) -> bytes:
    """A version 2 payload of ``msgs`` (one topic's consecutive run, at least one), the first
    numbered ``seq`` and ``topic_seq``. Each message is stamped with the envelope it has on the
    wire, as a version 1 publisher stamps the messages it encodes."""
    bodies = _stamp_bodies_of(type(msgs[0]))(msgs, publisher, seq, topic_seq, publish_ns)
    return ENCODER.encode((2, publisher, seq, topic_seq, publish_ns, len(bodies), bodies))


def is_versioned(payload: bytes) -> bool:
    """Whether a payload is an array whose first element is an integer (a wire version, 2 or
    later): the first byte a fixarray's, the second a positive fixint. Version 1 is a map or an
    array of maps, so its second byte, if any, is a map's header (0x80 and up)."""
    return len(payload) > 1 and payload[0] >> 4 == 0x9 and payload[1] < 0x80


def decode_versioned(payload: bytes) -> tuple[list[Message], int]:
    """Decode a payload :func:`is_versioned` accepts; a version this decoder does not know is one error."""
    if payload.startswith(V2_PREFIX):
        return decode_v2(payload)
    return [], 1


def decode_v2(payload: bytes) -> tuple[list[Message], int]:
    """Decode a version 2 payload; returns (messages, how many were bad).

    A frame with one bad body keeps the good ones; a frame whose envelope is unreadable, whose
    version is not 2 or whose ``count`` is not its number of bodies is one error.
    """
    try:
        frame = FRAME_DECODER.decode(payload)
    except msgspec.DecodeError:
        return _decode_v2_one_by_one(payload)
    bodies = frame.bodies
    if frame.version != 2 or frame.count != len(bodies):
        return [], 1
    if not bodies:
        return [], 0
    return _TO_MESSAGES[type(bodies[0])](
        bodies, frame.publisher, frame.seq, frame.topic_seq, frame.publish_ns
    ), 0


def _decode_v2_one_by_one(payload: bytes) -> tuple[list[Message], int]:
    try:
        frame = RAW_FRAME_DECODER.decode(payload)
    except msgspec.DecodeError:
        return [], 1
    if frame.version != 2 or frame.count != len(frame.bodies):
        return [], 1
    good: list[Message] = []
    bad = 0
    for i, raw in enumerate(frame.bodies):
        try:
            body = BODY_DECODER.decode(raw)
        except msgspec.DecodeError:
            bad += 1
            continue
        good.append(_to_message(body, frame.publisher, frame.seq + i, frame.topic_seq + i, frame.publish_ns))
    return good, bad


def decode_payload(payload: bytes) -> tuple[list[Message], int]:
    """Decode one payload frame of either wire version; returns (messages, how many were bad)."""
    if is_versioned(payload):
        return decode_versioned(payload)
    return decode_v1_payload(payload)
