// The text pass-through (`[passthrough]`: `/v1/responses`, `/v1/chat/completions`, text models in
// `/v1/models`) driven by the official OpenAI Node SDK, with a scripted text upstream
// (lib/fake-text.mjs) behind `imagegate serve`. Run with `node --test` from this directory.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import OpenAI from 'openai';

import { FAKE_TEXT, FAKE_TEXT_KEY, FAKE_TEXT_MODELS, startFakeText } from './lib/fake-text.mjs';
import { waitUntil } from './lib/harness.mjs';
import { ADMIN_KEY, CLIENT_KEY, gatewayConfig, startServed, startSim } from './lib/served.mjs';

const T = { timeout: 60_000 };
const MODEL = 'gpt-5.5';
const MINI = 'gpt-5.5-mini';
const UNPRICED = 'gpt-4o-unpriced';
// USD per 1M tokens, as configured below.
const PRICES = {
  [MODEL]: { input_usd_per_1m: 1.25, output_usd_per_1m: 10.0 },
  [MINI]: { input_usd_per_1m: 0.25, output_usd_per_1m: 2.0 },
};
const KEEPALIVE_MS = 1000;
const KEEPALIVE = ': keepalive';
// More keys: one whose ledger rows only the usage test writes, one with a budget, one limited to two models.
const USAGE_KEY = 'sk-test-usage-key-0123456789';
const BUDGET_KEY = 'sk-test-budget-key-0123456789';
const NARROW_KEY = 'sk-test-narrow-key-0123456789';

let dir;
let fake;
let sim;
let gateway;
let bare; // a gateway without [passthrough]
let client;
// The request bodies the SDK client sent, by URL, to compare with what the upstream received.
const sentBodies = [];

before(
  async () => {
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imagegate-e2e-passthrough-'));
    fake = await startFakeText();
    sim = await startSim(dir);
    const dataDir = path.join(dir, 'data');
    fs.mkdirSync(dataDir);
    gateway = await startServed(
      dir,
      gatewayConfig({
        sim,
        dataDir,
        keys: [
          { id: 'usage', key: USAGE_KEY },
          { id: 'budgeted', key: BUDGET_KEY, monthly_budget_usd: 5 },
          { id: 'narrow', key: NARROW_KEY, models: ['gpt-image-2-all', MODEL] },
        ],
        tables: {
          passthrough: { base_url: fake.baseURL, api_key: FAKE_TEXT_KEY, timeout: '60s', keepalive: '1s', max_output_tokens: 4096 },
          ...Object.fromEntries(Object.entries(PRICES).map(([m, p]) => [`passthrough.prices."${m}"`, p])),
        },
      }),
    );
    const bareData = path.join(dir, 'bare-data');
    fs.mkdirSync(bareData);
    bare = await startServed(dir, gatewayConfig({ sim, dataDir: bareData }), 'bare');
    // No retries: every test sees the first answer, and no request reaches the upstream twice.
    client = sdk(CLIENT_KEY);
  },
  { timeout: 90_000 },
);

after(
  async () => {
    const stops = [gateway, bare, sim].filter(Boolean).map((p) => p.stop());
    const outcomes = await Promise.allSettled(stops);
    if (fake) await fake.close();
    if (gateway) console.log(`gateway stderr log: ${gateway.logPath}`);
    for (const o of outcomes) if (o.status === 'rejected') throw o.reason;
  },
  { timeout: 30_000 },
);

function sdk(apiKey, baseURL = gateway.baseURL) {
  return new OpenAI({
    apiKey,
    baseURL,
    maxRetries: 0,
    timeout: 60_000,
    fetch: async (url, init) => {
      sentBodies.push({ url: String(url), body: init?.body });
      return fetch(url, init);
    },
  });
}

/** A marker that makes a request findable at the upstream (and its text unique). */
const tag = () => `#${randomUUID().slice(0, 8)}`;

/** What the SDK client sent in the request whose body holds `marker`. */
function sentBody(marker) {
  const found = sentBodies.filter((s) => typeof s.body === 'string' && s.body.includes(marker));
  assert.equal(found.length, 1, `expected one sent body holding ${marker}, got ${found.length}`);
  return found[0].body;
}

