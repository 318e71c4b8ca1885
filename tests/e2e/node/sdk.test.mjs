// The gateway driven by the official OpenAI Node SDK, against the upstream simulator.
// Run with `node --test` from this directory.

import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, test } from 'node:test';

import OpenAI, { toFile } from 'openai';

import { DEFAULT_MODEL, JPEG_MAGIC, MODELS, PNG_MAGIC, ROUTED_NAMES, Simulator, gradientPNG, imageInfo, maskPNG, pngSize, startDemo } from './lib/harness.mjs';

const T = { timeout: 60_000 };
const IMAGE_PART = /^image(\[\d*\])?$/;

let demo;
let client;
let sim;
let dir;

before(
  async () => {
    demo = await startDemo();
    // No retries: every test sees the first answer, and no request reaches the upstream twice.
    client = new OpenAI({ apiKey: demo.apiKey, baseURL: demo.gatewayURL, maxRetries: 0, timeout: 60_000 });
    sim = new Simulator(demo.simulatorURL);
    dir = fs.mkdtempSync(path.join(os.tmpdir(), 'imagegate-e2e-images-'));
  },
  { timeout: 90_000 },
);

after(
  async () => {
    if (dir) fs.rmSync(dir, { recursive: true, force: true });
    if (demo) {
      console.log(`gateway stderr log: ${demo.logPath}`);
      await demo.stop();
    }
  },
  { timeout: 30_000 },
);

const prompt = (text) => `${text} #${randomUUID().slice(0, 8)}`;

function writePNG(name, seed = 0) {
  const file = path.join(dir, name);
  fs.writeFileSync(file, gradientPNG(32, 32, seed));
  return file;
}

function decodeB64(item) {
  assert.ok(item?.b64_json, `no b64_json in ${JSON.stringify(item)}`);
  return Buffer.from(item.b64_json, 'base64');
}

function assertPNG(buf) {
  assert.deepEqual(buf.subarray(0, 8), PNG_MAGIC, `not a PNG: ${buf.subarray(0, 16).toString('hex')}`);
  const { width, height } = pngSize(buf);
  assert.ok(width > 0 && height > 0);
}

const imageParts = (record) => (record.multipart ?? []).filter((p) => IMAGE_PART.test(p.name ?? ''));

function onlyCreate(rec) {
  assert.equal(rec.creates.length, 1, `expected one upstream create call, got ${JSON.stringify(rec.requests)}`);
  return rec.creates[0];
}

function assertNoUpstream(rec) {
  assert.deepEqual(rec.requests, [], `a rejected request reached the upstream: ${JSON.stringify(rec.requests)}`);
}

function rethrow(rec) {
  if (rec.error) throw rec.error;
  return rec.result;
}

/** Asserts `err` is an instance of `cls` with `status`, an OpenAI-shaped body and a request id. */
function assertAPIError(err, cls, status) {
  assert.ok(err instanceof cls, `expected ${cls.name}, got ${err?.constructor?.name}: ${err?.message}`);
  assert.equal(err.status, status);
  assert.ok(err.error && typeof err.error.message === 'string' && err.error.message, `error body: ${JSON.stringify(err.error)}`);
  for (const key of ['message', 'type', 'param', 'code']) {
    assert.ok(key in err.error, `error body lacks "${key}": ${JSON.stringify(err.error)}`);
  }
  assert.ok(err.requestID, 'error response without x-request-id');
}

// ------------------------------------------------------------------------------------------------
// Generations.
// ------------------------------------------------------------------------------------------------

for (const model of MODELS) {
  test(`generate b64 on ${model}`, T, async () => {
    const rec = await sim.record(() => client.images.generate({ model, prompt: prompt('a lighthouse at dusk') }));
    const res = rethrow(rec);
    assert.equal(typeof res.created, 'number');
    assert.equal(res.data.length, 1);
    assert.equal(res.output_format, 'png', `${model}: output_format ${res.output_format}`);
    assertPNG(decodeB64(res.data[0]));
    assert.match(res.size ?? '', /^\d+x\d+$/);
    assert.ok(res._request_id, 'no _request_id');
    assert.ok(rec.creates.length >= 1, `${model}: no upstream call was made`);
  });
}

test('generate without a model uses the default', T, async () => {
  const rec = await sim.record(() => client.images.generate({ prompt: prompt('a red bicycle') }));
  assertPNG(decodeB64(rethrow(rec).data[0]));
  const call = onlyCreate(rec);
  assert.equal(call.model ?? call.json?.model, DEFAULT_MODEL, JSON.stringify(call));
});

