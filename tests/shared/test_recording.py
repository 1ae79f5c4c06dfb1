"""``poolwire record`` and ``poolwire replay`` as real processes, and the lossless publisher."""

import asyncio
import logging
from pathlib import Path

import pytest
import zmq

from shared.bus import Publisher, Subscriber, context
from shared.messages import ONE_DECODER, Message, Price, Trade
from shared.recording import read_records
from tests.ports import tcp_endpoint
from tests.shared.test_bus import collect
from tests.shared.test_cli import run_cli

N = 1500


def sent_stream() -> list[tuple[str, Message]]:
    out: list[tuple[str, Message]] = []
    for i in range(N):
        t0 = 1_700_000_000_000_000_000 + i * 1_000_000
        if i % 3 == 2:
            out.append(("md.trade.x", Trade(asset="x", price=0.5, size=i, side="buy", event_ns=t0)))
        else:
            sym = "pm.a" if i % 3 == 0 else "pm.b"
            out.append((f"px.{sym}", Price(symbol=sym, price=i / N, event_ns=t0)))
    return out


def essence(stream: list[tuple[str, Message]]) -> list[tuple[str, str, int, float]]:
    return [
        (t, type(m).__name__, m.event_ns, getattr(m, "price", 0.0) + getattr(m, "size", 0.0))
        for t, m in stream
    ]


async def record_stream(path: Path) -> None:
    endpoint = tcp_endpoint()
    async with Publisher(endpoint, service="ingest", heartbeat_interval=0) as pub:
        recorder = asyncio.create_task(
            run_cli("record", "px.", "md.", "--connect", endpoint, "--out", str(path), "--count", str(N))
        )
        await pub.wait_for_subscriber("px.", timeout=20)
        await pub.wait_for_subscriber("md.", timeout=20)
        for topic, msg in sent_stream():
            pub.publish(topic, msg)
        code, _, err = await recorder
    assert code == 0, err
    assert f"{N} messages" in err and "0 gaps" in err


@pytest.mark.parametrize("pace", [["--max"], ["--rate", "3000"], ["--speed", "1"]])
async def test_a_replayed_recording_is_the_recorded_stream_in_order(tmp_path: Path, pace: list[str]) -> None:
    path = tmp_path / "day.rec"
    await record_stream(path)
    endpoint = tcp_endpoint()
    with Subscriber(endpoint, ["px.", "md."]) as sub:
        replay = asyncio.create_task(
            run_cli("replay", str(path), "--bind", endpoint, *pace, "--wait-for", "md.")
        )
        got = await collect(sub, N, timeout=30)
        code, _, err = await replay
        assert code == 0, err
        assert sub.stats.gaps == 0
    assert essence(got) == essence(sent_stream())
    seqs = [m.seq for _, m in got]
    assert seqs == sorted(seqs) and len(set(seqs)) == N


def test_a_torn_last_record_is_left_out_and_said(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "day.rec"
    asyncio.run(record_stream(path))
    path.write_bytes(path.read_bytes()[:-3])
    with caplog.at_level(logging.WARNING, "poolwire.recording"):
        records = list(read_records(path))
    assert len(records) == N - 1
    assert f"record {N} is torn" in caplog.text


async def test_replay_of_a_file_that_is_not_a_recording_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("hello\n")
    code, _, err = await run_cli("replay", str(path), "--bind", tcp_endpoint(), "--max")
    assert code == 2
    assert "not a poolwire recording" in err


async def test_a_lossless_publisher_keeps_what_the_high_water_mark_refuses() -> None:
    endpoint = tcp_endpoint()
    sub = context().socket(zmq.SUB)
    sub.setsockopt(zmq.RCVHWM, 1)
    sub.setsockopt(zmq.RCVBUF, 4096)
    sub.setsockopt(zmq.SUBSCRIBE, b"px.")
    count = 3_000
    async with Publisher(
        endpoint, service="replay", heartbeat_interval=0, hwm=1, lossless=True, batching=False
    ) as pub:
        pub._asock.setsockopt(zmq.SNDBUF, 4096)
        sub.connect(endpoint)
        await pub.wait_for_subscriber("px.", timeout=5)
        for i in range(count):  # nobody reads yet: the pipe fills and the rest waits in the backlog
            pub.publish("px.pm.a", Price(symbol="pm.a", price=i))
        assert pub._backlog, "the high-water mark never refused a frame: the test proves nothing"

        async def read_all() -> list[float]:
            prices: list[float] = []
            while len(prices) < count:
                _, payload = await sub.recv_multipart()
                prices.append(ONE_DECODER.decode(payload).price)
            return prices

        reader = asyncio.create_task(read_all())
        await asyncio.wait_for(pub.drain(), 30)
        assert await asyncio.wait_for(reader, 30) == list(range(count))
        assert not pub._backlog
    sub.close(linger=0)