/**
 * Reads an SSE body to its end: `{ raw (string), blocks: [{ text, at }] }`, a block being the text
 * before each blank line, `at` the milliseconds since the read began when it was complete.
 */
async function readBlocks(response) {
  const start = Date.now();
  const decoder = new TextDecoder();
  const chunks = [];
  const blocks = [];
  let pending = '';
  for await (const chunk of response.body) {
    chunks.push(Buffer.from(chunk));
    pending += decoder.decode(chunk, { stream: true });
    for (let i; (i = pending.indexOf('\n\n')) !== -1; ) {
      blocks.push({ text: pending.slice(0, i), at: Date.now() - start });
      pending = pending.slice(i + 2);
    }
  }
  assert.equal(pending + decoder.decode(), '', 'the stream ended inside an event');
  return { raw: Buffer.concat(chunks).toString('utf8'), blocks };
}

/** The stream without its `: keepalive` blocks, which must each stand alone between events. */
function withoutKeepalives(blocks) {
  return blocks
    .filter((b) => b.text !== KEEPALIVE)
    .map((b) => `${b.text}\n\n`)
    .join('');
}

/** The event blocks' `data:` payloads, parsed (`[DONE]` kept as a string). */
function payloads(blocks) {
  return blocks
    .filter((b) => b.text !== KEEPALIVE)
    .map((b) => {
      const data = b.text.split('\n').find((l) => l.startsWith('data: '))?.slice(6);
      return data === '[DONE]' ? data : JSON.parse(data);
    });
}

/** `cost = in × input price / 1e6 + out × output price / 1e6`, rounded up, in micro-dollars. */
function costMicros(model, input, output) {
  const p = PRICES[model];
  // Prices are exact in micro-dollars per token × 1e6; integer arithmetic avoids float drift.
  const inMicrosPerM = Math.round(p.input_usd_per_1m * 1e6);
  const outMicrosPerM = Math.round(p.output_usd_per_1m * 1e6);
  const totalTimes1e6 = input * inMicrosPerM + output * outMicrosPerM; // micro-dollars × 1e6
  return Math.ceil(totalTimes1e6 / 1e6);
}

async function adminGet(pathAndQuery) {
  const res = await fetch(`${gateway.rootURL}${pathAndQuery}`, {
    headers: { Authorization: `Bearer ${ADMIN_KEY}` },
    signal: AbortSignal.timeout(30_000),
  });
  const text = await res.text();
  assert.equal(res.status, 200, `GET ${pathAndQuery} -> ${res.status}: ${text}`);
  return JSON.parse(text);
}

function assertAPIError(err, cls, status, code) {
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`);
  assert.equal(err.status, status);
  assert.equal(err.code, code, `error body: ${JSON.stringify(err.error)}`);
  assert.ok(typeof err.error?.message === 'string' && err.error.message, `error body: ${JSON.stringify(err.error)}`);
  return true;
}

// ------------------------------------------------------------------------------------------------
// Responses API.
// ------------------------------------------------------------------------------------------------

test('responses.create streaming: every event arrives, payloads equal to what the upstream sent', T, async () => {
  const marker = tag();
  const stream = await client.responses.create({ model: MODEL, input: `Say hello ${marker}`, stream: true });
  const got = [];
  for await (const event of stream) got.push(event);

  const rec = await fake.waitFor(marker);
  assert.equal(rec.path, '/v1/responses');
  assert.deepEqual(
    got.map((e) => e.type),
    rec.events.map((e) => e.name),
  );
  assert.deepEqual(got, rec.events.map((e) => e.payload));
  const text = got.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
  assert.equal(text, FAKE_TEXT);
  assert.equal(got.at(-1).type, 'response.completed');
  // The request body reached the upstream byte for byte.
  assert.equal(rec.body.toString('utf8'), sentBody(marker));
});

test('responses.create streaming: the raw body is byte-identical to the upstream stream', T, async () => {
  const marker = tag();
  const response = await client.responses.create({ model: MODEL, input: `Say hello ${marker}`, stream: true }).asResponse();
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^text\/event-stream/);
  const { blocks } = await readBlocks(response);
  const rec = await fake.waitFor(marker);
  assert.equal(withoutKeepalives(blocks), rec.sent.toString('utf8'));
});

test('responses.create non-streaming: status, content type and body relayed as is', T, async () => {
  const marker = tag();
  const response = await client.responses.create({ model: MODEL, input: `Say hello ${marker}` }).asResponse();
  const body = Buffer.from(await response.arrayBuffer());
  const rec = await fake.waitFor(marker);
  assert.equal(response.status, 200);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(body.toString('utf8'), rec.sent.toString('utf8'));
  assert.equal(rec.body.toString('utf8'), sentBody(marker));

  // And as the SDK reads it.
  const again = tag();
  const res = await client.responses.create({ model: MODEL, input: `Say hello ${again}` });
  assert.equal(res.object, 'response');
  assert.equal(res.status, 'completed');
  assert.equal(res.model, MODEL);
  assert.equal(res.output_text, FAKE_TEXT);
  assert.deepEqual(res.usage, JSON.parse((await fake.waitFor(again)).sent.toString('utf8')).usage);
});

test('an upstream error answer is relayed with its status and body', T, async () => {
  const marker = tag();
  const res = await fetch(`${gateway.baseURL}/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'content-type': 'application/json' },
    body: JSON.stringify({ model: MODEL, input: `[fake:status=400] ${marker}` }),
    signal: AbortSignal.timeout(30_000),
  });
  const body = Buffer.from(await res.arrayBuffer());
  const rec = await fake.waitFor(marker);
  assert.equal(res.status, 400);
  assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
  assert.equal(body.toString('utf8'), rec.sent.toString('utf8'));
});