test('generate with response_format url', T, async () => {
  const res = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('a quiet harbor'), response_format: 'url' });
  assert.equal(res.data.length, 1);
  const url = res.data[0].url;
  assert.match(url ?? '', /^https?:\/\//);
  const fetched = await fetch(url, { signal: AbortSignal.timeout(30_000) });
  assert.equal(fetched.status, 200);
  assertPNG(Buffer.from(await fetched.arrayBuffer()));
});

test('generate jpeg', T, async () => {
  const res = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('a snowy forest'), output_format: 'jpeg' });
  assert.deepEqual(decodeB64(res.data[0]).subarray(0, 3), JPEG_MAGIC);
  assert.equal(res.output_format, 'jpeg');
});

test('generate n=2', T, async () => {
  const res = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('two cats'), n: 2 });
  assert.equal(res.data.length, 2);
  for (const item of res.data) assertPNG(decodeB64(item));
});

test('generate echoes size and quality', T, async () => {
  const res = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('a wide canyon'), size: '1536x1024', quality: 'low' });
  assertPNG(decodeB64(res.data[0]));
  assert.equal(res.size, '1536x1024');
  assert.equal(res.quality, 'low');
});

test('request id via withResponse', T, async () => {
  const { data, response, request_id } = await client.images
    .generate({ model: 'gpt-image-2-lite', prompt: prompt('a small cactus') })
    .withResponse();
  assert.ok(request_id);
  assert.equal(response.headers.get('x-request-id'), request_id);
  assert.match(response.headers.get('content-type') ?? '', /^application\/json/);
  assertPNG(decodeB64(data.data[0]));
});

// ------------------------------------------------------------------------------------------------
// Edits: the Node SDK streams multipart bodies chunked, without Content-Length.
// ------------------------------------------------------------------------------------------------

test('edit with a single fs stream (chunked body)', T, async () => {
  const file = writePNG('single.png');
  const rec = await sim.record(() =>
    client.images.edit({ model: DEFAULT_MODEL, image: fs.createReadStream(file), prompt: prompt('add a hat') }),
  );
  assertPNG(decodeB64(rethrow(rec).data[0]));
  const parts = imageParts(onlyCreate(rec));
  assert.equal(parts.length, 1, JSON.stringify(rec.requests));
  assert.equal(parts[0].len, fs.statSync(file).size, 'the uploaded image changed on its way upstream');
});

test('edit with a list of fs streams (image[], chunked body)', T, async () => {
  const files = [writePNG('a.png', 0), writePNG('b.png', 90)];
  const rec = await sim.record(() =>
    client.images.edit({
      model: DEFAULT_MODEL,
      image: files.map((f) => fs.createReadStream(f)),
      prompt: prompt('merge them'),
    }),
  );
  assertPNG(decodeB64(rethrow(rec).data[0]));
  const parts = imageParts(onlyCreate(rec));
  assert.equal(parts.length, 2, `expected 2 image parts upstream: ${JSON.stringify(rec.requests)}`);
  assert.deepEqual(
    parts.map((p) => p.len).sort(),
    files.map((f) => fs.statSync(f).size).sort(),
  );
});

test('edit with toFile from a buffer (sized body)', T, async () => {
  const png = gradientPNG(32, 32, 11);
  const rec = await sim.record(async () =>
    client.images.edit({
      model: DEFAULT_MODEL,
      image: await toFile(png, 'ref.png', { type: 'image/png' }),
      prompt: prompt('paint it gold'),
    }),
  );
  assertPNG(decodeB64(rethrow(rec).data[0]));
  const parts = imageParts(onlyCreate(rec));
  assert.equal(parts.length, 1);
  assert.equal(parts[0].len, png.length);
});

test('edit with a list of toFile uploads (sized body)', T, async () => {
  const files = [writePNG('c.png', 5), writePNG('d.png', 50), writePNG('e.png', 150)];
  const images = await Promise.all(files.map((f) => toFile(fs.createReadStream(f), path.basename(f))));
  const rec = await sim.record(() => client.images.edit({ model: DEFAULT_MODEL, image: images, prompt: prompt('a triptych') }));
  assertPNG(decodeB64(rethrow(rec).data[0]));
  assert.equal(imageParts(onlyCreate(rec)).length, 3);
});

