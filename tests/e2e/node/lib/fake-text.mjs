// A scripted OpenAI-compatible text upstream on an ephemeral loopback port, for the pass-through
// tests: `POST /v1/responses` (JSON or SSE), `POST /v1/chat/completions` (JSON or SSE chunks, with a
// final usage chunk when `stream_options.include_usage` is set) and `GET /v1/models`.
//
// It keeps every request it received (headers and raw body) with the exact bytes it answered, and
// notices a client that hangs up before the answer ended. A request steers it with directives in
// its body text (the gateway forwards bodies byte for byte):
//
//   [fake:gap=MS]       a silent pause of MS milliseconds between two events of a stream
//   [fake:split=MS]     one event of a stream written in two halves, MS milliseconds apart
//   [fake:hang]         stream: the first event, then nothing until the client hangs up;
//                       JSON: no answer until the client hangs up (at most HANG_LIMIT_MS)
//   [fake:usage=IN,OUT] the token counts of the answer's usage (default 11,7)
//   [fake:status=CODE]  an OpenAI-shaped error answer with that status

import { randomUUID } from 'node:crypto';
import http from 'node:http';

export const FAKE_TEXT_KEY = 'sk-text-upstream-secret';
export const FAKE_TEXT_MODELS = ['gpt-5.5', 'gpt-5.5-mini', 'gpt-4o-unpriced'];
// The answer's text, sent as one delta per word.
export const FAKE_TEXT = 'Hello from the scripted text upstream.';

const HANG_LIMIT_MS = 60_000;
const DEFAULT_USAGE = [11, 7];

/** The directives found in a request body (see the header comment). */
export function directives(bodyText) {
  const num = (name) => {
    const m = bodyText.match(new RegExp(`\\[fake:${name}=(\\d+)\\]`));
    return m ? Number(m[1]) : null;
  };
  const usage = bodyText.match(/\[fake:usage=(\d+),(\d+)\]/);
  return {
    gapMs: num('gap'),
    splitMs: num('split'),
    hang: bodyText.includes('[fake:hang]'),
    usage: usage ? [Number(usage[1]), Number(usage[2])] : DEFAULT_USAGE,
    status: num('status'),
  };
}

/** Text/event-stream framing of one event: `event:` line (when named), one `data:` line, blank line. */
export function sseEvent(name, payload) {
  const data = typeof payload === 'string' ? payload : JSON.stringify(payload);
  return `${name ? `event: ${name}\n` : ''}data: ${data}\n\n`;
}

const id = (prefix) => `${prefix}_${randomUUID().replace(/-/g, '')}`;
const words = (text) => text.split(/(?<= )/); // keeps each word's trailing space

// ------------------------------------------------------------------------------------------------
// Answers: the Responses API.
// ------------------------------------------------------------------------------------------------

function responseObject(model, status, [input, output], text) {
  const respId = id('resp');
  const msgId = id('msg');
  const message = {
    id: msgId,
    type: 'message',
    status: 'completed',
    role: 'assistant',
    content: [{ type: 'output_text', text, annotations: [] }],
  };
  return {
    id: respId,
    object: 'response',
    created_at: Math.floor(Date.now() / 1000),
    status,
    model,
    output: status === 'completed' ? [message] : [],
    parallel_tool_calls: true,
    tool_choice: 'auto',
    tools: [],
    usage:
      status === 'completed'
        ? {
            input_tokens: input,
            input_tokens_details: { cached_tokens: 0 },
            output_tokens: output,
            output_tokens_details: { reasoning_tokens: 0 },
            total_tokens: input + output,
          }
        : null,
    msgId,
  };
}

