// imagegate console: shared pieces — constants, the session, DOM helpers, formatting, the API.
//
// The page is served under a strict Content-Security-Policy: nothing here sets a `style`
// attribute or an inline handler (element.style.<property> from script is allowed).


export const KEY_STORAGE = 'imagegate.key';
export const ADMIN_VIEWS = ['keys', 'teams', 'spend', 'usage', 'models'];
export const MEMBER_VIEWS = ['playground', 'me'];
export const VIEW_LABELS = {
  keys: 'Keys', teams: 'Teams', spend: 'Spend', usage: 'Usage', models: 'Models',
  playground: 'Playground', me: 'My key',
};
export const SVG_NS = 'http://www.w3.org/2000/svg';
export const PALETTE = ['#3b6fd8', '#e0792b', '#2f9e6e', '#b6489c', '#c9a227', '#5b5fc7', '#d6455d', '#3a9fb8'];

export const session = { key: null, role: null, view: null };

// ---------------------------------------------------------------------------------------------
// DOM helpers

export const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: h('td', {class: 'x', dataset: {id}}, 'text', child). Never sets `style`. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === 'class') el.className = value;
    else if (name === 'dataset') Object.assign(el.dataset, value);
    else if (name === 'text') el.textContent = value;
    else if (name.startsWith('on')) el.addEventListener(name.slice(2), value);
    else if (name === 'style') throw new Error('inline styles are blocked by the CSP');
    else el.setAttribute(name, value === true ? '' : value);
  }
  append(el, children);
  return el;
}

export function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

export function svg(tag, attrs = {}, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (value === undefined || value === null) continue;
    if (name === 'dataset') Object.assign(el.dataset, value);
    else el.setAttribute(name, value);
  }
  for (const c of children) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** Shows `message` in an error element (hidden when empty). */
export function showError(el, message) {
  if (typeof el === 'string') el = $(el);
  el.textContent = message || '';
  el.hidden = !message;
}

export function setStatus(el, message) {
  if (typeof el === 'string') el = $(el);
  el.textContent = message || '';
}

// ---------------------------------------------------------------------------------------------
// Formatting

/** "$0.10" from "0.1" or 0.1; keeps sub-cent precision ("$0.025"). Works on the decimal string. */
export function usd(value) {
  if (value === null || value === undefined || value === '') return '—';
  let s = typeof value === 'number' ? String(value) : value;
  if (!/^-?\d+(\.\d+)?$/.test(s)) s = String(Number(s));
  const [whole, frac = ''] = s.split('.');
  return `$${whole}.${frac.padEnd(2, '0')}`;
}

export const num = (v) => (v === null || v === undefined ? '—' : String(v));
export const orDash = (v) => (v === null || v === undefined || v === '' ? '—' : v);

export function seconds(v) {
  if (v === null || v === undefined) return '—';
  return v < 10 ? `${v.toFixed(1)} s` : `${Math.round(v)} s`;
}

export function dateTime(unixSeconds) {
  if (!unixSeconds) return '—';
  return new Date(unixSeconds * 1000).toISOString().replace('T', ' ').slice(0, 16);
}

/** Short phrases as a list, one per line (table cells stay narrow). */
export function lines(parts) {
  if (!parts.length) return 'none';
  return h('ul', { class: 'plain lines' }, parts.map((p) => h('li', {}, p)));
}

export function limitsParts(o) {
  const parts = [];
  if (o.requests_per_minute != null) parts.push(`${o.requests_per_minute} req/min`);
  if (o.images_per_minute != null) parts.push(`${o.images_per_minute} img/min`);
  if (o.max_concurrent != null) parts.push(`${o.max_concurrent} concurrent`);
  return parts;
}

export function budgetParts(monthly, total) {
  const parts = [];
  if (monthly != null) parts.push(`${usd(monthly)}/month`);
  if (total != null) parts.push(`${usd(total)} total`);
  return parts;
}

export const limitsText = (o) => limitsParts(o).join(', ') || 'none';

export function spentText(spend) {
  if (!spend) return '—';
  return `${usd(spend.month_spent_usd)} / ${usd(spend.total_spent_usd)}`;
}

