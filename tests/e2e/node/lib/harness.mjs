// Starts `imagegate demo` for the Node end-to-end tests, and helpers: a tiny PNG encoder and the
// simulator's introspection endpoints.
//
// The binary comes from IMAGEGATE_BIN (default `target/debug/imagegate`; a relative path is resolved
// against the repository root). It runs as `demo --listen 127.0.0.1:0 --time-scale 0.01` and prints
// `IMAGEGATE_READY {json}` on stdout once the simulator and the gateway listen.

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import readline from 'node:readline';
import { fileURLToPath } from 'node:url';
import zlib from 'node:zlib';

export const REPO_ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../../..');
export const MODELS = ['gpt-image-2-lite', 'gpt-image-2-all', 'gpt-image-2-beta', 'sparkpix'];
// Groups and OpenAI's own names, routed to the cheapest healthy model that can serve a request.
export const ROUTED_NAMES = [
  'auto',
  'gpt-image-2',
  'chatgpt-image-latest',
  'dall-e-2',
  'dall-e-3',
  'gpt-image-1',
  'gpt-image-1-mini',
  'gpt-image-1.5',
  'gpt-image-2-2026-04-21',
];
export const DEFAULT_MODEL = 'gpt-image-2-all';
export const PNG_MAGIC = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
export const JPEG_MAGIC = Buffer.from([0xff, 0xd8, 0xff]);

const READY_PREFIX = 'IMAGEGATE_READY ';
const READY_TIMEOUT_MS = Number(process.env.IMAGEGATE_READY_TIMEOUT ?? '60') * 1000;
const STOP_TIMEOUT_MS = 15_000;

function binaryPath() {
  const raw = process.env.IMAGEGATE_BIN || 'target/debug/imagegate';
  return path.isAbsolute(raw) ? raw : path.join(REPO_ROOT, raw);
}

function tail(text, lines = 80) {
  const all = text.replace(/\x1b\[[0-9;]*m/g, '').split('\n');
  return all.slice(-lines).join('\n') || '<empty>';
}

/**
 * Starts the demo and resolves once it printed its READY line:
 * `{ gatewayURL, simulatorURL, apiKey, limitedApiKey, logPath, stop() }` (`limitedApiKey`
 * allows one request per minute).
 */
export async function startDemo() {
  const bin = binaryPath();
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(`gateway binary not found or not executable: ${bin} (build it with \`cargo build\` or set IMAGEGATE_BIN)`);
  }
  const logPath = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'imagegate-e2e-node-')), 'imagegate-demo.stderr.log');
  const log = fs.openSync(logPath, 'w');
  const args = ['demo', '--listen', '127.0.0.1:0', '--time-scale', '0.01'];
  const child = spawn(bin, args, { cwd: REPO_ROOT, stdio: ['ignore', 'pipe', log] });
  fs.closeSync(log); // the child holds its own descriptor
  const readLog = () => {
    try {
      return fs.readFileSync(logPath, 'utf8');
    } catch (e) {
      return `<could not read ${logPath}: ${e.message}>`;
    }
  };

  let exited = null;
  const exitPromise = new Promise((resolve) => {
    child.on('exit', (code, signal) => {
      exited = { code, signal };
      resolve(exited);
    });
  });

  const stdoutLines = [];
  const ready = await new Promise((resolve, reject) => {
    const fail = (reason) => {
      clearTimeout(timer);
      if (exited === null) child.kill('SIGKILL');
      // Give the log a moment to be flushed by an exiting child.
      setTimeout(() => {
        reject(
          new Error(
            `${reason}\ncommand: ${bin} ${args.join(' ')}\nexit: ${JSON.stringify(exited)}\n` +
              `--- stdout ---\n${stdoutLines.join('\n') || '<empty>'}\n--- stderr (${logPath}) ---\n${tail(readLog())}`,
          ),
        );
      }, 200);
    };
    const timer = setTimeout(
      () => fail(`no IMAGEGATE_READY line on stdout within ${READY_TIMEOUT_MS / 1000}s`),
      READY_TIMEOUT_MS,
    );
    child.on('error', (e) => fail(`could not start the demo: ${e.message}`));
    let done = false;
    // readline keeps draining stdout after READY, so the child never blocks on a full pipe.
    const rl = readline.createInterface({ input: child.stdout });
    rl.on('line', (line) => {
      stdoutLines.push(line);
      if (done || !line.startsWith(READY_PREFIX)) return;
      done = true;
      let info;
      try {
        info = JSON.parse(line.slice(READY_PREFIX.length));
      } catch (e) {
        fail(`IMAGEGATE_READY line is not followed by JSON (${e.message}): ${line}`);
        return;
      }
      for (const key of ['gateway_url', 'simulator_url', 'api_key', 'limited_api_key']) {
        if (typeof info[key] !== 'string' || info[key] === '') {
          fail(`IMAGEGATE_READY JSON lacks a non-empty string ${key}: ${line}`);
          return;
        }
      }
      clearTimeout(timer);
      resolve(info);
    });
    rl.on('close', () => {
      if (!done) fail('the demo closed its stdout (exited?) before printing IMAGEGATE_READY');
    });
  });

  return {
    gatewayURL: ready.gateway_url.replace(/\/+$/, ''),
    simulatorURL: ready.simulator_url.replace(/\/+$/, ''),
    apiKey: ready.api_key,
    limitedApiKey: ready.limited_api_key,
    logPath,
    /** Stops the demo with SIGTERM; throws if it had died before, or does not exit in time. */
    async stop() {
      if (exited !== null) {
        throw new Error(`the demo exited during the tests (${JSON.stringify(exited)})\n--- stderr ---\n${tail(readLog())}`);
      }
      child.kill('SIGTERM');
      let timer;
      const timeout = new Promise((resolve) => {
        timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
      });
      const outcome = await Promise.race([exitPromise, timeout]);
      clearTimeout(timer);
      if (outcome === 'timeout') {
        child.kill('SIGKILL');
        await exitPromise;
        throw new Error(`the demo did not exit within ${STOP_TIMEOUT_MS / 1000}s of SIGTERM\n--- stderr ---\n${tail(readLog())}`);
      }
    },
    stderrTail: (lines = 60) => tail(readLog(), lines),
  };
}