/** The Responses stream: `[{ name, payload }]` in order, ending with `response.completed`. */
export function responsesEvents(model, usage, text = FAKE_TEXT) {
  const done = responseObject(model, 'completed', usage, text);
  const { msgId } = done;
  delete done.msgId;
  const pending = { ...done, status: 'in_progress', output: [], usage: null };
  const item = { id: msgId, type: 'message', status: 'in_progress', role: 'assistant', content: [] };
  const part = { type: 'output_text', text: '', annotations: [] };
  const where = { item_id: msgId, output_index: 0, content_index: 0 };
  const list = [
    ['response.created', { response: pending }],
    ['response.in_progress', { response: pending }],
    ['response.output_item.added', { output_index: 0, item }],
    ['response.content_part.added', { ...where, part }],
    ...words(text).map((delta) => ['response.output_text.delta', { ...where, delta }]),
    ['response.output_text.done', { ...where, text }],
    ['response.content_part.done', { ...where, part: { ...part, text } }],
    ['response.output_item.done', { output_index: 0, item: done.output[0] }],
    ['response.completed', { response: done }],
  ];
  return list.map(([name, body], i) => ({ name, payload: { type: name, sequence_number: i, ...body } }));
}

function responsesJSON(model, usage, text = FAKE_TEXT) {
  const body = responseObject(model, 'completed', usage, text);
  delete body.msgId;
  return body;
}

// ------------------------------------------------------------------------------------------------
// Answers: Chat Completions.
// ------------------------------------------------------------------------------------------------

/** The chat stream: `[{ name: null, payload }]`, then the usage chunk when asked, then `[DONE]`. */
export function chatEvents(model, usage, includeUsage, text = FAKE_TEXT) {
  const base = {
    id: `chatcmpl-${randomUUID().replace(/-/g, '')}`,
    object: 'chat.completion.chunk',
    created: Math.floor(Date.now() / 1000),
    model,
  };
  const extra = includeUsage ? { usage: null } : {};
  const chunk = (delta, finish) => ({ ...base, choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], ...extra });
  const list = [
    chunk({ role: 'assistant', content: '' }, null),
    ...words(text).map((w) => chunk({ content: w }, null)),
    chunk({}, 'stop'),
  ];
  if (includeUsage) {
    const [input, output] = usage;
    list.push({ ...base, choices: [], usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output } });
  }
  return [...list.map((payload) => ({ name: null, payload })), { name: null, payload: '[DONE]' }];
}

function chatJSON(model, [input, output], text = FAKE_TEXT) {
  return {
    id: `chatcmpl-${randomUUID().replace(/-/g, '')}`,
    object: 'chat.completion',
    created: Math.floor(Date.now() / 1000),
    model,
    choices: [{ index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs: null, finish_reason: 'stop' }],
    usage: { prompt_tokens: input, completion_tokens: output, total_tokens: input + output },
  };
}

// ------------------------------------------------------------------------------------------------
// The server.
// ------------------------------------------------------------------------------------------------

/**
 * Starts the fake on 127.0.0.1 (ephemeral port). Resolves to
 * `{ baseURL, requests, find(marker), waitFor(marker, ms), close() }`; `baseURL` ends in `/v1`.
 *
 * Each entry of `requests`: `{ method, path, headers, body (Buffer), json, sent (Buffer: every byte
 * answered), events ([{ name, payload }] a stream sent), status, finished, clientClosed }`.
 */
