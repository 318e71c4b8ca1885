// imagegate console: one module, no dependencies.
//
// The page is served under a strict Content-Security-Policy, so this file never writes inline
// styles as attributes or inline handlers: listeners are attached here, and the only style set
// from script is element.style.<property> (bar widths, legend swatches).


const KEY_STORAGE = 'imagegate.key';
const ADMIN_VIEWS = ['keys', 'teams', 'spend', 'usage', 'models'];
const MEMBER_VIEWS = ['playground', 'me'];
const VIEW_LABELS = {
  keys: 'Keys', teams: 'Teams', spend: 'Spend', usage: 'Usage', models: 'Models',
  playground: 'Playground', me: 'My key',
};
const SVG_NS = 'http://www.w3.org/2000/svg';
const PALETTE = ['#3b6fd8', '#e0792b', '#2f9e6e', '#b6489c', '#c9a227', '#5b5fc7', '#d6455d', '#3a9fb8'];

const session = { key: null, role: null, view: null };

// ---------------------------------------------------------------------------------------------
// DOM helpers

const $ = (sel, root = document) => root.querySelector(sel);

/** Builds an element: h('td', {class: 'x', dataset: {id}}, 'text', child). Never sets `style`. */
function h(tag, attrs = {}, ...children) {
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

function append(el, children) {
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

function svg(tag, attrs = {}, ...children) {
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
function showError(el, message) {
  if (typeof el === 'string') el = $(el);
  el.textContent = message || '';
  el.hidden = !message;
}

function setStatus(el, message) {
  if (typeof el === 'string') el = $(el);
  el.textContent = message || '';
}

// ---------------------------------------------------------------------------------------------
// Formatting

/** "$0.10" from "0.1" or 0.1; keeps sub-cent precision ("$0.025"). Works on the decimal string. */
function usd(value) {
  if (value === null || value === undefined || value === '') return '—';
  let s = typeof value === 'number' ? String(value) : value;
  if (!/^-?\d+(\.\d+)?$/.test(s)) s = String(Number(s));
  const [whole, frac = ''] = s.split('.');
  return `$${whole}.${frac.padEnd(2, '0')}`;
}

const num = (v) => (v === null || v === undefined ? '—' : String(v));
const orDash = (v) => (v === null || v === undefined || v === '' ? '—' : v);

function seconds(v) {
  if (v === null || v === undefined) return '—';
  return v < 10 ? `${v.toFixed(1)} s` : `${Math.round(v)} s`;
}

function dateTime(unixSeconds) {
  if (!unixSeconds) return '—';
  return new Date(unixSeconds * 1000).toISOString().replace('T', ' ').slice(0, 16);
}

/** Short phrases as a list, one per line (table cells stay narrow). */
function lines(parts) {
  if (!parts.length) return 'none';
  return h('ul', { class: 'plain lines' }, parts.map((p) => h('li', {}, p)));
}

function limitsParts(o) {
  const parts = [];
  if (o.requests_per_minute != null) parts.push(`${o.requests_per_minute} req/min`);
  if (o.images_per_minute != null) parts.push(`${o.images_per_minute} img/min`);
  if (o.max_concurrent != null) parts.push(`${o.max_concurrent} concurrent`);
  return parts;
}

function budgetParts(monthly, total) {
  const parts = [];
  if (monthly != null) parts.push(`${usd(monthly)}/month`);
  if (total != null) parts.push(`${usd(total)} total`);
  return parts;
}

const limitsText = (o) => limitsParts(o).join(', ') || 'none';

function spentText(spend) {
  if (!spend) return '—';
  return `${usd(spend.month_spent_usd)} / ${usd(spend.total_spent_usd)}`;
}

// ---------------------------------------------------------------------------------------------
// API

class ApiError extends Error {
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
async function api(method, path, body, opts = {}) {
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
async function errorFrom(res) {
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

const errorText = (e) => (e instanceof ApiError ? e.display : String(e && e.message ? e.message : e));

// ---------------------------------------------------------------------------------------------
// Sign-in, roles and navigation

/** Finds the key's role: the admin API answers only the admin key; /v1/me any API key. */
async function detectRole(key) {
  try {
    await api('GET', '/admin/spend', undefined, { key });
    return 'admin';
  } catch (e) {
    if (e.status === 0) throw e;
  }
  await api('GET', '/v1/me', undefined, { key }); // throws the member error when refused
  return 'member';
}

async function signIn(event) {
  event.preventDefault();
  const input = $('#signin-key');
  const key = input.value.trim();
  showError('#signin-error', '');
  if (!key) {
    showError('#signin-error', 'Enter a key.');
    input.focus();
    return;
  }
  $('#signin-submit').disabled = true;
  try {
    const role = await detectRole(key);
    sessionStorage.setItem(KEY_STORAGE, key);
    input.value = '';
    start(key, role);
  } catch (e) {
    showError('#signin-error', e.message || errorText(e));
    input.focus();
  } finally {
    $('#signin-submit').disabled = false;
  }
}

function signOut() {
  sessionStorage.removeItem(KEY_STORAGE);
  session.key = null;
  session.role = null;
  stopPolling();
  clearSession();
  $('#nav').hidden = true;
  $('#nav').replaceChildren();
  $('#signout').hidden = true;
  $('#whoami').hidden = true;
  history.replaceState(null, '', location.pathname);
  showView('signin');
  $('#signin-key').focus();
}

/** Forgets what the last session showed: the one-time secret, results, loaded lists. */
function clearSession() {
  dismissSecret();
  modelsLoaded = false;
  uploads.images = [];
  uploads.mask = null;
  for (const form of document.querySelectorAll('form')) form.reset();
  for (const id of ['#pg-results', '#me-limits', '#me-budget', '#me-usage', '#spend-keys', '#spend-teams']) $(id).replaceChildren();
  for (const id of ['#pg-cost', '#pg-served', '#pg-time', '#pg-quote']) $(id).textContent = '—';
  for (const el of document.querySelectorAll('.error')) showError(el, '');
  for (const el of document.querySelectorAll('.status')) setStatus(el, '');
}

function start(key, role) {
  session.key = key;
  session.role = role;
  const views = role === 'admin' ? ADMIN_VIEWS : MEMBER_VIEWS;
  const nav = $('#nav');
  nav.replaceChildren(...views.map((v) =>
    h('button', { type: 'button', dataset: { view: v }, onclick: () => go(v) }, VIEW_LABELS[v])));
  nav.hidden = false;
  $('#signout').hidden = false;
  const who = $('#whoami');
  who.textContent = role === 'admin' ? 'Admin' : 'Member';
  who.hidden = false;
  const wanted = location.hash.slice(1);
  go(views.includes(wanted) ? wanted : views[0]);
}

/** Switches to a view (kept in the URL fragment so reload and back work). */
function go(view) {
  if (location.hash.slice(1) !== view) history.pushState(null, '', `#${view}`);
  showView(view);
  const loader = LOADERS[view];
  if (loader) loader();
}

function showView(view) {
  session.view = view;
  for (const s of document.querySelectorAll('section.view')) s.hidden = s.id !== `view-${view}`;
  for (const b of document.querySelectorAll('#nav [data-view]')) {
    if (b.dataset.view === view) b.setAttribute('aria-current', 'page');
    else b.removeAttribute('aria-current');
  }
  document.title = `${VIEW_LABELS[view] || 'Sign in'} · imagegate console`;
}

window.addEventListener('popstate', () => {
  if (!session.role) return;
  const views = session.role === 'admin' ? ADMIN_VIEWS : MEMBER_VIEWS;
  const wanted = location.hash.slice(1);
  if (views.includes(wanted)) {
    showView(wanted);
    LOADERS[wanted]();
  }
});

// ---------------------------------------------------------------------------------------------
// Form fields shared by keys and teams. Each entry: DOM id suffix, JSON property, label, kind.
// The create forms use ids `key-<suffix>` / `team-<suffix>`, the edit dialogs `key-edit-<suffix>`.

const FIELDS = {
  id: { prop: 'id', label: 'ID', kind: 'text', hint: 'optional, generated when empty' },
  name: { prop: 'name', label: 'Name', kind: 'text' },
  team: { prop: 'team', label: 'Team', kind: 'text', list: 'team-ids' },
  models: { prop: 'models', label: 'Models (comma-separated)', kind: 'list', hint: 'empty: every model' },
  rpm: { prop: 'requests_per_minute', label: 'Requests per minute', kind: 'int' },
  ipm: { prop: 'images_per_minute', label: 'Images per minute', kind: 'int' },
  concurrent: { prop: 'max_concurrent', label: 'Max concurrent', kind: 'int' },
  'monthly-budget': { prop: 'monthly_budget_usd', label: 'Monthly budget (USD)', kind: 'money' },
  'total-budget': { prop: 'total_budget_usd', label: 'Total budget (USD)', kind: 'money' },
  expires: { prop: 'expires_at', label: 'Expires at (RFC 3339)', kind: 'time', hint: 'e.g. 2027-01-31T00:00:00Z' },
  'webhook-url': { prop: 'webhook_url', label: 'Webhook URL', kind: 'url' },
};
const KEY_FIELDS = ['id', 'name', 'team', 'models', 'rpm', 'ipm', 'concurrent', 'monthly-budget',
  'total-budget', 'expires', 'webhook-url'];
const TEAM_FIELDS = ['id', 'name', 'rpm', 'ipm', 'concurrent', 'monthly-budget', 'total-budget'];

function fieldInput(prefix, suffix) {
  const f = FIELDS[suffix];
  const id = `${prefix}-${suffix}`;
  const attrs = { id, name: f.prop, autocomplete: 'off' };
  if (f.kind === 'int') Object.assign(attrs, { type: 'number', min: '0', step: '1', inputmode: 'numeric' });
  else if (f.kind === 'money') Object.assign(attrs, { type: 'number', min: '0', step: 'any', inputmode: 'decimal' });
  else if (f.kind === 'url') attrs.type = 'url';
  else attrs.type = 'text';
  if (f.list) attrs.list = f.list;
  if (f.hint) attrs.placeholder = f.hint;
  return h('div', { class: 'field' }, h('label', { for: id }, f.label), h('input', attrs));
}

function buildFields(container, prefix, suffixes) {
  container.replaceChildren(...suffixes.map((s) => fieldInput(prefix, s)));
}

/** The form value of one field as JSON: null when empty; throws a readable message when invalid. */
function fieldValue(prefix, suffix) {
  const f = FIELDS[suffix];
  const raw = $(`#${prefix}-${suffix}`).value.trim();
  if (raw === '') return null;
  switch (f.kind) {
    case 'int': {
      const n = Number(raw);
      if (!Number.isInteger(n) || n < 0) throw new Error(`${f.label}: a whole number, 0 or more.`);
      return n;
    }
    case 'money': {
      const n = Number(raw);
      if (!Number.isFinite(n) || n < 0) throw new Error(`${f.label}: an amount in USD, 0 or more.`);
      return n;
    }
    case 'list':
      return raw.split(',').map((s) => s.trim()).filter(Boolean);
    case 'time':
      // A bare date means midnight UTC; anything else goes to the gateway as typed.
      return /^\d{4}-\d{2}-\d{2}$/.test(raw) ? `${raw}T00:00:00Z` : raw;
    default:
      return raw;
  }
}

/** The value a stored record shows in a field (the inverse of fieldValue). */
function fieldText(suffix, record) {
  const v = record[FIELDS[suffix].prop];
  if (v === null || v === undefined) return '';
  return Array.isArray(v) ? v.join(', ') : String(v);
}

/** The JSON body of a create form: only the filled fields. */
function createBody(prefix, suffixes) {
  const body = {};
  for (const s of suffixes) {
    const v = fieldValue(prefix, s);
    if (v !== null) body[FIELDS[s].prop] = v;
  }
  return body;
}

/** The PATCH body of an edit form: the changed fields; an emptied one becomes null (clears it). */
function patchBody(prefix, suffixes, record) {
  const body = {};
  for (const s of suffixes) {
    if ($(`#${prefix}-${s}`).value.trim() === fieldText(s, record)) continue;
    body[FIELDS[s].prop] = fieldValue(prefix, s);
  }
  return body;
}

function actionButton(action, label, detail) {
  return h('button', { type: 'button', class: action === 'delete' ? 'small danger' : 'small', dataset: { action }, 'aria-label': `${label} ${detail}` }, label);
}

// ---------------------------------------------------------------------------------------------
// Admin: keys

let keysById = new Map();

async function loadKeys() {
  showError('#keys-error', '');
  try {
    const [{ data }] = await Promise.all([api('GET', '/admin/keys'), refreshTeamList()]);
    keysById = new Map(data.keys.map((k) => [k.id, k]));
    renderKeys(data.keys);
  } catch (e) {
    showError('#keys-error', errorText(e));
  }
}

function renderKeys(keys) {
  const tbody = $('#keys-table tbody');
  if (!keys.length) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: '10', class: 'muted' }, 'No keys yet.')));
    return;
  }
  tbody.replaceChildren(...keys.map(keyRow));
}

function keyRow(k) {
  const enabled = k.enabled !== false;
  return h('tr', { dataset: { keyId: k.id } },
    h('th', { scope: 'row' }, h('code', {}, k.id),
      k.source === 'config' ? h('span', { class: 'tag', title: 'Defined in the config file: change it there' }, 'config') : null),
    h('td', {}, orDash(k.name)),
    h('td', {}, orDash(k.team)),
    h('td', {}, k.models && k.models.length ? lines(k.models) : 'all'),
    h('td', {}, lines(limitsParts(k))),
    h('td', {}, lines(budgetParts(k.monthly_budget_usd, k.total_budget_usd))),
    h('td', {}, spentText(k.spend)),
    h('td', { title: k.expires_at || '' }, k.expires_at ? k.expires_at.slice(0, 10) : '—'),
    h('td', { class: `key-status ${enabled ? 'is-ok' : 'is-off'}` }, enabled ? 'enabled' : 'disabled'),
    h('td', { class: 'row-actions' },
      actionButton('edit', 'Edit', k.id),
      enabled ? actionButton('disable', 'Disable', k.id) : actionButton('enable', 'Enable', k.id),
      actionButton('delete', 'Delete', k.id)));
}

async function createKey(event) {
  event.preventDefault();
  showError('#keys-error', '');
  let body;
  try {
    body = createBody('key', KEY_FIELDS);
  } catch (e) {
    showError('#keys-error', e.message);
    return;
  }
  const submit = $('#key-create-submit');
  submit.disabled = true;
  try {
    const { data } = await api('POST', '/admin/keys', body);
    showSecret(data);
    $('#key-create-form').reset();
    setStatus('#keys-status', `Key ${data.id} created.`);
    await loadKeys();
  } catch (e) {
    showError('#keys-error', errorText(e));
  } finally {
    submit.disabled = false;
  }
}

/** The secret is in the create answer only: show it once, with a copy button. */
function showSecret(created) {
  $('#key-secret').textContent = created.secret || '';
  $('#key-secret-copied').hidden = true;
  const hook = created.webhook_secret;
  $('#key-webhook-secret').textContent = hook || '';
  $('#key-webhook-secret-row').hidden = !hook;
  $('#key-secret-panel').hidden = false;
  $('#key-secret-copy').focus();
}

async function copySecret() {
  const text = $('#key-secret').textContent;
  const note = $('#key-secret-copied');
  let copied = false;
  try {
    await navigator.clipboard.writeText(text);
    copied = true;
  } catch (_) {
    // No clipboard permission (or no secure context): select the text instead.
    selectText($('#key-secret'));
    try { copied = document.execCommand('copy'); } catch (_) { copied = false; }
  }
  note.textContent = copied ? 'Copied' : 'Selected: press Ctrl+C (⌘C) to copy';
  note.hidden = false;
}

function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

function dismissSecret() {
  $('#key-secret-panel').hidden = true;
  $('#key-secret').textContent = '';
  $('#key-webhook-secret').textContent = '';
}

/** One listener for every row button (rows are re-rendered after each change). */
async function onKeyAction(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const id = button.closest('tr').dataset.keyId;
  const action = button.dataset.action;
  showError('#keys-error', '');
  if (action === 'edit') return openKeyEdit(id);
  const path = `/admin/keys/${encodeURIComponent(id)}`;
  try {
    if (action === 'delete') {
      if (!window.confirm(`Delete key ${id}? Requests with it will be refused. Its usage history stays.`)) return;
      await api('DELETE', path);
      setStatus('#keys-status', `Key ${id} deleted.`);
    } else {
      await api('POST', `${path}/${action}`);
      setStatus('#keys-status', `Key ${id} ${action}d.`);
    }
    await loadKeys();
  } catch (e) {
    showError('#keys-error', errorText(e));
  }
}

let editingKey = null;

function openKeyEdit(id) {
  editingKey = keysById.get(id);
  if (!editingKey) return;
  $('#key-edit-title').textContent = `Edit key ${id}`;
  for (const s of KEY_FIELDS.slice(1)) $(`#key-edit-${s}`).value = fieldText(s, editingKey);
  showError('#key-edit-error', '');
  $('#key-edit-dialog').showModal();
  $('#key-edit-name').focus();
}

async function saveKeyEdit(event) {
  event.preventDefault();
  showError('#key-edit-error', '');
  let body;
  try {
    body = patchBody('key-edit', KEY_FIELDS.slice(1), editingKey);
  } catch (e) {
    showError('#key-edit-error', e.message);
    return;
  }
  if (!Object.keys(body).length) {
    $('#key-edit-dialog').close();
    return;
  }
  try {
    await api('PATCH', `/admin/keys/${encodeURIComponent(editingKey.id)}`, body);
    $('#key-edit-dialog').close();
    setStatus('#keys-status', `Key ${editingKey.id} saved.`);
    await loadKeys();
  } catch (e) {
    showError('#key-edit-error', errorText(e));
    showError('#keys-error', errorText(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Admin: teams

let teamsById = new Map();

/** Loads the teams (also feeding the team suggestions of the key forms). */
async function refreshTeamList() {
  const { data } = await api('GET', '/admin/teams');
  teamsById = new Map(data.teams.map((t) => [t.id, t]));
  $('#team-ids').replaceChildren(...data.teams.map((t) => h('option', { value: t.id }, t.name || t.id)));
  return data.teams;
}

async function loadTeams() {
  showError('#teams-error', '');
  try {
    renderTeams(await refreshTeamList());
  } catch (e) {
    showError('#teams-error', errorText(e));
  }
}

function renderTeams(teams) {
  const tbody = $('#teams-table tbody');
  if (!teams.length) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No teams yet.')));
    return;
  }
  tbody.replaceChildren(...teams.map((t) => h('tr', { dataset: { teamId: t.id } },
    h('th', { scope: 'row' }, h('code', {}, t.id),
      t.source === 'config' ? h('span', { class: 'tag', title: 'Defined in the config file: change it there' }, 'config') : null),
    h('td', {}, orDash(t.name)),
    h('td', {}, lines(limitsParts(t))),
    h('td', {}, lines(budgetParts(t.monthly_budget_usd, t.total_budget_usd))),
    h('td', {}, spentText(t.spend)),
    h('td', { class: 'row-actions' }, actionButton('edit', 'Edit', t.id), actionButton('delete', 'Delete', t.id)))));
}

async function createTeam(event) {
  event.preventDefault();
  showError('#teams-error', '');
  let body;
  try {
    body = createBody('team', TEAM_FIELDS);
  } catch (e) {
    showError('#teams-error', e.message);
    return;
  }
  if (!body.id) {
    showError('#teams-error', 'A team needs an ID.');
    $('#team-id').focus();
    return;
  }
  try {
    await api('POST', '/admin/teams', body);
    $('#team-create-form').reset();
    setStatus('#teams-status', `Team ${body.id} created.`);
    await loadTeams();
  } catch (e) {
    showError('#teams-error', errorText(e));
  }
}

async function onTeamAction(event) {
  const button = event.target.closest('button[data-action]');
  if (!button) return;
  const id = button.closest('tr').dataset.teamId;
  showError('#teams-error', '');
  if (button.dataset.action === 'edit') return openTeamEdit(id);
  if (!window.confirm(`Delete team ${id}?`)) return;
  const path = `/admin/teams/${encodeURIComponent(id)}`;
  try {
    try {
      await api('DELETE', path);
    } catch (e) {
      // 409 while keys name the team: say so, and offer to delete anyway.
      if (e.status !== 409 || !/force=true/.test(e.message)) throw e;
      if (!window.confirm(`${e.message}\n\nDelete team ${id} anyway?`)) {
        showError('#teams-error', errorText(e));
        return;
      }
      await api('DELETE', `${path}?force=true`);
    }
    setStatus('#teams-status', `Team ${id} deleted.`);
    await loadTeams();
  } catch (e) {
    showError('#teams-error', errorText(e));
  }
}

let editingTeam = null;

function openTeamEdit(id) {
  editingTeam = teamsById.get(id);
  if (!editingTeam) return;
  $('#team-edit-title').textContent = `Edit team ${id}`;
  for (const s of TEAM_FIELDS.slice(1)) $(`#team-edit-${s}`).value = fieldText(s, editingTeam);
  showError('#team-edit-error', '');
  $('#team-edit-dialog').showModal();
  $('#team-edit-name').focus();
}

async function saveTeamEdit(event) {
  event.preventDefault();
  showError('#team-edit-error', '');
  let body;
  try {
    body = patchBody('team-edit', TEAM_FIELDS.slice(1), editingTeam);
  } catch (e) {
    showError('#team-edit-error', e.message);
    return;
  }
  if (!Object.keys(body).length) {
    $('#team-edit-dialog').close();
    return;
  }
  try {
    await api('PATCH', `/admin/teams/${encodeURIComponent(editingTeam.id)}`, body);
    $('#team-edit-dialog').close();
    setStatus('#teams-status', `Team ${editingTeam.id} saved.`);
    await loadTeams();
  } catch (e) {
    showError('#team-edit-error', errorText(e));
    showError('#teams-error', errorText(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Spend bars (admin spend view and the member's own budget)

/**
 * One labelled bar: spent (and reserved) against a budget. Without a budget the bar is empty
 * and the text says so.
 */
function bar(label, spent, reserved, budget) {
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
function spendBlock(id, title, spend, monthly, total) {
  const sp = spend || {};
  return h('div', { class: 'spend-item', dataset: { id } },
    h('h3', {}, title),
    bar(`This month (${sp.month || ''})`, sp.month_spent_usd, sp.reserved_usd, monthly),
    bar('Total', sp.total_spent_usd, sp.reserved_usd, total));
}

async function loadSpend() {
  showError('#spend-error', '');
  try {
    const { data } = await api('GET', '/admin/spend');
    const keys = data.keys.map((k) => spendBlock(k.id, k.team ? `${k.id} · team ${k.team}` : k.id,
      k.spend, k.monthly_budget_usd, k.total_budget_usd));
    const teams = data.teams.map((t) => spendBlock(t.id, t.id, t.spend, t.monthly_budget_usd, t.total_budget_usd));
    $('#spend-keys').replaceChildren(...(keys.length ? keys : [h('p', { class: 'muted' }, 'No keys.')]));
    $('#spend-teams').replaceChildren(...(teams.length ? teams : [h('p', { class: 'muted' }, 'No teams.')]));
  } catch (e) {
    showError('#spend-error', errorText(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Admin: usage chart

function usageQuery(format) {
  const group = $('#usage-group').value;
  const q = new URLSearchParams({ group_by: `day,${group}` });
  if ($('#usage-from').value) q.set('from', $('#usage-from').value);
  if ($('#usage-to').value) q.set('to', $('#usage-to').value);
  if (format) q.set('format', format);
  return `/admin/usage?${q}`;
}

async function loadUsage(event) {
  if (event) event.preventDefault();
  showError('#usage-error', '');
  const group = $('#usage-group').value;
  try {
    const { data } = await api('GET', usageQuery());
    $('#usage-total').textContent = usd(data.total_cost_usd);
    drawUsageChart(data.rows, group);
    renderUsageTable(data.rows, group);
  } catch (e) {
    showError('#usage-error', errorText(e));
  }
}

const seriesLabel = (group, value) => (value ? value : group === 'team' ? '(no team)' : '(none)');

/**
 * Grouped bars: one rect per day and series, height = cost (left axis); a dot per day and series
 * for the images (right axis). Every rect carries data-day/-series/-cost/-images.
 */
function drawUsageChart(rows, group) {
  const chart = $('#usage-chart');
  const title = $('#usage-chart-title');
  chart.replaceChildren(title);
  const days = [...new Set(rows.map((r) => r.day))].sort();
  const series = [...new Set(rows.map((r) => r[group] ?? ''))].sort();
  const colour = (s) => PALETTE[series.indexOf(s) % PALETTE.length];
  renderLegend(series, group, colour);

  // As wide as its box (at least wide enough for every bar: then the box scrolls sideways).
  const room = chart.parentElement.clientWidth || 560;
  const W = Math.max(room, days.length * Math.max(48, series.length * 18 + 20) + 100);
  const H = 260;
  const pad = { l: 56, r: 44, t: 12, b: 40 };
  chart.setAttribute('viewBox', `0 0 ${W} ${H}`);
  chart.setAttribute('width', String(W));
  chart.setAttribute('height', String(H));
  if (!rows.length) {
    chart.append(svg('text', { x: W / 2, y: H / 2, 'text-anchor': 'middle', class: 'axis-label' }, 'No usage in this period.'));
    return;
  }
  const maxCost = niceMax(Math.max(...rows.map((r) => Number(r.cost_usd) || 0)));
  const maxImages = niceMax(Math.max(...rows.map((r) => r.images || 0)));
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const y = (v, max) => pad.t + plotH - (max > 0 ? (v / max) * plotH : 0);

  drawAxes(chart, { W, H, pad, plotH, maxCost, maxImages, y });
  const slot = plotW / days.length;
  const barW = Math.max(4, Math.min(28, (slot - 12) / series.length));
  days.forEach((day, i) => {
    const x0 = pad.l + i * slot + (slot - barW * series.length) / 2;
    chart.append(svg('text', { x: pad.l + i * slot + slot / 2, y: H - pad.b + 16, 'text-anchor': 'middle', class: 'axis-label' }, day.slice(5)));
    series.forEach((s, j) => {
      const row = rows.find((r) => r.day === day && (r[group] ?? '') === s);
      if (!row) return;
      const cost = Number(row.cost_usd) || 0;
      const top = y(cost, maxCost);
      const x = x0 + j * barW;
      const label = `${day} · ${seriesLabel(group, s)}: ${usd(row.cost_usd)}, ${row.images} image${row.images === 1 ? '' : 's'}`;
      chart.append(svg('rect', {
        x: x.toFixed(1), y: top.toFixed(1), width: (barW - 2).toFixed(1),
        height: Math.max(cost > 0 ? 1 : 0, pad.t + plotH - top).toFixed(1), fill: colour(s),
        dataset: { day, series: s, cost: row.cost_usd, images: String(row.images) },
      }, svg('title', {}, label)));
      chart.append(svg('circle', {
        cx: (x + (barW - 2) / 2).toFixed(1), cy: y(row.images || 0, maxImages).toFixed(1), r: 3.5,
        fill: colour(s), class: 'images-dot',
      }, svg('title', {}, label)));
    });
  });
}

/** Gridlines and both axes' labels (cost left, images right). */
function drawAxes(chart, { W, H, pad, maxCost, maxImages, y }) {
  for (let k = 0; k <= 4; k++) {
    const gy = y((maxCost * k) / 4, maxCost);
    chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: gy, y2: gy, class: 'grid' }));
    chart.append(svg('text', { x: pad.l - 6, y: gy + 4, 'text-anchor': 'end', class: 'axis-label' }, usdShort((maxCost * k) / 4)));
    chart.append(svg('text', { x: W - pad.r + 6, y: gy + 4, 'text-anchor': 'start', class: 'axis-label' }, String(Math.round((maxImages * k) / 4))));
  }
  chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b, class: 'axis' }));
}

/** A round axis maximum at or above v (1, 2, 2.5, 5 × 10^k). */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

function usdShort(v) {
  if (v === 0) return '$0';
  if (v < 0.01) return `$${v.toFixed(4).replace(/0+$/, '')}`;
  if (v < 1) return `$${v.toFixed(3).replace(/0+$/, '').replace(/\.$/, '')}`;
  return `$${v.toFixed(v < 10 ? 2 : 0)}`;
}

function renderLegend(series, group, colour) {
  $('#usage-legend').replaceChildren(...series.map((s) => {
    const swatch = h('span', { class: 'swatch', 'aria-hidden': 'true' });
    swatch.style.background = colour(s);
    return h('span', { class: 'legend-item' }, swatch, seriesLabel(group, s));
  }));
}

function renderUsageTable(rows, group) {
  $('#usage-series-head').textContent = group === 'team' ? 'Team' : 'Model';
  const tbody = $('#usage-table tbody');
  if (!rows.length) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: '6', class: 'muted' }, 'No usage in this period.')));
    return;
  }
  tbody.replaceChildren(...rows.map((r) => h('tr', {},
    h('td', {}, r.day), h('td', {}, seriesLabel(group, r[group])), h('td', {}, num(r.requests)),
    h('td', {}, num(r.succeeded)), h('td', {}, num(r.images)), h('td', { class: 'num' }, usd(r.cost_usd)))));
}

/** The CSV needs the bearer header, so it is fetched here and saved through a Blob URL. */
async function exportUsageCsv() {
  showError('#usage-error', '');
  try {
    const { data: res } = await api('GET', usageQuery('csv'), undefined, { raw: true });
    const blob = await res.blob();
    const url = URL.createObjectURL(blob);
    const a = h('a', { href: url, download: `imagegate-usage-day-${$('#usage-group').value}.csv`, hidden: true });
    document.body.append(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  } catch (e) {
    showError('#usage-error', errorText(e));
  }
}

// ---------------------------------------------------------------------------------------------
// Admin: models and the upstream key pool

async function loadModels() {
  showError('#models-error', '');
  try {
    const [ups, pool] = await Promise.all([api('GET', '/admin/upstreams'), api('GET', '/admin/upstream-keys')]);
    renderUpstreams(ups.data.data || []);
    renderPool(pool.data.keys || []);
  } catch (e) {
    showError('#models-error', errorText(e));
  }
}

function renderUpstreams(models) {
  $('#models-table tbody').replaceChildren(...models.map((m) => h('tr', { dataset: { model: m.model } },
    h('th', { scope: 'row' }, h('code', {}, m.model), m.enabled === false ? h('span', { class: 'tag' }, 'disabled') : null),
    h('td', { class: `circuit circuit-${m.circuit}` }, m.circuit, m.open_for_s ? ` (${Math.ceil(m.open_for_s)} s)` : ''),
    h('td', { class: 'num' }, m.error_ratio == null ? '—' : `${(m.error_ratio * 100).toFixed(1)}%`,
      m.requests_in_window ? h('span', { class: 'muted small' }, ` of ${m.requests_in_window}`) : ''),
    h('td', {}, latencyList(m.latency || [])),
    h('td', {}, priceText(m.price_usd)),
    h('td', {}, m.capabilities ? m.capabilities.mode : '—'),
    h('td', { class: 'small' }, orDash(typeof m.last_error === 'object' && m.last_error ? JSON.stringify(m.last_error) : m.last_error)))));
}

function latencyList(entries) {
  const withData = entries.filter((l) => l.samples);
  if (!withData.length) return h('span', { class: 'muted' }, 'no samples yet');
  return h('ul', { class: 'plain' }, withData.map((l) => h('li', {},
    `${l.quality}: ${seconds(l.p50_s)} / ${seconds(l.p90_s)} / ${seconds(l.p99_s)}`,
    h('span', { class: 'muted small' }, ` (${l.samples})`))));
}

/** `price_usd` may be a single amount or a table (quality → amount, or nested): show what is there. */
function priceText(price) {
  if (price === null || price === undefined) return '—';
  if (typeof price !== 'object') return usd(price);
  return h('ul', { class: 'plain small' }, Object.entries(price).map(([k, v]) =>
    h('li', {}, `${k}: `, typeof v === 'object' && v !== null ? priceText(v) : usd(v))));
}

function renderPool(keys) {
  $('#upstream-keys-table tbody').replaceChildren(...keys.map((k) => h('tr', { dataset: { upstreamKey: k.id } },
    h('th', { scope: 'row' }, h('code', {}, k.id)),
    h('td', { class: `pool-${k.state}` }, k.state),
    h('td', { class: 'num' }, num(k.weight)),
    h('td', { class: 'num' }, num(k.calls)),
    h('td', { class: 'num' }, num(k.refusals)),
    h('td', {}, k.benched_for_secs ? `${Math.ceil(k.benched_for_secs)} s` : '—'),
    h('td', {}, orDash(k.reason)))));
}

// ---------------------------------------------------------------------------------------------
// Member: my key

async function loadMe() {
  showError('#me-error', '');
  try {
    const { data } = await api('GET', '/v1/me');
    renderMe(data);
  } catch (e) {
    showError('#me-error', errorText(e));
  }
}

function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

function renderMe(me) {
  const l = me.limits || {};
  const team = me.team;
  $('#me-limits').replaceChildren(facts([
    ['Key', h('code', {}, me.id)],
    ['Name', orDash(me.name)],
    ['Team', team ? `${team.name || team.id}` : '—'],
    ['Models', me.models && me.models.length ? me.models.join(', ') : 'all'],
    ['Requests per minute', num(l.requests_per_minute)],
    ['Images per minute', num(l.images_per_minute)],
    ['Max concurrent', num(l.max_concurrent)],
    ['Expires', orDash(me.expires_at)],
    ['Webhook', orDash(me.webhook_url)],
    ...(team ? [['Team limits', limitsText(team.limits || {})]] : []),
  ]));
  const b = me.budget || {};
  const blocks = [spendBlock(me.id, 'This key', me.spend, b.monthly_usd, b.total_usd)];
  if (team) {
    const tb = team.budget || {};
    blocks.push(spendBlock(team.id, `Team: ${team.name || team.id}`, team.spend, tb.monthly_usd, tb.total_usd));
  }
  $('#me-budget').replaceChildren(...blocks);
  renderMeUsage(me.usage || { rows: [] });
}

function renderMeUsage(usage) {
  const rows = [...(usage.rows || [])].sort((a, b) => (a.day < b.day ? 1 : -1));
  if (!rows.length) {
    $('#me-usage').replaceChildren(h('p', { class: 'muted' }, 'No usage yet.'));
    return;
  }
  const table = h('table', {},
    h('thead', {}, h('tr', {}, ['Day', 'Model', 'Requests', 'Images', 'Cost'].map((c) => h('th', { scope: 'col' }, c)))),
    h('tbody', {}, rows.map((r) => h('tr', {}, h('td', {}, r.day), h('td', {}, orDash(r.model)),
      h('td', { class: 'num' }, num(r.requests)), h('td', { class: 'num' }, num(r.images)), h('td', { class: 'num' }, usd(r.cost_usd))))));
  $('#me-usage').replaceChildren(h('p', {}, 'Total: ', h('strong', {}, usd(usage.total_cost_usd))), h('div', { class: 'table-wrap' }, table));
}

// ---------------------------------------------------------------------------------------------
// Member: playground

let modelsLoaded = false;

async function loadPlayground() {
  if (modelsLoaded) return;
  try {
    const { data } = await api('GET', '/v1/models');
    // Text models (the pass-through) are owned by their provider; image ones by imagegate.
    const ids = data.data.filter((m) => m.owned_by === 'imagegate').map((m) => m.id);
    $('#pg-model').replaceChildren(...ids.map((id) => h('option', { value: id }, id)));
    modelsLoaded = true;
    scheduleQuote();
  } catch (e) {
    showError('#pg-error', errorText(e));
  }
}

// Uploaded files are read once into data URLs, when the file inputs change.
const uploads = { images: [], mask: null };

function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

async function onImagesChosen() {
  uploads.images = await Promise.all([...$('#pg-images').files].map(readAsDataUrl));
  scheduleQuote();
}

async function onMaskChosen() {
  const file = $('#pg-mask').files[0];
  uploads.mask = file ? await readAsDataUrl(file) : null;
  scheduleQuote();
}

/**
 * The request the form describes, as {path, body}: an edit (JSON, images as {image_url}) when
 * there are reference images, else a generation. The quote takes the same body.
 */
function playgroundRequest() {
  const urls = $('#pg-image-urls').value.split('\n').map((s) => s.trim()).filter(Boolean);
  const refs = [...uploads.images, ...urls];
  const body = {
    model: $('#pg-model').value,
    prompt: $('#pg-prompt').value,
    n: Number($('#pg-n').value) || 1,
    response_format: 'b64_json',
  };
  if ($('#pg-size').value) body.size = $('#pg-size').value;
  if ($('#pg-quality').value) body.quality = $('#pg-quality').value;
  if (uploads.mask && !refs.length) throw new Error('A mask needs a reference image to edit.');
  if (!refs.length) return { path: '/v1/images/generations', body };
  body.images = refs.map((image_url) => ({ image_url }));
  if (uploads.mask) body.mask = { image_url: uploads.mask };
  return { path: '/v1/images/edits', body };
}

// The quote is refreshed (debounced) on every change; a newer quote aborts the older one.
let quoteTimer = null;
let quoteAbort = null;

function scheduleQuote() {
  clearTimeout(quoteTimer);
  quoteTimer = setTimeout(refreshQuote, 350);
}

async function refreshQuote() {
  const out = $('#pg-quote');
  if (quoteAbort) quoteAbort.abort();
  let req;
  try {
    req = playgroundRequest();
  } catch (e) {
    out.textContent = e.message;
    return;
  }
  if (!req.body.model) return;
  if (!req.body.prompt.trim()) {
    out.textContent = 'Enter a prompt to see the price';
    return;
  }
  quoteAbort = new AbortController();
  out.textContent = 'Pricing…';
  try {
    const { data } = await api('POST', '/v1/images/quote', req.body, { signal: quoteAbort.signal });
    out.textContent = `${usd(data.cost_usd)} · ${data.served_model || data.model}`;
    if (data.fallbacks && data.fallbacks.length) {
      out.title = `If it fails over: ${data.fallbacks.map((f) => `${f.model} ${usd(f.cost_usd)}`).join(', ')}`;
    } else {
      out.removeAttribute('title');
    }
  } catch (e) {
    if (e.name === 'AbortError') return;
    out.textContent = `No price: ${errorText(e)}`;
  }
}

// One job at a time; the poll timer and clock are cleared when it ends or on sign-out.
let pollTimer = null;
let clockTimer = null;

function stopPolling() {
  clearTimeout(pollTimer);
  clearInterval(clockTimer);
  pollTimer = null;
  clockTimer = null;
}

async function submitPlayground(event) {
  event.preventDefault();
  showError('#pg-error', '');
  let req;
  try {
    req = playgroundRequest();
  } catch (e) {
    showError('#pg-error', e.message);
    return;
  }
  if (!req.body.prompt.trim()) {
    showError('#pg-error', 'Enter a prompt.');
    $('#pg-prompt').focus();
    return;
  }
  stopPolling();
  const started = performance.now();
  const elapsed = () => (performance.now() - started) / 1000;
  const useAsync = $('#pg-async').checked;
  $('#pg-submit').disabled = true;
  $('#pg-results').replaceChildren();
  for (const id of ['#pg-cost', '#pg-served', '#pg-time']) $(id).textContent = '—';
  setStatus('#pg-status', 'Sending…');
  clockTimer = setInterval(() => {
    if (!useAsync) setStatus('#pg-status', `Waiting for the images… ${Math.floor(elapsed())} s`);
  }, 1000);
  try {
    const headers = useAsync ? { Prefer: 'respond-async' } : {};
    const res = await api('POST', req.path, req.body, { headers });
    if (res.status === 202) {
      await pollJob(res.data, elapsed);
    } else {
      showResult(res.data, res.headers.get('x-imagegate-cost-usd'), res.headers.get('x-imagegate-upstream'), elapsed());
    }
  } catch (e) {
    setStatus('#pg-status', `Failed after ${elapsed().toFixed(1)} s`);
    showError('#pg-error', errorText(e));
  } finally {
    stopPolling();
    $('#pg-submit').disabled = false;
  }
}

/** Polls GET /v1/images/jobs/{id} every second until the job is finished. */
function pollJob(job, elapsed) {
  return new Promise((resolve, reject) => {
    const show = (j) => setStatus('#pg-status', `Job ${j.id}: ${j.status.replace('_', ' ')} · ${Math.floor(elapsed())} s`);
    show(job);
    const tick = async () => {
      try {
        const res = await api('GET', `/v1/images/jobs/${encodeURIComponent(job.id)}`);
        const j = res.data;
        show(j);
        if (j.status === 'completed' && j.result) {
          const served = res.headers.get('x-imagegate-upstream') || j.served_model || j.upstream_model || j.model;
          showResult(j.result, j.cost_usd ?? res.headers.get('x-imagegate-cost-usd'), served, elapsed());
          resolve();
        } else if (['failed', 'unknown', 'completed', 'cancelled', 'expired'].includes(j.status)) {
          const err = j.error || {};
          reject(new ApiError(200, err.code || `job_${j.status}`, err.message || `The job ended as ${j.status}.`));
        } else {
          pollTimer = setTimeout(tick, 1000);
        }
      } catch (e) {
        reject(e);
      }
    };
    pollTimer = setTimeout(tick, 1000);
  });
}

/** Shows an images answer ({data: [{b64_json}|{url}]}), its cost, serving model and time. */
function showResult(result, cost, served, secs) {
  const items = (result && result.data) || [];
  const mime = { jpeg: 'image/jpeg', jpg: 'image/jpeg', webp: 'image/webp' }[(result || {}).output_format] || 'image/png';
  $('#pg-results').replaceChildren(...items.map((d, i) => {
    const src = d.b64_json ? `data:${mime};base64,${d.b64_json}` : d.url;
    const img = h('img', { src, alt: `Generated image ${i + 1} for: ${$('#pg-prompt').value.slice(0, 120)}` });
    const save = h('a', { href: src, download: `imagegate-${i + 1}.${mime.split('/')[1]}`, class: 'small' }, 'Download');
    return h('figure', {}, img, h('figcaption', {}, d.revised_prompt ? `${d.revised_prompt} · ` : '', save));
  }));
  $('#pg-cost').textContent = cost != null ? usd(cost) : '—';
  $('#pg-served').textContent = served || '—';
  $('#pg-time').textContent = `${secs.toFixed(1)} s`;
  setStatus('#pg-status', `Done: ${items.length} image${items.length === 1 ? '' : 's'} in ${secs.toFixed(1)} s`);
}

// ---------------------------------------------------------------------------------------------
// Wiring

const LOADERS = {
  keys: loadKeys, teams: loadTeams, spend: loadSpend, usage: loadUsage, models: loadModels,
  playground: loadPlayground, me: loadMe,
};

function buildForms() {
  const keyForm = $('#key-create-form');
  buildFields(keyForm, 'key', KEY_FIELDS);
  keyForm.append(h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'key-create-submit' }, 'Create key')));
  const teamForm = $('#team-create-form');
  buildFields(teamForm, 'team', TEAM_FIELDS);
  $('#team-id').placeholder = 'required, e.g. design';
  teamForm.append(h('div', { class: 'actions' }, h('button', { type: 'submit', id: 'team-create-submit' }, 'Create team')));
  buildFields($('#key-edit-fields'), 'key-edit', KEY_FIELDS.slice(1));
  buildFields($('#team-edit-fields'), 'team-edit', TEAM_FIELDS.slice(1));
  for (const input of document.querySelectorAll('#key-edit-fields input, #team-edit-fields input')) {
    input.placeholder = 'empty: not set';
  }
}

function wire() {
  $('#signin-form').addEventListener('submit', signIn);
  $('#signout').addEventListener('click', signOut);
  $('#key-create-form').addEventListener('submit', createKey);
  $('#key-secret-copy').addEventListener('click', copySecret);
  $('#key-secret-dismiss').addEventListener('click', dismissSecret);
  $('#keys-table').addEventListener('click', onKeyAction);
  $('#key-edit-form').addEventListener('submit', saveKeyEdit);
  $('#key-edit-cancel').addEventListener('click', () => $('#key-edit-dialog').close());
  $('#team-create-form').addEventListener('submit', createTeam);
  $('#teams-table').addEventListener('click', onTeamAction);
  $('#team-edit-form').addEventListener('submit', saveTeamEdit);
  $('#team-edit-cancel').addEventListener('click', () => $('#team-edit-dialog').close());
  $('#usage-form').addEventListener('submit', loadUsage);
  $('#usage-group').addEventListener('change', () => loadUsage());
  $('#usage-csv').addEventListener('click', exportUsageCsv);
  $('#pg-form').addEventListener('submit', submitPlayground);
  for (const id of ['#pg-prompt', '#pg-n', '#pg-image-urls']) $(id).addEventListener('input', scheduleQuote);
  for (const id of ['#pg-model', '#pg-size', '#pg-quality']) $(id).addEventListener('change', scheduleQuote);
  $('#pg-images').addEventListener('change', () => onImagesChosen().catch((e) => showError('#pg-error', e.message)));
  $('#pg-mask').addEventListener('change', () => onMaskChosen().catch((e) => showError('#pg-error', e.message)));
}

async function init() {
  buildForms();
  wire();
  const key = sessionStorage.getItem(KEY_STORAGE);
  if (!key) {
    showView('signin');
    return;
  }
  try {
    start(key, await detectRole(key));
  } catch (e) {
    sessionStorage.removeItem(KEY_STORAGE);
    showView('signin');
    showError('#signin-error', e.message || errorText(e));
  }
}

init();