test('edit with a mask', T, async () => {
  const file = writePNG('masked.png', 33);
  const maskFile = path.join(dir, 'mask.png');
  fs.writeFileSync(maskFile, maskPNG());
  const rec = await sim.record(() =>
    client.images.edit({
      model: DEFAULT_MODEL,
      image: fs.createReadStream(file),
      mask: fs.createReadStream(maskFile),
      prompt: prompt('fill the hole with flowers'),
    }),
  );
  assertPNG(decodeB64(rethrow(rec).data[0]));
  const call = onlyCreate(rec);
  const masks = (call.multipart ?? []).filter((p) => p.name === 'mask');
  assert.equal(masks.length, 1, `the mask did not reach the upstream: ${JSON.stringify(call)}`);
  assert.equal(masks[0].len, fs.statSync(maskFile).size);
});

test('edit on gpt-image-2-lite with one upload', T, async () => {
  const rec = await sim.record(() =>
    client.images.edit({ model: 'gpt-image-2-lite', image: fs.createReadStream(writePNG('lite.png', 3)), prompt: prompt('sepia') }),
  );
  assertPNG(decodeB64(rethrow(rec).data[0]));
  assert.ok(rec.creates.length >= 1, 'no upstream call was made');
});

test('edit on gpt-image-2-lite with two uploads is rejected', T, async () => {
  const files = [writePNG('l1.png', 1), writePNG('l2.png', 2)];
  const rec = await sim.record(() =>
    client.images.edit({ model: 'gpt-image-2-lite', image: files.map((f) => fs.createReadStream(f)), prompt: prompt('combine') }),
  );
  assertAPIError(rec.error, OpenAI.BadRequestError, 400);
  assertNoUpstream(rec);
});

for (const model of ['gpt-image-2-beta', 'sparkpix']) {
  test(`edit with an upload on ${model} is rejected`, T, async () => {
    const rec = await sim.record(() =>
      client.images.edit({ model, image: fs.createReadStream(writePNG(`${model}.png`)), prompt: prompt('add a hat') }),
    );
    assertAPIError(rec.error, OpenAI.BadRequestError, 400);
    assertNoUpstream(rec);
  });
}

test('JSON edit with a URL reference (Codex style)', T, async () => {
  const ref = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('a reference'), response_format: 'url' });
  const url = ref.data[0].url;
  for (const model of ['gpt-image-2-all', 'gpt-image-2-beta']) {
    const rec = await sim.record(() =>
      client.post('/images/edits', { body: { model, prompt: prompt('make it night'), images: [{ image_url: url }] } }),
    );
    assertPNG(decodeB64(rethrow(rec).data[0]));
    assert.ok(rec.creates.length >= 1, `${model}: no upstream call was made`);
    assert.ok(JSON.stringify(rec.creates[0].json).includes(url), `${model}: URL not forwarded: ${JSON.stringify(rec.creates)}`);
  }
});

// ------------------------------------------------------------------------------------------------
// Streaming (SSE).
// ------------------------------------------------------------------------------------------------

test('stream generate', T, async () => {
  const stream = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('a comet'), stream: true });
  const types = [];
  const completed = [];
  for await (const event of stream) {
    types.push(event.type);
    if (event.type === 'image_generation.completed') completed.push(event);
  }
  assert.equal(completed.length, 1, `events: ${types}`);
  assertPNG(Buffer.from(completed[0].b64_json, 'base64'));
});

test('stream edit with an fs stream', T, async () => {
  const stream = await client.images.edit({
    model: DEFAULT_MODEL,
    image: fs.createReadStream(writePNG('streamed.png', 77)),
    prompt: prompt('add snow'),
    stream: true,
  });
  const completed = [];
  for await (const event of stream) if (event.type === 'image_edit.completed') completed.push(event);
  assert.equal(completed.length, 1);
  assertPNG(Buffer.from(completed[0].b64_json, 'base64'));
});

test('stream with an upstream refusal throws APIError moderation_blocked', T, async () => {
  const stream = await client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('[sim:policy] x'), stream: true });
  await assert.rejects(
    (async () => {
      for await (const _event of stream);
    })(),
    (err) => {
      assert.ok(err instanceof OpenAI.APIError, `got ${err?.constructor?.name}: ${err?.message}`);
      assert.equal(err.code, 'moderation_blocked');
      return true;
    },
  );
});

// ------------------------------------------------------------------------------------------------
// Models.
// ------------------------------------------------------------------------------------------------