export async function startFakeText({ apiKey = FAKE_TEXT_KEY, models = FAKE_TEXT_MODELS } = {}) {
  const requests = [];
  const sockets = new Set();

  const server = http.createServer(async (req, res) => {
    const chunks = [];
    for await (const c of req) chunks.push(c);
    const body = Buffer.concat(chunks);
    const rec = {
      method: req.method,
      path: req.url,
      headers: { ...req.headers },
      body,
      json: null,
      sent: Buffer.alloc(0),
      events: [],
      status: null,
      finished: false,
      clientClosed: false,
    };
    try {
      rec.json = body.length ? JSON.parse(body.toString('utf8')) : null;
    } catch {
      rec.json = null;
    }
    requests.push(rec);

    let closed;
    const closedPromise = new Promise((resolve) => {
      closed = resolve;
    });
    res.on('close', () => {
      if (!res.writableFinished) rec.clientClosed = true;
      closed();
    });
    // A pause that ends early when the client hangs up; false then.
    const pause = async (ms) => {
      let timer;
      const slept = new Promise((resolve) => {
        timer = setTimeout(() => resolve(true), ms);
      });
      const r = await Promise.race([slept, closedPromise.then(() => false)]);
      clearTimeout(timer);
      return r && !rec.clientClosed;
    };
    const write = (data) => {
      const buf = Buffer.from(data);
      rec.sent = Buffer.concat([rec.sent, buf]);
      res.write(buf);
    };
    const answer = (status, contentType, data) => {
      rec.status = status;
      const buf = Buffer.from(typeof data === 'string' ? data : JSON.stringify(data));
      res.writeHead(status, { 'content-type': contentType, 'content-length': buf.length });
      rec.sent = buf;
      res.end(buf, () => {
        rec.finished = true;
      });
    };
    const openAIError = (status, code, message) =>
      answer(status, 'application/json', { error: { message, type: 'invalid_request_error', param: null, code } });

    if (req.headers.authorization !== `Bearer ${apiKey}`) {
      openAIError(401, 'invalid_api_key', 'Incorrect API key provided to the scripted text upstream.');
      return;
    }
    const route = `${req.method} ${req.url.split('?')[0]}`;
    if (route === 'GET /v1/models') {
      const created = Math.floor(Date.now() / 1000);
      const data = models.map((m) => ({ id: m, object: 'model', created, owned_by: 'fake' }));
      answer(200, 'application/json', { object: 'list', data });
      return;
    }
    if (route !== 'POST /v1/responses' && route !== 'POST /v1/chat/completions') {
      openAIError(404, 'unknown_url', `No route ${route} on the scripted text upstream.`);
      return;
    }
    if (rec.json === null || typeof rec.json !== 'object') {
      openAIError(400, 'invalid_json', 'The body is not a JSON object.');
      return;
    }
    const d = directives(body.toString('utf8'));
    if (d.status) {
      openAIError(d.status, 'scripted_error', `A scripted ${d.status} from the text upstream.`);
      return;
    }
    const model = rec.json.model;
    const isChat = route === 'POST /v1/chat/completions';

    if (!rec.json.stream) {
      if (d.hang) {
        await pause(HANG_LIMIT_MS);
        if (rec.clientClosed) return;
      }
      answer(200, 'application/json', isChat ? chatJSON(model, d.usage) : responsesJSON(model, d.usage));
      return;
    }

    const events = isChat
      ? chatEvents(model, d.usage, rec.json.stream_options?.include_usage === true)
      : responsesEvents(model, d.usage);
    rec.events = events;
    rec.status = 200;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const gapAfter = Math.floor(events.length / 2) - 1; // the silent stretch sits mid-stream
    const splitAt = gapAfter + 2; // the event written in two halves comes after it
    for (let i = 0; i < events.length; i++) {
      const frame = sseEvent(events[i].name, events[i].payload);
      if (d.splitMs !== null && i === splitAt) {
        const half = Math.floor(frame.length / 2);
        write(frame.slice(0, half));
        if (!(await pause(d.splitMs))) return;
        write(frame.slice(half));
      } else {
        write(frame);
      }
      if (d.hang && i === 0) {
        await pause(HANG_LIMIT_MS);
        if (rec.clientClosed) return;
      }
      if (d.gapMs !== null && i === gapAfter && !(await pause(d.gapMs))) return;
    }
    res.end(() => {
      rec.finished = true;
    });
  });
  server.on('connection', (s) => {
    sockets.add(s);
    s.on('close', () => sockets.delete(s));
  });
  await new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', resolve);
  });
  const { port } = server.address();

  const find = (marker) => requests.filter((r) => r.body.includes(marker));
  return {
    addr: `127.0.0.1:${port}`,
    baseURL: `http://127.0.0.1:${port}/v1`,
    requests,
    /** The requests whose body holds `marker` (each test makes its prompts unique). */
    find,
    /** Waits for exactly one request holding `marker` and returns it. */
    async waitFor(marker, timeoutMs = 10_000) {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const found = find(marker);
        if (found.length === 1) return found[0];
        if (found.length > 1) throw new Error(`${found.length} upstream requests hold ${marker}`);
        if (Date.now() >= deadline) throw new Error(`no upstream request holding ${marker} within ${timeoutMs} ms`);
        await new Promise((resolve) => setTimeout(resolve, 20));
      }
    },
    async close() {
      for (const s of sockets) s.destroy();
      await new Promise((resolve) => server.close(resolve));
    },
  };
}
