// Gateways started as `imagegate serve --config FILE`, each beside a simulator (`imagegate sim`),
// for the Node tests that need settings the demo does not have (the text pass-through, several
// keys, budgets). The Node twin of tests/e2e/python/served.py.
//
// Both processes log to a file; the address they listen on is read from their log line
// `simulator listening addr=…` / `imagegate listening addr=…`.

import { spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';

import { REPO_ROOT, waitUntil } from './harness.mjs';

const START_TIMEOUT_MS = 30_000;
const STOP_TIMEOUT_MS = 15_000;
// The client key of every served gateway (keys need at least 16 characters).
export const CLIENT_KEY = 'sk-test-client-key-0123456789';
export const ADMIN_KEY = 'sk-admin-0123456789abcdef';

export function binaryPath() {
  const raw = process.env.IMAGEGATE_BIN || 'target/debug/imagegate';
  const bin = path.isAbsolute(raw) ? raw : path.join(REPO_ROOT, raw);
  try {
    fs.accessSync(bin, fs.constants.X_OK);
  } catch {
    throw new Error(`gateway binary not found or not executable: ${bin} (build it with \`cargo build\` or set IMAGEGATE_BIN)`);
  }
  return bin;
}

const stripAnsi = (text) => text.replace(/\x1b\[[0-9;]*m/g, '');

/** A child process whose stderr goes to `logPath`. */
class Child {
  constructor(args, logPath) {
    this.args = args;
    this.logPath = logPath;
    this.exited = null;
    const log = fs.openSync(logPath, 'a');
    this.process = spawn(binaryPath(), args, { cwd: REPO_ROOT, stdio: ['ignore', 'ignore', log] });
    fs.closeSync(log); // the child holds its own descriptor
    this.exitPromise = new Promise((resolve) => {
      this.process.on('exit', (code, signal) => {
        this.exited = { code, signal };
        resolve(this.exited);
      });
    });
  }

  log() {
    try {
      return stripAnsi(fs.readFileSync(this.logPath, 'utf8'));
    } catch (e) {
      return `<could not read ${this.logPath}: ${e.message}>`;
    }
  }

  logTail(lines = 60) {
    return this.log().split('\n').slice(-lines).join('\n') || '<empty>';
  }

  /** Waits for `{what} listening addr=HOST:PORT` in the log and returns the address. */
  async listeningAddr(what) {
    const pattern = new RegExp(`${what} listening addr=(\\S+)`);
    return waitUntil(
      () => {
        if (this.exited !== null) {
          throw new Error(
            `imagegate ${this.args.join(' ')} exited (${JSON.stringify(this.exited)}) before listening\n` +
              `--- stderr (${this.logPath}) ---\n${this.logTail()}`,
          );
        }
        return this.log().match(pattern)?.[1];
      },
      START_TIMEOUT_MS,
      () => `no \`${what} listening\` line in ${this.logPath}:\n${this.logTail()}`,
    );
  }

  /** SIGTERM, then waits for the exit; throws if it had died before or does not exit in time. */
  async stop() {
    if (this.exited !== null) {
      const how = JSON.stringify(this.exited);
      throw new Error(`imagegate ${this.args[0]} exited during the tests (${how})\n--- stderr ---\n${this.logTail()}`);
    }
    this.process.kill('SIGTERM');
    let timer;
    const timeout = new Promise((resolve) => {
      timer = setTimeout(() => resolve('timeout'), STOP_TIMEOUT_MS);
    });
    const outcome = await Promise.race([this.exitPromise, timeout]);
    clearTimeout(timer);
    if (outcome === 'timeout') {
      this.process.kill('SIGKILL');
      await this.exitPromise;
      const within = `${STOP_TIMEOUT_MS / 1000}s`;
      throw new Error(`imagegate ${this.args[0]} did not exit within ${within} of SIGTERM\n--- stderr ---\n${this.logTail()}`);
    }
  }
}

/** `imagegate sim` on an ephemeral port: `{ addr, apiKey, child, stop() }`. */
export async function startSim(dir, timeScale = 0.01) {
  const apiKey = `sk-sim-${randomUUID().replace(/-/g, '')}`;
  const child = new Child(
    ['sim', '--listen', '127.0.0.1:0', '--api-key', apiKey, '--time-scale', String(timeScale)],
    path.join(dir, 'imagegate-sim.stderr.log'),
  );
  const addr = await child.listeningAddr('simulator');
  return { addr, apiKey, child, stop: () => child.stop() };
}

/**
 * `imagegate serve --config FILE` on the TOML `config`, written to `dir/name.toml`:
 * `{ addr, rootURL, baseURL (…/v1), logPath, child, stop() }`.
 */
export async function startServed(dir, config, name = 'imagegate') {
  const configPath = path.join(dir, `${name}.toml`);
  fs.writeFileSync(configPath, config);
  const logPath = path.join(dir, `${name}-serve.stderr.log`);
  const child = new Child(['serve', '--config', configPath], logPath);
  const addr = await child.listeningAddr('imagegate');
  return {
    addr,
    rootURL: `http://${addr}`,
    baseURL: `http://${addr}/v1`,
    logPath,
    child,
    stop: () => child.stop(),
  };
}

// ------------------------------------------------------------------------------------------------
// The configuration.
// ------------------------------------------------------------------------------------------------

/** A TOML value: numbers and booleans bare, arrays, anything else a quoted string. */
function tomlValue(value) {
  if (Array.isArray(value)) return `[${value.map(tomlValue).join(', ')}]`;
  if (typeof value === 'boolean' || typeof value === 'number') return String(value);
  return JSON.stringify(String(value));
}

function tomlTable(header, settings) {
  return `\n${header}\n${Object.entries(settings)
    .map(([k, v]) => `${k} = ${tomlValue(v)}\n`)
    .join('')}`;
}

/**
 * A serve configuration (TOML) pointed at `sim`, its data under `dataDir`, with the client key
 * `CLIENT_KEY` (id `t`) and the admin key `ADMIN_KEY`. `keys` adds `[[keys]]` entries (objects of
 * settings); `tables` adds sections by name, e.g. `{ passthrough: {...}, 'passthrough.prices."gpt-5.5"': {...} }`.
 */
export function gatewayConfig({ sim, dataDir, keys = [], tables = {} }) {
  let text = tomlTable('[server]', { listen: '127.0.0.1:0', drain_timeout: '1s' });
  text += tomlTable('[upstream]', { base_url: `http://${sim.addr}`, api_key: sim.apiKey });
  text += tomlTable('[results]', { allowed_hosts: [sim.addr], timeout: '10s' });
  text += tomlTable('[urls]', { allow_http: true, allow_loopback: true });
  text += tomlTable('[data]', { dir: dataDir });
  text += tomlTable('[admin]', { key: ADMIN_KEY });
  for (const key of [{ id: 't', key: CLIENT_KEY }, ...keys]) text += tomlTable('[[keys]]', key);
  for (const [name, settings] of Object.entries(tables)) text += tomlTable(`[${name}]`, settings);
  return text;
}
