"""The receiving process of the bus benchmark: ``python -m bench._bus_peer MODE ENDPOINT COUNT OUT``.

Writes one JSON document to the file OUT: messages received, seconds from the first to the last, the
process's CPU seconds over that span (every thread: ZeroMQ's I/O thread too), and for the latency
modes the per-message latency (receive time minus the sender's ``event_ns``) in us.
"""

from __future__ import annotations

import json
import sys
import time

import msgspec
import uvloop
import zmq

from shared.bus import Subscriber

TOPIC = b"px.bench"


def raw(endpoint: str, count: int, per_frame: int, latency: bool) -> dict[str, object]:
    sock: zmq.Socket[bytes] = zmq.Context.instance().socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, 0)
    sock.setsockopt(zmq.SUBSCRIBE, TOPIC)
    sock.connect(endpoint)
    decoder = msgspec.msgpack.Decoder()
    got, lat = 0, []
    sock.recv_multipart()
    t0, c0 = time.perf_counter(), time.process_time()
    got = per_frame
    while got < count:
        frames = sock.recv_multipart()
        if latency:
            lat.append((time.time_ns() - decoder.decode(frames[1])["event_ns"]) / 1000)
        got += per_frame
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    sock.close()
    return {"received": got, "seconds": elapsed, "cpu_s": cpu, "latency_us": lat}


async def poolwire(endpoint: str, count: int, latency: bool) -> dict[str, object]:
    sub = Subscriber(endpoint, ["px.bench"], hwm=0)
    got, lat = 0, list[float]()
    t0 = c0 = 0.0
    while got < count:
        frames = await sub.recv_frames()
        if not got:
            t0, c0 = time.perf_counter(), time.process_time()
        for _, msgs in frames:
            if latency:
                now = time.time_ns()
                lat.extend((now - m.event_ns) / 1000 for m in msgs)
            got += len(msgs)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
    sub.close()
    return {"received": got, "seconds": elapsed, "cpu_s": cpu, "latency_us": lat, "gaps": sub.stats.gaps}


def main() -> None:
    mode, endpoint, count, out = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    latency = mode.endswith("-latency")
    if mode.startswith("raw"):
        result = raw(endpoint, count, 100 if "batched" in mode else 1, latency)
    else:
        result = uvloop.run(poolwire(endpoint, count, latency))
    with open(out, "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main()