// ---------------------------------------------------------------------------------------------
// API

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
  /** "code: message", the way errors are shown everywhere. */
  get display() {
    return this.code ? `${this.code}: ${this.message}` : this.message;
  }
}

/**
 * Calls the gateway with the session's key. Resolves to {status, headers, data} for 2xx answers
 * (data is parsed JSON, or the raw Response when opts.raw); rejects with ApiError otherwise.
 */
export async function api(method, path, body, opts = {}) {
  const headers = { Authorization: `Bearer ${opts.key || session.key}`, ...(opts.headers || {}) };
  const init = { method, headers, cache: 'no-store', credentials: 'omit' };
  if (body !== undefined) {
    headers['Content-Type'] = 'application/json';
    init.body = JSON.stringify(body);
  }
  if (opts.signal) init.signal = opts.signal;
  let res;
  try {
    res = await fetch(path, init);
  } catch (e) {
    if (e.name === 'AbortError') throw e;
    throw new ApiError(0, 'network_error', 'The gateway could not be reached.');
  }
  if (!res.ok) throw await errorFrom(res);
  if (opts.raw) return { status: res.status, headers: res.headers, data: res };
  const text = await res.text();
  return { status: res.status, headers: res.headers, data: text ? JSON.parse(text) : null };
}

/** The OpenAI-style error body ({error: {code, message}}) as an ApiError. */
export async function errorFrom(res) {
  let code = `http_${res.status}`;
  let message = res.statusText || 'Request failed';
  try {
    const body = await res.json();
    if (body && body.error) {
      code = body.error.code || body.error.type || code;
      message = body.error.message || message;
    }
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(res.status, code, message);
}

export const errorText = (e) => (e instanceof ApiError ? e.display : String(e && e.message ? e.message : e));


// ---------------------------------------------------------------------------------------------
// Spend bars (the admin spend view and the member view of a key)

/**
 * One labelled bar: spent (and reserved) against a budget. Without a budget the bar is empty
 * and the text says so.
 */
export function bar(label, spent, reserved, budget) {
  const s = Number(spent) || 0;
  const r = Number(reserved) || 0;
  const track = h('div', { class: budget == null ? 'track no-budget' : 'track' });
  let text;
  if (budget == null) {
    text = `${usd(spent)} · no budget`;
  } else {
    const b = Number(budget);
    const share = b > 0 ? s / b : (s > 0 ? 1 : 0);
    const fill = h('div', { class: share >= 1 ? 'fill over' : share >= 0.8 ? 'fill warn' : 'fill' });
    fill.style.width = `${Math.min(100, share * 100).toFixed(1)}%`;
    const held = h('div', { class: 'fill reserved' });
    held.style.width = `${Math.min(100 - Math.min(100, share * 100), b > 0 ? (r / b) * 100 : 0).toFixed(1)}%`;
    track.append(fill, held);
    track.setAttribute('role', 'meter');
    track.setAttribute('aria-valuemin', '0');
    track.setAttribute('aria-valuemax', String(b));
    track.setAttribute('aria-valuenow', String(s));
    track.setAttribute('aria-label', `${label}: ${usd(spent)} of ${usd(budget)}`);
    const left = Math.max(0, b - s - r);
    const pct = share > 0 && share < 0.01 ? '<1' : String(Math.round(share * 100));
    text = `${usd(spent)} of ${usd(budget)} (${pct}%) · ${usd(left.toFixed(6).replace(/\.?0+$/, ''))} left`;
  }
  if (r > 0) text += ` · ${usd(reserved)} reserved`;
  return h('div', { class: 'bar' }, h('div', { class: 'bar-label' }, h('span', {}, label), h('span', { class: 'bar-text' }, text)), track);
}

/** A key's or team's two bars (month, total), the element carrying data-id. */
export function spendBlock(id, title, spend, monthly, total) {
  const sp = spend || {};
  return h('div', { class: 'spend-item', dataset: { id } },
    h('h3', {}, title),
    bar(`This month (${sp.month || ''})`, sp.month_spent_usd, sp.reserved_usd, monthly),
    bar('Total', sp.total_spent_usd, sp.reserved_usd, total));
}