test('models list', T, async () => {
  const ids = [];
  for await (const m of client.models.list()) {
    assert.equal(m.object, 'model');
    assert.equal(typeof m.created, 'number');
    ids.push(m.id);
  }
  assert.deepEqual(ids.sort(), [...MODELS, ...ROUTED_NAMES].sort());
});

test('models retrieve', T, async () => {
  for (const model of MODELS) {
    const m = await client.models.retrieve(model);
    assert.equal(m.id, model);
  }
});

test('models retrieve unknown is NotFoundError', T, async () => {
  await assert.rejects(client.models.retrieve('no-such-model'), (err) => {
    assertAPIError(err, OpenAI.NotFoundError, 404);
    return true;
  });
});

// ------------------------------------------------------------------------------------------------
// Errors.
// ------------------------------------------------------------------------------------------------

test('wrong api key is AuthenticationError', T, async () => {
  const bad = new OpenAI({ apiKey: 'sk-wrong', baseURL: demo.gatewayURL, maxRetries: 0 });
  const rec = await sim.record(() => bad.images.generate({ model: DEFAULT_MODEL, prompt: prompt('anything') }));
  assertAPIError(rec.error, OpenAI.AuthenticationError, 401);
  assertNoUpstream(rec);
});

test('wrong api key on an edit is AuthenticationError', T, async () => {
  const bad = new OpenAI({ apiKey: 'sk-wrong', baseURL: demo.gatewayURL, maxRetries: 0 });
  await assert.rejects(
    bad.images.edit({ model: DEFAULT_MODEL, image: fs.createReadStream(writePNG('auth.png')), prompt: prompt('x') }),
    (err) => {
      assertAPIError(err, OpenAI.AuthenticationError, 401);
      return true;
    },
  );
});

test('bad size is BadRequestError with param size', T, async () => {
  const rec = await sim.record(() => client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('tiny'), size: '100x100' }));
  assertAPIError(rec.error, OpenAI.BadRequestError, 400);
  assert.equal(rec.error.param, 'size');
  assertNoUpstream(rec);
});

test('n=11 is BadRequestError', T, async () => {
  const rec = await sim.record(() => client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('many'), n: 11 }));
  assertAPIError(rec.error, OpenAI.BadRequestError, 400);
  assertNoUpstream(rec);
});

test('unknown model on generate is NotFoundError model_not_found', T, async () => {
  const rec = await sim.record(() => client.images.generate({ model: 'no-such-model', prompt: prompt('x') }));
  assertAPIError(rec.error, OpenAI.NotFoundError, 404);
  assert.equal(rec.error.code, 'model_not_found');
  assertNoUpstream(rec);
});

for (const model of MODELS) {
  test(`content policy on ${model} is moderation_blocked`, T, async () => {
    await assert.rejects(client.images.generate({ model, prompt: prompt('[sim:policy] something') }), (err) => {
      assertAPIError(err, OpenAI.BadRequestError, 400);
      assert.equal(err.code, 'moderation_blocked');
      return true;
    });
  });
}

test('upstream 500 is InternalServerError 502', T, async () => {
  await assert.rejects(client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('[sim:500] something') }), (err) => {
    assertAPIError(err, OpenAI.InternalServerError, 502);
    return true;
  });
});

test('upstream 500 on a streamed edit is InternalServerError 502', T, async () => {
  await assert.rejects(
    client.images.edit({ model: DEFAULT_MODEL, image: fs.createReadStream(writePNG('e500.png')), prompt: prompt('[sim:500] x') }),
    (err) => {
      assertAPIError(err, OpenAI.InternalServerError, 502);
      return true;
    },
  );
});

test('upstream 402 is upstream_insufficient_credits', T, async () => {
  await assert.rejects(client.images.generate({ model: DEFAULT_MODEL, prompt: prompt('[sim:402] something') }), (err) => {
    assertAPIError(err, OpenAI.InternalServerError, 502);
    assert.equal(err.code, 'upstream_insufficient_credits');
    return true;
  });
});

test('simulator stats are reachable', T, async () => {
  const stats = await sim.stats();
  assert.equal(typeof stats, 'object');
  assert.ok(stats && Object.keys(stats).length > 0);
});

// ------------------------------------------------------------------------------------------------
// Routing: groups and OpenAI's own model names.
// ------------------------------------------------------------------------------------------------