// ------------------------------------------------------------------------------------------------
// Tiny PNG encoder (zlib + CRC-32): real, valid images without any imaging library.
// ------------------------------------------------------------------------------------------------

const CRC_TABLE = (() => {
  const table = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    table[n] = c >>> 0;
  }
  return table;
})();

function crc32(buf) {
  let c = 0xffffffff;
  for (const b of buf) c = CRC_TABLE[(c ^ b) & 0xff] ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

function chunk(kind, data) {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(kind, 'ascii'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** An 8-bit RGBA PNG; `pixel(x, y)` returns `[r, g, b, a]`. */
export function encodePNG(width, height, pixel) {
  const raw = Buffer.alloc(height * (1 + width * 4));
  let o = 0;
  for (let y = 0; y < height; y++) {
    raw[o++] = 0; // filter: None
    for (let x = 0; x < width; x++) {
      for (const v of pixel(x, y)) raw[o++] = v;
    }
  }
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(width, 0);
  ihdr.writeUInt32BE(height, 4);
  ihdr.set([8, 6, 0, 0, 0], 8);
  return Buffer.concat([PNG_MAGIC, chunk('IHDR', ihdr), chunk('IDAT', zlib.deflateSync(raw)), chunk('IEND', Buffer.alloc(0))]);
}

export function gradientPNG(width = 32, height = 32, seed = 0) {
  return encodePNG(width, height, (x, y) => [(x * 8 + seed) % 256, (y * 8 + seed) % 256, (x + y + seed) % 256, 255]);
}

/** Opaque except a transparent square in the middle (the region to repaint). */
export function maskPNG(width = 32, height = 32) {
  const q = Math.floor(width / 4);
  return encodePNG(width, height, (x, y) => {
    const inside = x >= q && x < width - q && y >= q && y < height - q;
    return [0, 0, 0, inside ? 0 : 255];
  });
}

export function pngSize(buf) {
  if (!buf.subarray(0, 8).equals(PNG_MAGIC)) throw new Error(`not a PNG: ${buf.subarray(0, 16).toString('hex')}`);
  return { width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
}

/** The format and pixel size of a PNG, JPEG or WEBP file, read from its own headers. */
export function imageInfo(buf) {
  if (buf.subarray(0, 8).equals(PNG_MAGIC)) {
    return { format: 'png', width: buf.readUInt32BE(16), height: buf.readUInt32BE(20) };
  }
  if (buf.subarray(0, 3).equals(JPEG_MAGIC)) {
    let i = 2;
    while (i + 9 < buf.length) {
      if (buf[i] !== 0xff) { i += 1; continue; }
      const marker = buf[i + 1];
      if (marker >= 0xc0 && marker <= 0xcf && ![0xc4, 0xc8, 0xcc].includes(marker)) {
        return { format: 'jpeg', width: buf.readUInt16BE(i + 7), height: buf.readUInt16BE(i + 5) };
      }
      i += 2 + buf.readUInt16BE(i + 2);
    }
    throw new Error('JPEG without a frame header');
  }
  if (buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP') {
    const chunk = buf.toString('latin1', 12, 16);
    if (chunk === 'VP8L') {
      const bits = buf.readUInt32LE(21);
      return { format: 'webp', width: (bits & 0x3fff) + 1, height: ((bits >>> 14) & 0x3fff) + 1 };
    }
    if (chunk === 'VP8X') {
      return { format: 'webp', width: buf.readUIntLE(24, 3) + 1, height: buf.readUIntLE(27, 3) + 1 };
    }
    if (chunk === 'VP8 ') {
      return { format: 'webp', width: buf.readUInt16LE(26) & 0x3fff, height: buf.readUInt16LE(28) & 0x3fff };
    }
    throw new Error(`WEBP with an unknown first chunk ${chunk}`);
  }
  throw new Error(`not a PNG, JPEG or WEBP: ${buf.subarray(0, 16).toString('hex')}`);
}

// ------------------------------------------------------------------------------------------------
// The simulator's introspection endpoints.
// ------------------------------------------------------------------------------------------------

export class Simulator {
  constructor(baseURL) {
    this.baseURL = baseURL;
  }

  async requests() {
    const res = await fetch(`${this.baseURL}/_sim/requests`, { signal: AbortSignal.timeout(30_000) });
    if (res.status !== 200) throw new Error(`GET /_sim/requests -> ${res.status}: ${await res.text()}`);
    const records = await res.json();
    if (!Array.isArray(records)) throw new Error(`/_sim/requests is not a JSON array: ${JSON.stringify(records)}`);
    return records.filter((r) => !String(r.path ?? '').startsWith('/_sim'));
  }

  async stats() {
    const res = await fetch(`${this.baseURL}/_sim/stats`, { signal: AbortSignal.timeout(30_000) });
    if (res.status !== 200) throw new Error(`GET /_sim/stats -> ${res.status}: ${await res.text()}`);
    return res.json();
  }

  /** Runs `fn` and returns `{ result, error, requests }`: what it returned or threw, and the upstream requests it caused. */
  async record(fn) {
    const start = (await this.requests()).length;
    let result;
    let error;
    try {
      result = await fn();
    } catch (e) {
      error = e;
    }
    const after = await this.requests();
    if (after.length < start) throw new Error("the simulator's request log shrank during a test");
    const requests = after.slice(start);
    return { result, error, requests, creates: requests.filter((r) => r.json != null || (r.multipart && r.multipart.length > 0)) };
  }
}

// ------------------------------------------------------------------------------------------------
// Waiting for a state: a condition polled until a deadline, never a fixed sleep.
// ------------------------------------------------------------------------------------------------

/**
 * Polls `condition()` (sync or async) until it returns a truthy value, which is returned; throws
 * `message()` (or `message`) once `timeoutMs` passed.
 */
export async function waitUntil(condition, timeoutMs, message, intervalMs = 20) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await condition();
    if (value) return value;
    if (Date.now() >= deadline) throw new Error(typeof message === 'function' ? message() : message);
    await new Promise((resolve) => setTimeout(resolve, intervalMs));
  }
}