// ------------------------------------------------------------------------------------------------
// Chat Completions.
// ------------------------------------------------------------------------------------------------

test('chat.completions.create streaming with include_usage: chunks then the usage chunk', T, async () => {
  const marker = tag();
  const stream = await client.chat.completions.create({
    model: MINI,
    messages: [{ role: 'user', content: `Say hello [fake:usage=300,40] ${marker}` }],
    stream: true,
    stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);

  const rec = await fake.waitFor(marker);
  assert.equal(rec.path, '/v1/chat/completions');
  // The body asked for usage already: forwarded byte for byte.
  assert.equal(rec.body.toString('utf8'), sentBody(marker));
  assert.deepEqual(chunks, rec.events.filter((e) => e.payload !== '[DONE]').map((e) => e.payload));
  const text = chunks.flatMap((c) => c.choices.map((ch) => ch.delta?.content ?? '')).join('');
  assert.equal(text, FAKE_TEXT);
  const last = chunks.at(-1);
  assert.deepEqual(last.choices, []);
  assert.deepEqual(last.usage, { prompt_tokens: 300, completion_tokens: 40, total_tokens: 340 });
});

test('a streamed chat completion without stream_options gets include_usage added upstream, nothing else changed', T, async () => {
  const marker = tag();
  const stream = await client.chat.completions.create({
    model: MODEL,
    messages: [{ role: 'user', content: `Say hello ${marker}` }],
    stream: true,
  });
  const chunks = [];
  for await (const chunk of stream) chunks.push(chunk);
  assert.ok(chunks.length > 0);

  const rec = await fake.waitFor(marker);
  const sent = JSON.parse(sentBody(marker));
  assert.equal(sent.stream_options, undefined);
  assert.deepEqual(rec.json.stream_options, { include_usage: true }, `upstream body: ${rec.body}`);
  const { stream_options: _added, ...rest } = rec.json;
  assert.deepEqual(rest, sent);
});

test('chat.completions.create non-streaming', T, async () => {
  const marker = tag();
  const res = await client.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: `Say hello ${marker}` }] });
  const rec = await fake.waitFor(marker);
  assert.equal(rec.body.toString('utf8'), sentBody(marker));
  assert.equal(res.object, 'chat.completion');
  assert.equal(res.choices[0].message.content, FAKE_TEXT);
  assert.deepEqual(res, JSON.parse(rec.sent.toString('utf8')));
});

// ------------------------------------------------------------------------------------------------
// Headers.
// ------------------------------------------------------------------------------------------------

