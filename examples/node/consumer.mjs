// A poolwire consumer in Node.js: node consumer.mjs [--count N] [--snapshot ENDPOINT] ENDPOINT PREFIX...
//
// Everything here comes from the README's wire section: two frames (topic, msgpack payload), a
// payload is one message (a map with "type") or an array of them (wire v1), or an array whose
// first element is the version 2, one envelope and array bodies (wire v2); gaps are jumps in
// topic_seq per (publisher, topic), and publishers send Heartbeat on "<service>.health". With --snapshot it
// follows a state owner the Clone way: subscribed and heard from first, it asks for the state
// (DEALER -> ROUTER), prints each item with its topic, seeds each topic's gap check with the item's
// topic_seq, and skips the owner's updates with seq <= snapshot_seq.
import { Dealer, Subscriber } from "zeromq";
import { decode, encode } from "@msgpack/msgpack";

const SERVICES = ["ingest", "sync", "registry", "alerts"];
const LIVENESS = 3; // heartbeat intervals of silence before a publisher is presumed dead
// Wire v2 bodies are [type, event_ns, ...fields], the fields in the README's message reference
// order: the names of the types this consumer reads (tests/shared/test_node_consumer.py checks them).
const FIELDS = {
  "Heartbeat": ["service", "interval_ms", "started_ns", "sent"],
  "Price": ["symbol", "price", "bid", "ask", "source"],
  "BookSnapshot": ["asset", "market", "bids", "asks", "hash", "tick_size"],
  "BookChange": ["asset", "market", "side", "price", "size", "best_bid", "best_ask", "hash"],
  "Trade": ["asset", "market", "price", "size", "side", "fee_rate_bps"],
  "TickSizeChange": ["asset", "market", "old_tick_size", "new_tick_size"],
  "MarketLifecycle": ["asset", "market", "status", "winning_asset", "question"],
  "PoolState": ["pool", "protocol", "block", "block_hash", "token0", "token1", "fee", "tick_spacing",
    "reserve0", "reserve1", "sqrt_price_x96", "tick", "liquidity", "price"],
  "BlockUpdate": ["number", "hash", "parent_hash", "status", "pools_changed"],
  "Swap": ["pool", "protocol", "block", "amount0", "amount1", "price"],
  "ZoneCreated": ["zone", "confluence"],
  "ZoneTouched": ["zone", "price"],
  "ZoneExpired": ["zone", "reason"],
  "ZoneRemoved": ["zone"],
  "AlertFired": ["strategy", "symbol", "message", "value", "bucket_ns"]
};

const args = process.argv.slice(2);
let count = Infinity;
let snapshotEndpoint = null;
while (args[0] === "--count" || args[0] === "--snapshot") {
  if (args[0] === "--count") count = Number(args[1]);
  else snapshotEndpoint = args[1];
  args.splice(0, 2);
}
const [endpoint = "tcp://127.0.0.1:5570", ...given] = args;
const prefixes = given.length ? given : ["zone."];

const sock = new Subscriber();
sock.connect(endpoint);
for (const prefix of prefixes) sock.subscribe(prefix);
for (const service of SERVICES) sock.subscribe(`${service}.health`);

const wanted = (topic) => prefixes.some((p) => topic.startsWith(p));
const lastTopicSeq = new Map(); // "publisher topic" -> topic_seq
const publishers = new Map(); // publisher -> {service, intervalMs, lastSeen, alive}
const json = (value) => JSON.stringify(value, (_, v) => (typeof v === "bigint" ? v.toString() : v));

function checkGap(topic, msg) {
  const key = `${msg.publisher} ${topic}`;
  const last = lastTopicSeq.get(key);
  const seq = Number(msg.topic_seq);
  if (last !== undefined && seq > last + 1) {
    console.error(json({ gap: topic, publisher: msg.publisher, missed: seq - last - 1 }));
  }
  lastTopicSeq.set(key, seq);
}

setInterval(() => {
  const now = Date.now();
  for (const [id, p] of publishers) {
    if (p.alive && now - p.lastSeen > LIVENESS * p.intervalMs) {
      p.alive = false;
      console.error(json({ dead: id, service: p.service }));
    }
  }
}, 250).unref();

// A payload's messages, each with its envelope. A v2 body of a type not in FIELDS keeps its
// envelope (for the gap check) and is marked unknown; a trailing value past the known fields is a
// newer field, ignored; a missing one is a default left out.
function messagesOf(payload) {
  if (!Array.isArray(payload) || !["number", "bigint"].includes(typeof payload[0])) {
    return Array.isArray(payload) ? payload : [payload]; // v1
  }
  const version = Number(payload[0]);
  if (version !== 2) throw new Error(`wire version ${version} is not known here`);
  const [, publisher, seq, topicSeq, publishNs, count, bodies] = payload;
  if (Number(count) !== bodies.length) throw new Error(`count ${count} but ${bodies.length} bodies`);
  return bodies.map(([type, eventNs, ...values], i) => {
    const msg = {
      type, publisher, seq: Number(seq) + i, topic_seq: Number(topicSeq) + i,
      event_ns: eventNs, publish_ns: publishNs,
    };
    const names = FIELDS[type];
    if (names === undefined) return { ...msg, unknown: true };
    names.forEach((name, k) => { if (k < values.length) msg[name] = values[k]; });
    return msg;
  });
}

let printed = 0;
let owner = null; // {publisher, snapshotSeq} once the snapshot is in

function print(line) {
  console.log(json(line));
  if (++printed >= count) {
    sock.close();
    process.exit(0);
  }
}

async function takeSnapshot() {
  const dealer = new Dealer();
  dealer.connect(snapshotEndpoint);
  await dealer.send(encode({ type: "SnapshotRequest", prefix: prefixes[0] }));
  const [headerFrame, itemsFrame] = await dealer.receive();
  dealer.close();
  const header = decode(headerFrame, { useBigInt64: true });
  if (header.error) throw new Error(`snapshot refused: ${header.error}`);
  const items = decode(itemsFrame, { useBigInt64: true });
  owner = { publisher: header.publisher, snapshotSeq: BigInt(header.snapshot_seq) };
  print({ snapshot: header.publisher, snapshot_seq: header.snapshot_seq, count: header.count });
  items.forEach((item, i) => {
    const topic = header.topics[i];
    if (Number(item.topic_seq) > 0) lastTopicSeq.set(`${item.publisher} ${topic}`, Number(item.topic_seq));
    print({ topic, snapshot: true, ...item });
  });
}

for await (const [topicFrame, payload] of sock) {
  const topic = topicFrame.toString("utf8");
  let msgs;
  try {
    // Nanosecond times exceed 2^53: read 64-bit integers as BigInt to keep them exact.
    msgs = messagesOf(decode(payload, { useBigInt64: true }));
  } catch (err) {
    console.error(json({ skipped: topic, reason: String(err) }));
    continue;
  }
  if (snapshotEndpoint && owner === null) await takeSnapshot(); // the stream is live: now the state
  for (const msg of msgs) {
    if (owner && msg.publisher === owner.publisher && BigInt(msg.seq) <= owner.snapshotSeq) continue;
    checkGap(topic, msg);
    if (msg.type === "Heartbeat") {
      publishers.set(msg.publisher, {
        service: msg.service, intervalMs: Number(msg.interval_ms), lastSeen: Date.now(), alive: true,
      });
    }
    if (!wanted(topic) || msg.unknown) continue;
    print({ topic, ...msg });
  }
}
