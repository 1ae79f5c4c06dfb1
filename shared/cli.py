"""``poolwire``: a thin CLI over the bus.

poolwire tap [--connect ENDPOINT]... [--pretty] [--count N] [--timeout S] PREFIX...
poolwire push ENDPOINT JSON
poolwire snapshot ENDPOINT [PREFIX]
poolwire record [--connect ENDPOINT]... --out FILE [--count N] [--timeout S] PREFIX...
poolwire replay FILE --bind ENDPOINT [--speed X | --rate N | --max] [--wait-for PREFIX]...
poolwire config check FILE
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from collections.abc import Sequence

import msgspec

from shared import security
from shared.bus import Pusher, Subscriber, context
from shared.config import CommonConfig, ConfigError, apply_env, check_file, convert, read_file
from shared.constants import default_pub_endpoints
from shared.messages import JSON_DECODER, Message, to_json_dict
from shared.recording import record, replay
from shared.schema import json_schema, markdown
from shared.security import create_keys
from shared.snapshot import request_snapshot

_json = msgspec.json.Encoder()


# Until the first message, tap repeats on stderr what it waits on this often.
WAITING_REMINDER_S = 10.0


def _line(topic: str, msg: Message, pretty: bool) -> str:
    if not pretty:
        return _json.encode(to_json_dict(msg, topic)).decode()
    body = " ".join(
        f"{k}={v!r}" for k, v in msgspec.structs.asdict(msg).items() if k not in {"publisher", "topic_seq"}
    )
    return f"{topic} {type(msg).__name__} {body}"


def _waiting(endpoints: Sequence[str], prefixes: Sequence[str]) -> None:
    topics = ", ".join(prefixes) if prefixes else "every topic"
    print(f"poolwire tap: waiting for {topics} on {', '.join(endpoints)}", file=sys.stderr, flush=True)


async def tap(
    endpoints: Sequence[str], prefixes: Sequence[str], pretty: bool, count: int, timeout: float
) -> int:
    printed = 0
    sub = Subscriber(endpoints, prefixes or ("",))
    try:
        loop = asyncio.get_running_loop()
        deadline = None if timeout <= 0 else loop.time() + timeout
        _waiting(endpoints, prefixes)
        remind = loop.time() + WAITING_REMINDER_S
        while count <= 0 or printed < count:
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                break
            if printed == 0:  # wake to remind the user what is awaited
                wait = remind - loop.time()
                remaining = wait if remaining is None else min(remaining, wait)
                if remaining <= 0:
                    _waiting(endpoints, prefixes)
                    remind = loop.time() + WAITING_REMINDER_S
                    continue
            for topic, msg in await sub.recv_batch(remaining):
                sys.stdout.write(_line(topic, msg, pretty) + "\n")
                printed += 1
                if 0 < count <= printed:
                    break
            sys.stdout.flush()
    finally:
        sub.close()
    # 3: the timeout passed with nothing seen (scripts can tell silence from data)
    return 3 if printed == 0 and deadline is not None else 0


async def push(endpoint: str, text: str) -> int:
    try:
        msg = JSON_DECODER.decode(text)
    except msgspec.DecodeError as exc:
        print(f"poolwire push: not a valid message: {exc}", file=sys.stderr)
        return 2
    pusher = Pusher(endpoint, sender="poolwire-cli")
    try:
        await pusher.send(msg, timeout=5.0)
    except TimeoutError:
        print(f"poolwire push: nobody took the message at {endpoint} within 5 s", file=sys.stderr)
        pusher.close(linger_ms=0)
        return 1
    pusher.close()
    return 0


async def snapshot(endpoint: str, prefix: str, timeout: float) -> int:
    header, items = await request_snapshot(endpoint, prefix, timeout)
    print(_json.encode(to_json_dict(header, "snapshot")).decode())
    for item in items:
        print(_json.encode(to_json_dict(item, "snapshot")).decode())
    return 0


def _common(path: str | None) -> CommonConfig:
    return convert(apply_env(read_file(path)).get("common"), CommonConfig, "common")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="poolwire", description="poolwire: a real-time market pipeline")
    parser.add_argument(
        "--config",
        help="config file whose common.curve keys secure the connection (default: $POOLWIRE_CONFIG)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    k = sub.add_parser("keys", help="write a CurveZMQ server and client certificate pair into DIR")
    k.add_argument("dir")
    t = sub.add_parser("tap", help="print every message on the bus whose topic matches a prefix")
    t.add_argument("prefixes", nargs="*", metavar="PREFIX", help="topic prefixes (default: all)")
    t.add_argument(
        "--connect",
        action="append",
        metavar="ENDPOINT",
        help="PUB endpoint(s); default: every service",
    )
    t.add_argument(
        "--pretty",
        action="store_true",
        help="one readable line per message (default: one JSON object per line)",
    )
    t.add_argument("--json", action="store_true", help=argparse.SUPPRESS)  # the default; kept for scripts
    t.add_argument("--count", type=int, default=0, help="stop after N messages")
    t.add_argument("--timeout", type=float, default=0, help="stop after S seconds")
    p = sub.add_parser("push", help='send one message (JSON with its "type") to a PULL socket')
    p.add_argument("endpoint")
    p.add_argument("json")
    s = sub.add_parser("snapshot", help="ask a state owner (ingest, sync, registry) for its state")
    s.add_argument("endpoint")
    s.add_argument("prefix", nargs="?", default="")
    s.add_argument("--timeout", type=float, default=5.0)
    r = sub.add_parser("record", help="write every message whose topic matches a prefix to a file")
    r.add_argument("prefixes", nargs="*", metavar="PREFIX", help="topic prefixes (default: all)")
    r.add_argument(
        "--connect", action="append", metavar="ENDPOINT", help="PUB endpoint(s); default: every service"
    )
    r.add_argument("--out", required=True, metavar="FILE")
    r.add_argument("--count", type=int, default=0, help="stop after N messages")
    r.add_argument("--timeout", type=float, default=0, help="stop after S seconds")
    rp = sub.add_parser("replay", help="publish a recording again (its topics and event times)")
    rp.add_argument("file")
    rp.add_argument("--bind", required=True, metavar="ENDPOINT", help="PUB endpoint to publish on")
    pace = rp.add_mutually_exclusive_group()
    pace.add_argument("--speed", type=float, default=1.0, help="X times the recorded pace (default 1)")
    pace.add_argument("--rate", type=float, default=0.0, help="a fixed N messages per second")
    pace.add_argument("--max", action="store_true", help="as fast as the subscribers take it")
    rp.add_argument(
        "--wait-for",
        action="append",
        metavar="PREFIX",
        help="start once a subscriber takes each of these topics (default: any subscriber)",
    )
    rp.add_argument("--wait-timeout", type=float, default=30.0, help="give up waiting after S seconds")
    sch = sub.add_parser("schema", help="print the message reference (Markdown) or --json for JSON Schema")
    sch.add_argument("--json", action="store_true")
    c = sub.add_parser("config", help="config tools")
    csub = c.add_subparsers(dest="config_command", required=True)
    check = csub.add_parser("check", help="validate a config file")
    check.add_argument("file")
    check.add_argument(
        "--env", action="store_true", help="apply POOLWIRE_<SECTION>__<KEY> overrides from the environment"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(
        stream=sys.stderr, level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    if args.command == "keys":
        server, client = create_keys(args.dir)
        print(f"server: {server}\nclient: {client}")
        return 0
    try:
        if args.command in {"tap", "push", "snapshot", "record", "replay"}:
            security.enable(_common(args.config).curve, context())
        if args.command == "tap":
            endpoints = args.connect or default_pub_endpoints()
            return asyncio.run(tap(endpoints, args.prefixes, args.pretty, args.count, args.timeout))
        if args.command == "push":
            return asyncio.run(push(args.endpoint, args.json))
        if args.command == "snapshot":
            return asyncio.run(snapshot(args.endpoint, args.prefix, args.timeout))
        if args.command == "record":
            endpoints = args.connect or default_pub_endpoints()
            return asyncio.run(record(endpoints, args.prefixes, args.out, args.count, args.timeout))
        if args.command == "replay":
            speed = 0.0 if args.max else args.speed
            return asyncio.run(
                replay(
                    args.file,
                    args.bind,
                    speed=speed,
                    rate=args.rate,
                    wait_for=args.wait_for or ("",),
                    wait_timeout=args.wait_timeout,
                )
            )
        if args.command == "schema":
            print(json_schema() if args.json else markdown())
            return 0
        problems = check_file(args.file, os.environ if args.env else None)
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `poolwire tap | head`: the reader has what it wanted
        # stdout's buffer cannot be flushed at exit any more; point it at /dev/null so Python stays quiet
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except TimeoutError as exc:
        print(f"poolwire: {exc}", file=sys.stderr)
        return 1
    except (ConfigError, OSError, ValueError) as exc:
        print(f"poolwire: {exc}", file=sys.stderr)
        return 2
    if problems:
        for problem in problems:
            print(f"{args.file}: {problem}", file=sys.stderr)
        return 2
    print(f"{args.file}: ok")
    return 0


if __name__ == "__main__":
    sys.exit(main())