test('the upstream gets the pass-through key and only the allow-listed client headers', T, async () => {
  const marker = tag();
  const body = JSON.stringify({ model: MODEL, input: `Say hello ${marker}` });
  const forwarded = {
    'content-type': 'application/json',
    accept: 'application/json',
    'openai-beta': 'responses=v1',
    'openai-organization': 'org-e2e',
    'openai-project': 'proj-e2e',
    'user-agent': 'imagegate-e2e/1.0',
    'x-request-id': `req-e2e-${marker.slice(1)}`,
  };
  const dropped = {
    'x-openai-actor-authorization': 'Bearer actor-secret',
    'x-codex-turn-metadata': '{"turn":1}',
    'x-codex-beta-features': 'all',
    'session-id': 'sess-e2e',
    'thread-id': 'thread-e2e',
    originator: 'codex_cli_rs',
    'x-e2e-unlisted': 'not on the allow-list',
  };
  const ownEncoding = 'x-e2e-encoding';
  const res = await fetch(`${gateway.baseURL}/responses`, {
    method: 'POST',
    headers: { authorization: `Bearer ${CLIENT_KEY}`, 'accept-encoding': ownEncoding, ...forwarded, ...dropped },
    body,
    signal: AbortSignal.timeout(30_000),
  });
  assert.equal(res.status, 200, await res.clone().text());
  await res.arrayBuffer();

  const rec = await fake.waitFor(marker);
  assert.equal(rec.headers.authorization, `Bearer ${FAKE_TEXT_KEY}`);
  assert.equal(rec.body.toString('utf8'), body);
  for (const [name, value] of Object.entries(forwarded)) {
    assert.equal(rec.headers[name], value, `${name} not forwarded as sent: ${JSON.stringify(rec.headers)}`);
  }
  for (const name of Object.keys(dropped)) {
    assert.equal(rec.headers[name], undefined, `${name} reached the upstream: ${JSON.stringify(rec.headers)}`);
  }
  assert.notEqual(rec.headers['accept-encoding'], ownEncoding, 'the client accept-encoding reached the upstream');
  assert.ok(!JSON.stringify(rec.headers).includes(CLIENT_KEY), 'the client key reached the upstream');
});

// ------------------------------------------------------------------------------------------------
// Keepalive and disconnects.
// ------------------------------------------------------------------------------------------------

test('a silent upstream stretch gets keepalive comments, between events only', T, async () => {
  const marker = tag();
  const gapMs = 5000;
  const response = await client.responses
    .create({ model: MODEL, input: `[fake:gap=${gapMs}] ${marker}`, stream: true })
    .asResponse();
  const { blocks } = await readBlocks(response);
  const rec = await fake.waitFor(marker);
  // Every other byte is the upstream's, in order: each keepalive stood alone between two events.
  assert.equal(withoutKeepalives(blocks), rec.sent.toString('utf8'));

  const events = blocks.map((b, i) => ({ ...b, i })).filter((b) => b.text !== KEEPALIVE);
  // The silent stretch: the longest wait between two consecutive events.
  let lastBefore = events[0];
  let firstAfter = events[1];
  for (let k = 1; k < events.length; k++) {
    if (events[k].at - events[k - 1].at > firstAfter.at - lastBefore.at) [lastBefore, firstAfter] = [events[k - 1], events[k]];
  }
  const timeline = () => JSON.stringify(blocks.map((b) => [b.text.slice(0, 40), b.at]));
  assert.ok(firstAfter.at - lastBefore.at >= gapMs - 500, `no silent stretch seen: ${timeline()}`);
  const inGap = blocks.slice(lastBefore.i + 1, firstAfter.i);
  assert.ok(inGap.length >= 3, `expected keepalives every ${KEEPALIVE_MS} ms in ${gapMs} ms of silence, got ${inGap.length}`);
  assert.ok(inGap.every((b) => b.text === KEEPALIVE), JSON.stringify(inGap));
  // None of the waits in the stretch is much longer than the keepalive interval.
  const times = [lastBefore.at, ...inGap.map((b) => b.at), firstAfter.at];
  const longest = Math.max(...times.slice(1).map((t, k) => t - times[k]));
  assert.ok(longest <= 2.5 * KEEPALIVE_MS, `a ${longest} ms silence with keepalive = 1s: ${JSON.stringify(times)}`);
});