test('gpt-image-1 is routed to the cheapest gpt-image-2 model, with cost headers', T, async () => {
  const { data, response } = await client.images
    .generate({ model: 'gpt-image-1', prompt: prompt('a paper boat'), size: '1024x1024', quality: 'low' })
    .withResponse();
  assert.equal(response.headers.get('x-imagegate-upstream'), 'gpt-image-2-all');
  assert.equal(response.headers.get('x-imagegate-cost-usd'), '0.005');
  assert.equal(response.headers.get('x-imagegate-attempts'), '1');
  assertPNG(decodeB64(data.data[0]));
});

test('a cost ceiling no model meets is a BadRequestError naming the models', T, async () => {
  await assert.rejects(
    client.images.generate(
      { model: 'auto', prompt: prompt('a cloud') },
      { headers: { 'x-imagegate-max-cost-usd': '0.001' } },
    ),
    (err) => {
      assert.ok(err instanceof OpenAI.BadRequestError, String(err));
      assert.equal(err.code, 'no_eligible_model');
      assert.match(err.message, /gpt-image-2-beta costs \$0\.03/);
      return true;
    },
  );
});

test('a rate-limited key gets OpenAI.RateLimitError', T, async () => {
  // The demo's limited key allows one request per minute.
  const limited = new OpenAI({ apiKey: demo.limitedApiKey, baseURL: demo.gatewayURL, maxRetries: 0, timeout: 60_000 });
  const first = await limited.images.generate({ model: 'sparkpix', prompt: prompt('a cat'), response_format: 'url' });
  assert.ok(first.data[0].url);
  await assert.rejects(
    limited.images.generate({ model: 'sparkpix', prompt: prompt('a cat'), response_format: 'url' }),
    (e) => {
      assert.ok(e instanceof OpenAI.RateLimitError, `not a RateLimitError: ${e}`);
      assert.equal(e.status, 429);
      assert.equal(e.code, 'rate_limit_exceeded');
      const retry = Number(e.headers.get('retry-after'));
      assert.ok(retry >= 1 && retry <= 60, `retry-after ${retry}`);
      assert.equal(e.headers.get('x-ratelimit-limit-requests'), '1');
      return true;
    },
  );
});

// ------------------------------------------------------------------------------------------------
// The answer is what was asked: each image's own headers compared with the request.
// ------------------------------------------------------------------------------------------------

test('a group makes the size asked, or says what it made when nearest is allowed', T, async () => {
  const exact = await client.images
    .generate({ model: 'gpt-image-2', prompt: prompt('a wide bay'), size: '1280x720', quality: 'high' })
    .withResponse();
  assert.equal(exact.response.headers.get('x-imagegate-upstream'), 'gpt-image-2-lite');
  assert.deepEqual(imageInfo(decodeB64(exact.data.data[0])), { format: 'png', width: 1280, height: 720 });
  assert.equal(exact.data.size, '1280x720');

  const nearest = await client.images
    .generate(
      { model: 'gpt-image-2', prompt: prompt('a wide bay'), size: '1280x720', quality: 'high' },
      { headers: { 'x-imagegate-size-policy': 'nearest' } },
    )
    .withResponse();
  assert.equal(nearest.response.headers.get('x-imagegate-upstream'), 'gpt-image-2-beta');
  const info = imageInfo(decodeB64(nearest.data.data[0]));
  assert.notEqual(`${info.width}x${info.height}`, '1280x720');
  assert.equal(nearest.data.size, `${info.width}x${info.height}`);
});

test('a url answer does not echo the requested size', T, async () => {
  const res = await client.images.generate({ model: 'gpt-image-2-beta', prompt: prompt('a dune'), size: '1280x720', response_format: 'url' });
  assert.ok(res.data[0].url);
  assert.equal(res.size, undefined);
  assert.equal(res.output_format, undefined);
});

for (const model of MODELS) {
  test(`webp is delivered as webp (${model})`, T, async () => {
    const res = await client.images.generate({ model, prompt: prompt('a kite'), size: '1024x1024', output_format: 'webp' });
    const info = imageInfo(decodeB64(res.data[0]));
    assert.equal(info.format, 'webp', `${model}: ${info.format}`);
    assert.equal(res.output_format, 'webp');
    assert.equal(res.size, `${info.width}x${info.height}`);
  });
}

test('a url in a format the model cannot make is refused before any upstream call', T, async () => {
  const before = (await sim.requests()).length;
  await assert.rejects(
    client.images.generate({ model: 'sparkpix', prompt: prompt('a fern'), response_format: 'url', output_format: 'webp' }),
    (err) => err instanceof OpenAI.BadRequestError && err.code === 'unsupported_for_model' && err.param === 'output_format',
  );
  assert.equal((await sim.requests()).length, before);
});
