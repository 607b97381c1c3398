// BullMQ's side of the peers harness (bench/queue_peers.py runs it; see docs/performance.md).
//
//   node bench/bullmq/bench.mjs --url redis://127.0.0.1:6379 --mode throughput --n 10000
//
// Modes (each prints one JSON object on stdout; times in seconds, lags in milliseconds):
//   throughput     addBulk N no-op jobs (chunks of 1,000), then a Worker processes them
//                  -> {enqueue_s, process_s, used_bytes, dataset_bytes, processed}
//   delayed-bytes  addBulk N jobs due in an hour, no worker
//                  -> {enqueue_s, used_bytes, dataset_bytes}
//   lag            a Worker waits; N jobs are added due --rate per second from --lead-ms on
//                  -> {lags_ms: [start of the processor minus due time, per job]}
//   idle           a Worker on an empty queue; prints {"ready": true}, stops when stdin closes
// Jobs carry empty data and are removed on completion (our queue keeps nothing either).
import { parseArgs } from "node:util";
import { Queue, Worker } from "bullmq";
import IORedis from "ioredis";

const { values: opt } = parseArgs({
  options: {
    url: { type: "string" },
    mode: { type: "string", default: "throughput" },
    n: { type: "string", default: "10000" },
    concurrency: { type: "string", default: "10" },
    warmup: { type: "string", default: "500" },
    rate: { type: "string", default: "1000" },
    "lead-ms": { type: "string", default: "3000" },
    queue: { type: "string", default: "bench" },
  },
});
const N = Number(opt.n);
const CONCURRENCY = Number(opt.concurrency);
const CHUNK = 1000;
const url = new URL(opt.url);
const connection = {
  host: url.hostname,
  port: Number(url.port || 6379),
  db: Number(url.pathname.slice(1) || 0),
  // dispatch_engine.embedded's Redis requires a password (requirepass): the URL carries it
  username: decodeURIComponent(url.username) || undefined,
  password: decodeURIComponent(url.password) || undefined,
  maxRetriesPerRequest: null, // BullMQ requires it on a Worker's connection
};
const nowMs = () => performance.timeOrigin + performance.now();
const seconds = (start) => (performance.now() - start) / 1000;
const JOB_OPTS = { removeOnComplete: true, removeOnFail: true };

async function memory(client) {
  const text = await client.info("memory");
  const field = (name) => Number(new RegExp(`^${name}:(\\d+)`, "m").exec(text)[1]);
  return [field("used_memory"), field("used_memory_dataset")];
}

async function addAll(queue, count, optsOf) {
  for (let start = 0; start < count; start += CHUNK) {
    const jobs = [];
    for (let i = start; i < Math.min(count, start + CHUNK); i++) {
      jobs.push({ name: "noop", data: {}, opts: { ...JOB_OPTS, ...optsOf(i) } });
    }
    await queue.addBulk(jobs);
  }
}

// A Worker that counts finished jobs; `until(k)` resolves once k more have completed.
function countingWorker(processor) {
  const worker = new Worker(opt.queue, processor, {
    connection,
    concurrency: CONCURRENCY,
    autorun: false,
  });
  let done = 0;
  let goal = Infinity;
  let release = () => {};
  worker.on("completed", () => {
    done += 1;
    if (done >= goal) release();
  });
  worker.on("error", (err) => console.error("bullmq worker error:", err));
  const until = (k) =>
    new Promise((resolve) => {
      goal = done + k;
      release = resolve;
      if (done >= goal) resolve();
    });
  return { worker, until, count: () => done };
}

async function throughput(queue, client) {
  const { worker, until, count } = countingWorker(async () => {});
  await worker.waitUntilReady();
  const running = worker.run();
  const warm = Math.min(N, Number(opt.warmup));
  if (warm > 0) {
    // untimed: connections, script loading, the JIT
    const warmed = until(warm);
    await addAll(queue, warm, () => ({}));
    await warmed;
  }
  worker.pause(true); // the timed enqueue runs with the worker paused, as in the others
  const before = await memory(client);
  const t0 = performance.now();
  await addAll(queue, N, () => ({}));
  const enqueueS = seconds(t0);
  const after = await memory(client);
  const processed = until(N);
  const t2 = performance.now();
  worker.resume();
  await processed;
  const processS = seconds(t2);
  await worker.close();
  await running;
  return {
    enqueue_s: enqueueS,
    process_s: processS,
    used_bytes: after[0] - before[0],
    dataset_bytes: after[1] - before[1],
    processed: count() - warm,
  };
}

async function delayedBytes(queue, client) {
  await queue.add("noop", {}, { ...JOB_OPTS, delay: 3_600_000 }); // untimed: scripts, meta
  await queue.obliterate({ force: true });
  const before = await memory(client);
  const t0 = performance.now();
  await addAll(queue, N, () => ({ delay: 3_600_000 }));
  const enqueueS = seconds(t0);
  const after = await memory(client);
  return { enqueue_s: enqueueS, used_bytes: after[0] - before[0], dataset_bytes: after[1] - before[1] };
}

async function lag(queue) {
  const lags = [];
  const { worker, until } = countingWorker(async (job) => {
    lags.push(nowMs() - (job.timestamp + job.opts.delay));
  });
  await worker.waitUntilReady();
  const running = worker.run();
  const all = until(N);
  const base = Date.now() + Number(opt["lead-ms"]);
  const gap = 1000 / Number(opt.rate);
  await addAll(queue, N, (i) => {
    const timestamp = Date.now();
    return { timestamp, delay: Math.max(1, Math.round(base + i * gap) - timestamp) };
  });
  if (Date.now() >= base) throw new Error("enqueue outlasted --lead-ms; raise it");
  await all;
  await worker.close();
  await running;
  return { lags_ms: lags.map((x) => Math.round(x * 100) / 100) };
}

async function idle() {
  const { worker } = countingWorker(async () => {});
  await worker.waitUntilReady();
  const running = worker.run();
  console.log(JSON.stringify({ ready: true }));
  process.stdin.resume();
  await new Promise((resolve) => process.stdin.on("end", resolve));
  await worker.close();
  await running;
  return {};
}

const queue = new Queue(opt.queue, { connection });
await queue.waitUntilReady();
const client = new IORedis(connection); // INFO memory only
const modes = {
  throughput: () => throughput(queue, client),
  "delayed-bytes": () => delayedBytes(queue, client),
  lag: () => lag(queue),
  idle: () => idle(),
};
if (!(opt.mode in modes)) throw new Error(`unknown --mode ${opt.mode}`);
const result = await modes[opt.mode]();
await queue.close();
client.disconnect();
console.log(JSON.stringify(result));