test('a pause inside an event gets no keepalive inside it', T, async () => {
  const marker = tag();
  const response = await client.responses
    .create({ model: MODEL, input: `[fake:split=3000] ${marker}`, stream: true })
    .asResponse();
  const { blocks } = await readBlocks(response);
  const rec = await fake.waitFor(marker);
  // A keepalive written between the halves would break this event's bytes.
  assert.equal(withoutKeepalives(blocks), rec.sent.toString('utf8'));
  assert.deepEqual(payloads(blocks), rec.events.map((e) => e.payload));
});

test('a client that hangs up mid-stream drops the upstream call', T, async () => {
  const marker = tag();
  const controller = new AbortController();
  const response = await client.responses
    .create({ model: MODEL, input: `[fake:hang] ${marker}`, stream: true }, { signal: controller.signal })
    .asResponse();
  // Read until the first event (keepalives may come first).
  const reader = response.body.getReader();
  const decoder = new TextDecoder();
  let seen = '';
  while (!seen.includes('event: response.created')) {
    const { value, done } = await reader.read();
    assert.ok(!done, `the stream ended before its first event: ${seen}`);
    seen += decoder.decode(value, { stream: true });
  }
  const rec = await fake.waitFor(marker);
  assert.equal(rec.clientClosed, false, 'the upstream call ended before the client hung up');
  controller.abort();
  await waitUntil(() => rec.clientClosed, 10_000, 'the upstream call is still open 10 s after the client hung up');
  assert.equal(rec.finished, false);
});

test('a client that hangs up before a JSON answer drops the upstream call', T, async () => {
  const marker = tag();
  const controller = new AbortController();
  const pending = client.chat.completions.create(
    { model: MODEL, messages: [{ role: 'user', content: `[fake:hang] ${marker}` }] },
    { signal: controller.signal },
  );
  const rec = await fake.waitFor(marker);
  controller.abort();
  await assert.rejects(pending, (err) => err instanceof OpenAI.APIUserAbortError);
  await waitUntil(() => rec.clientClosed, 10_000, 'the upstream call is still open 10 s after the client hung up');
  assert.equal(rec.status, null, 'the upstream answered although nobody waited');
});

// ------------------------------------------------------------------------------------------------
// Money, keys and models.
// ------------------------------------------------------------------------------------------------

test('usage is booked at the configured price, per request model', T, async () => {
  const usageClient = sdk(USAGE_KEY);
  // A streamed and a JSON response on gpt-5.5, a streamed chat on gpt-5.5-mini.
  const stream = await usageClient.responses.create({ model: MODEL, input: `[fake:usage=1234,567] ${tag()}`, stream: true });
  for await (const _event of stream);
  await usageClient.responses.create({ model: MODEL, input: `[fake:usage=2000,1000] ${tag()}` });
  const chat = await usageClient.chat.completions.create({
    model: MINI,
    messages: [{ role: 'user', content: `[fake:usage=300,40] ${tag()}` }],
    stream: true,
    stream_options: { include_usage: true },
  });
  for await (const _chunk of chat);

  const expected = {
    [MODEL]: { requests: 2, cost_micros: costMicros(MODEL, 1234, 567) + costMicros(MODEL, 2000, 1000) },
    [MINI]: { requests: 1, cost_micros: costMicros(MINI, 300, 40) },
  };
  // 1234 × 1.25 + 567 × 10 = 7212.5 micro-dollars: rounded up to 7213.
  assert.equal(costMicros(MODEL, 1234, 567), 7213);

  let report;
  const rows = () =>
    Object.fromEntries(
      report.rows.filter((r) => r.key === 'usage').map((r) => [r.model, { requests: r.requests, cost_micros: r.cost_micros }]),
    );
  await waitUntil(
    async () => {
      report = await adminGet('/admin/usage?group_by=key,model');
      const got = rows();
      return got[MODEL]?.requests === 2 && got[MINI]?.requests === 1;
    },
    10_000,
    () => `the ledger never showed the three requests: ${JSON.stringify(report)}`,
  );
  assert.deepEqual(rows(), expected, JSON.stringify(report));
  const usd = (micros) => (micros / 1e6).toFixed(6).replace(/0+$/, '').replace(/\.$/, '');
  for (const r of report.rows.filter((r) => r.key === 'usage')) assert.equal(r.cost_usd, usd(r.cost_micros));

  // The key sees the same in GET /v1/me (its usage by day and model).
  const meRes = await fetch(`${gateway.baseURL}/me`, {
    headers: { Authorization: `Bearer ${USAGE_KEY}` },
    signal: AbortSignal.timeout(30_000),
  });
  assert.equal(meRes.status, 200);
  const me = await meRes.json();
  const mine = {};
  for (const r of me.usage.rows) mine[r.model] = (mine[r.model] ?? 0) + r.cost_micros;
  assert.deepEqual(mine, { [MODEL]: expected[MODEL].cost_micros, [MINI]: expected[MINI].cost_micros }, JSON.stringify(me));
});

