// Durable image jobs driven by the official OpenAI Node SDK: the async API
// (`Prefer: respond-async`, then `GET /v1/images/jobs/{id}`) and `Idempotency-Key` replays.
// Run with `node --test` from this directory.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';

import OpenAI from 'openai';

import { DEFAULT_MODEL, PNG_MAGIC, Simulator, pngSize, startDemo, waitUntil } from './lib/harness.mjs';

const T = { timeout: 60_000 };
const JOB_HEADER = 'x-imagegate-job-id';
const JOB_KEYS = ['id', 'object', 'status', 'model', 'created_at', 'completed_at'];
const RUNNING = ['queued', 'submitting', 'in_progress'];

let demo;
let client;
let sim;

before(
  async () => {
    demo = await startDemo();
    // No retries: every test sees the first answer, and no request reaches the upstream twice.
    client = new OpenAI({ apiKey: demo.apiKey, baseURL: demo.gatewayURL, maxRetries: 0, timeout: 60_000 });
    sim = new Simulator(demo.simulatorURL);
  },
  { timeout: 90_000 },
);

after(
  async () => {
    if (demo) {
      console.log(`gateway stderr log: ${demo.logPath}`);
      await demo.stop();
    }
  },
  { timeout: 30_000 },
);

const prompt = (text) => `${text} #${randomUUID().slice(0, 8)}`;

function assertPNG(b64) {
  assert.ok(b64, 'no b64_json in the answer');
  const buf = Buffer.from(b64, 'base64');
  assert.deepEqual(buf.subarray(0, 8), PNG_MAGIC, `not a PNG: ${buf.subarray(0, 16).toString('hex')}`);
  const { width, height } = pngSize(buf);
  assert.ok(width > 0 && height > 0);
}

/** `GET /v1/images/jobs/{id}` with fetch: `{ status, body }`. */
async function getJob(id, apiKey = demo.apiKey) {
  const res = await fetch(`${demo.gatewayURL}/images/jobs/${id}`, {
    headers: { Authorization: `Bearer ${apiKey}` },
    signal: AbortSignal.timeout(30_000),
  });
  return { status: res.status, body: await res.json() };
}

test('respond-async answers 202 with a job whose result is the image', T, async () => {
  const createsBefore = (await sim.stats()).creates;
  const response = await client.images
    .generate(
      { model: DEFAULT_MODEL, prompt: prompt('a lighthouse at dusk [sim:slow=1]') },
      { headers: { Prefer: 'respond-async' } },
    )
    .asResponse();
  assert.equal(response.status, 202, await response.clone().text());
  const job = await response.json();
  for (const key of JOB_KEYS) assert.ok(key in job, `job object lacks "${key}": ${JSON.stringify(job)}`);
  assert.match(job.id, /^imgjob_/);
  assert.equal(job.object, 'image.job');
  assert.equal(job.model, DEFAULT_MODEL);
  // The upstream task takes a second: the answer came before the work ended.
  assert.ok(RUNNING.includes(job.status), JSON.stringify(job));
  assert.equal(job.completed_at, null);
  assert.equal(response.headers.get('location'), `/v1/images/jobs/${job.id}`);
  assert.equal(response.headers.get(JOB_HEADER), job.id);

  let last;
  await waitUntil(
    async () => {
      const { status, body } = await getJob(job.id);
      assert.equal(status, 200, JSON.stringify(body));
      last = body;
      return !RUNNING.includes(body.status);
    },
    30_000,
    () => `job ${job.id} still running: ${JSON.stringify(last)}`,
  );
  assert.equal(last.status, 'completed', JSON.stringify(last).slice(0, 1000));
  assert.equal(last.id, job.id);
  assert.ok(last.completed_at >= last.created_at, JSON.stringify(last));
  assert.equal(typeof last.result.created, 'number');
  assert.equal(last.result.data.length, 1);
  assertPNG(last.result.data[0].b64_json);
  assert.equal((await sim.stats()).creates - createsBefore, 1);

  // Another key (the demo's limited one) does not see the job.
  assert.equal((await getJob(job.id, demo.limitedApiKey)).status, 404);
});

test('a finished job is replayed for its Idempotency-Key', T, async () => {
  const key = `e2e-${randomUUID()}`;
  const body = { model: 'gpt-image-2-lite', prompt: prompt('a paper boat') };
  const createsBefore = (await sim.stats()).creates;

  const first = await client.images.generate(body, { headers: { 'Idempotency-Key': key } }).withResponse();
  assert.equal(first.response.status, 200);
  assert.equal(first.response.headers.get('idempotent-replayed'), null);
  assertPNG(first.data.data[0].b64_json);

  const second = await client.images.generate(body, { headers: { 'Idempotency-Key': key } }).withResponse();
  assert.equal(second.response.status, 200);
  assert.equal(second.response.headers.get('idempotent-replayed'), 'true');
  assert.equal(second.response.headers.get(JOB_HEADER), first.response.headers.get(JOB_HEADER));
  assert.deepEqual(second.data.data, first.data.data);
  assert.equal((await sim.stats()).creates - createsBefore, 1);
});
