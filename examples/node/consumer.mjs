// A poolwire consumer in Node.js: node consumer.mjs [--count N] [--snapshot ENDPOINT] ENDPOINT PREFIX...
//
// Everything here comes from the README's wire section: two frames (topic, msgpack payload), a
// payload is one message (a map with "type") or an array of them, gaps are jumps in topic_seq
// per (publisher, topic), and publishers send Heartbeat on "<service>.health". With --snapshot it
// follows a state owner the Clone way: subscribed and heard from first, it asks for the state
// (DEALER -> ROUTER), prints each item with its topic, seeds each topic's gap check with the item's
// topic_seq, and skips the owner's updates with seq <= snapshot_seq.
import { Dealer, Subscriber } from "zeromq";
import { decode, encode } from "@msgpack/msgpack";

const SERVICES = ["ingest", "sync", "registry", "alerts"];
const LIVENESS = 3; // heartbeat intervals of silence before a publisher is presumed dead

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
    msgs = decode(payload, { useBigInt64: true });
  } catch (err) {
    console.error(json({ skipped: topic, reason: String(err) }));
    continue;
  }
  if (!Array.isArray(msgs)) msgs = [msgs];
  if (snapshotEndpoint && owner === null) await takeSnapshot(); // the stream is live: now the state
  for (const msg of msgs) {
    if (owner && msg.publisher === owner.publisher && BigInt(msg.seq) <= owner.snapshotSeq) continue;
    checkGap(topic, msg);
    if (msg.type === "Heartbeat") {
      publishers.set(msg.publisher, {
        service: msg.service, intervalMs: Number(msg.interval_ms), lastSeen: Date.now(), alive: true,
      });
    }
    if (!wanted(topic)) continue;
    print({ topic, ...msg });
  }
}