test('a budgeted key asking for a text model without a price gets 403 model_not_priced', T, async () => {
  const budgeted = sdk(BUDGET_KEY);
  const marker = tag();
  await assert.rejects(budgeted.responses.create({ model: UNPRICED, input: `hello ${marker}` }), (err) => {
    assertAPIError(err, OpenAI.PermissionDeniedError, 403, 'model_not_priced');
    assert.ok(err.error.message.includes(UNPRICED), err.error.message);
    assert.ok(err.error.message.includes('[passthrough.prices]'), err.error.message);
    return true;
  });
  await assert.rejects(
    budgeted.chat.completions.create({ model: UNPRICED, messages: [{ role: 'user', content: `hello ${marker}` }], stream: true }),
    (err) => assertAPIError(err, OpenAI.PermissionDeniedError, 403, 'model_not_priced'),
  );
  assert.deepEqual(fake.find(marker), [], 'a refused request reached the upstream');

  // The same key on a priced model goes through; a key without a budget may use the unpriced one.
  const priced = await budgeted.responses.create({ model: MODEL, input: `hello ${tag()}` });
  assert.equal(priced.output_text, FAKE_TEXT);
  const unbudgeted = await client.responses.create({ model: UNPRICED, input: `hello ${tag()}` });
  assert.equal(unbudgeted.output_text, FAKE_TEXT);
});

test('a text model outside the key allow-list gets 403 model_not_allowed', T, async () => {
  const narrow = sdk(NARROW_KEY);
  const marker = tag();
  await assert.rejects(narrow.responses.create({ model: MINI, input: `hello ${marker}` }), (err) =>
    assertAPIError(err, OpenAI.PermissionDeniedError, 403, 'model_not_allowed'),
  );
  assert.deepEqual(fake.find(marker), [], 'a refused request reached the upstream');
  const allowed = await narrow.responses.create({ model: MODEL, input: `hello ${tag()}` });
  assert.equal(allowed.output_text, FAKE_TEXT);
});

test('without [passthrough] the text routes answer 404 passthrough_not_configured', T, async () => {
  const other = sdk(CLIENT_KEY, bare.baseURL);
  await assert.rejects(other.responses.create({ model: MODEL, input: 'hello' }), (err) => {
    assertAPIError(err, OpenAI.NotFoundError, 404, 'passthrough_not_configured');
    assert.ok(err.error.message.includes('[passthrough]'), err.error.message);
    return true;
  });
  await assert.rejects(other.chat.completions.create({ model: MODEL, messages: [{ role: 'user', content: 'hello' }] }), (err) =>
    assertAPIError(err, OpenAI.NotFoundError, 404, 'passthrough_not_configured'),
  );
});

test('models.list holds the image models and the text upstream models', T, async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, 'model');
    ids.push(m.id);
  }
  for (const id of [...FAKE_TEXT_MODELS, 'gpt-image-2-all', 'gpt-image-2']) assert.ok(ids.includes(id), `${id} missing from ${ids}`);
  const listed = fake.requests.filter((r) => r.method === 'GET' && r.path === '/v1/models');
  assert.ok(listed.length >= 1, 'the upstream model list was never asked for');
  assert.equal(listed[0].headers.authorization, `Bearer ${FAKE_TEXT_KEY}`);
});
