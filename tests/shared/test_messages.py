import msgspec
import pytest

from shared.messages import DECODER, ENCODER, MESSAGE_TYPES, Heartbeat, Message, Price, encode, to_json_dict
from shared.wire import decode_payload
from tests.shared.samples import every_message


@pytest.mark.parametrize("msg", every_message(), ids=lambda m: type(m).__name__)
def test_every_message_round_trips(msg: Message) -> None:
    assert DECODER.decode(encode(msg)) == msg
    assert DECODER.decode(encode([msg, msg])) == [msg, msg]


def test_type_tag_is_class_name() -> None:
    raw = msgspec.msgpack.decode(encode(Price(symbol="pm.a", price=0.5)))
    assert raw["type"] == "Price"
    assert {"publisher", "seq", "topic_seq", "event_ns", "publish_ns"} <= set(raw)


def test_tags_are_unique() -> None:
    names = [t.__name__ for t in MESSAGE_TYPES]
    assert len(names) == len(set(names))


class OldQuote(msgspec.Struct, tag="Quote", tag_field="type", kw_only=True):
    symbol: str
    price: float


class NewQuote(msgspec.Struct, tag="Quote", tag_field="type", kw_only=True):
    symbol: str
    price: float
    venue: str = "pm"  # added later, with a default


def test_field_with_default_added_is_compatible_both_ways() -> None:
    old = msgspec.msgpack.Decoder(OldQuote)
    new = msgspec.msgpack.Decoder(NewQuote)
    assert old.decode(ENCODER.encode(NewQuote(symbol="a", price=1.0, venue="dex"))) == OldQuote(
        symbol="a", price=1.0
    )
    assert new.decode(ENCODER.encode(OldQuote(symbol="a", price=1.0))) == NewQuote(symbol="a", price=1.0)


def test_field_with_default_added_to_a_real_message_is_ignored_by_this_decoder() -> None:
    raw = msgspec.msgpack.decode(encode(Price(symbol="pm.a", price=0.5)))
    raw["a_field_from_the_future"] = [1, 2, 3]
    assert DECODER.decode(msgspec.msgpack.encode(raw)) == Price(symbol="pm.a", price=0.5)


def test_unknown_type_in_a_batch_is_counted_and_the_rest_kept() -> None:
    good = Price(symbol="pm.a", price=0.5)
    future = {"type": "FromTheFuture", "x": 1}
    payload = msgspec.msgpack.encode([msgspec.to_builtins(good), future, msgspec.to_builtins(good)])
    msgs, bad = decode_payload(payload)
    assert msgs == [good, good]
    assert bad == 1


def test_garbage_payload_is_one_error() -> None:
    assert decode_payload(b"\xc1\xff not msgpack") == ([], 1)


def test_json_view_has_type_topic_and_fields() -> None:
    hb = Heartbeat(service="registry", interval_ms=1000, started_ns=5, seq=3)
    view = to_json_dict(hb, "registry.health")
    assert view["type"] == "Heartbeat"
    assert view["topic"] == "registry.health"
    assert view["seq"] == 3
    assert view["service"] == "registry"
