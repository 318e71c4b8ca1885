// imagegate console: the admin views — keys, teams, spend, usage, models.

import {
  PALETTE, $, h, svg, showError, setStatus, usd, num, orDash, seconds, lines, limitsParts, budgetParts, spentText, api, errorText, spendBlock,
} from './core.js';


// ---------------------------------------------------------------------------------------------
// Form fields shared by keys and teams. Each entry: DOM id suffix, JSON property, label, kind.
// The create forms use ids `key-<suffix>` / `team-<suffix>`, the edit dialogs `key-edit-<suffix>`.

export const FIELDS = {
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
export const KEY_FIELDS = ['id', 'name', 'team', 'models', 'rpm', 'ipm', 'concurrent', 'monthly-budget',
  'total-budget', 'expires', 'webhook-url'];
export const TEAM_FIELDS = ['id', 'name', 'rpm', 'ipm', 'concurrent', 'monthly-budget', 'total-budget'];

export function fieldInput(prefix, suffix) {
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

export function buildFields(container, prefix, suffixes) {
  container.replaceChildren(...suffixes.map((s) => fieldInput(prefix, s)));
}

/** The form value of one field as JSON: null when empty; throws a readable message when invalid. */
export function fieldValue(prefix, suffix) {
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
export function fieldText(suffix, record) {
  const v = record[FIELDS[suffix].prop];
  if (v === null || v === undefined) return '';
  return Array.isArray(v) ? v.join(', ') : String(v);
}

/** The JSON body of a create form: only the filled fields. */
export function createBody(prefix, suffixes) {
  const body = {};
  for (const s of suffixes) {
    const v = fieldValue(prefix, s);
    if (v !== null) body[FIELDS[s].prop] = v;
  }
  return body;
}

/** The PATCH body of an edit form: the changed fields; an emptied one becomes null (clears it). */
export function patchBody(prefix, suffixes, record) {
  const body = {};
  for (const s of suffixes) {
    if ($(`#${prefix}-${s}`).value.trim() === fieldText(s, record)) continue;
    body[FIELDS[s].prop] = fieldValue(prefix, s);
  }
  return body;
}

export function actionButton(action, label, detail) {
  return h('button', { type: 'button', class: action === 'delete' ? 'small danger' : 'small', dataset: { action }, 'aria-label': `${label} ${detail}` }, label);
}

// ---------------------------------------------------------------------------------------------
// Admin: keys

export let keysById = new Map();

export async function loadKeys() {
  showError('#keys-error', '');
  try {
    const [{ data }] = await Promise.all([api('GET', '/admin/keys'), refreshTeamList()]);
    keysById = new Map(data.keys.map((k) => [k.id, k]));
    renderKeys(data.keys);
  } catch (e) {
    showError('#keys-error', errorText(e));
  }
}

export function renderKeys(keys) {
  const tbody = $('#keys-table tbody');
  if (!keys.length) {
    tbody.replaceChildren(h('tr', {}, h('td', { colspan: '10', class: 'muted' }, 'No keys yet.')));
    return;
  }
  tbody.replaceChildren(...keys.map(keyRow));
}

export function keyRow(k) {
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

export async function createKey(event) {
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
export function showSecret(created) {
  $('#key-secret').textContent = created.secret || '';
  $('#key-secret-copied').hidden = true;
  const hook = created.webhook_secret;
  $('#key-webhook-secret').textContent = hook || '';
  $('#key-webhook-secret-row').hidden = !hook;
  $('#key-secret-panel').hidden = false;
  $('#key-secret-copy').focus();
}

export async function copySecret() {
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

export function selectText(el) {
  const range = document.createRange();
  range.selectNodeContents(el);
  const sel = window.getSelection();
  sel.removeAllRanges();
  sel.addRange(range);
}

export function dismissSecret() {
  $('#key-secret-panel').hidden = true;
  $('#key-secret').textContent = '';
  $('#key-webhook-secret').textContent = '';
}

/** One listener for every row button (rows are re-rendered after each change). */
export async function onKeyAction(event) {
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

export let editingKey = null;

export function openKeyEdit(id) {
  editingKey = keysById.get(id);
  if (!editingKey) return;
  $('#key-edit-title').textContent = `Edit key ${id}`;
  for (const s of KEY_FIELDS.slice(1)) $(`#key-edit-${s}`).value = fieldText(s, editingKey);
  showError('#key-edit-error', '');
  $('#key-edit-dialog').showModal();
  $('#key-edit-name').focus();
}

export async function saveKeyEdit(event) {
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

export let teamsById = new Map();

/** Loads the teams (also feeding the team suggestions of the key forms). */
export async function refreshTeamList() {
  const { data } = await api('GET', '/admin/teams');
  teamsById = new Map(data.teams.map((t) => [t.id, t]));
  $('#team-ids').replaceChildren(...data.teams.map((t) => h('option', { value: t.id }, t.name || t.id)));
  return data.teams;
}

export async function loadTeams() {
  showError('#teams-error', '');
  try {
    renderTeams(await refreshTeamList());
  } catch (e) {
    showError('#teams-error', errorText(e));
  }
}

export function renderTeams(teams) {
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

export async function createTeam(event) {
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

export async function onTeamAction(event) {
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

export let editingTeam = null;

export function openTeamEdit(id) {
  editingTeam = teamsById.get(id);
  if (!editingTeam) return;
  $('#team-edit-title').textContent = `Edit team ${id}`;
  for (const s of TEAM_FIELDS.slice(1)) $(`#team-edit-${s}`).value = fieldText(s, editingTeam);
  showError('#team-edit-error', '');
  $('#team-edit-dialog').showModal();
  $('#team-edit-name').focus();
}

export async function saveTeamEdit(event) {
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

export async function loadSpend() {
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

export function usageQuery(format) {
  const group = $('#usage-group').value;
  const q = new URLSearchParams({ group_by: `day,${group}` });
  if ($('#usage-from').value) q.set('from', $('#usage-from').value);
  if ($('#usage-to').value) q.set('to', $('#usage-to').value);
  if (format) q.set('format', format);
  return `/admin/usage?${q}`;
}

export async function loadUsage(event) {
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

export const seriesLabel = (group, value) => (value ? value : group === 'team' ? '(no team)' : '(none)');

/**
 * Grouped bars: one rect per day and series, height = cost (left axis); a dot per day and series
 * for the images (right axis). Every rect carries data-day/-series/-cost/-images.
 */
export function drawUsageChart(rows, group) {
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
export function drawAxes(chart, { W, H, pad, maxCost, maxImages, y }) {
  for (let k = 0; k <= 4; k++) {
    const gy = y((maxCost * k) / 4, maxCost);
    chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: gy, y2: gy, class: 'grid' }));
    chart.append(svg('text', { x: pad.l - 6, y: gy + 4, 'text-anchor': 'end', class: 'axis-label' }, usdShort((maxCost * k) / 4)));
    chart.append(svg('text', { x: W - pad.r + 6, y: gy + 4, 'text-anchor': 'start', class: 'axis-label' }, String(Math.round((maxImages * k) / 4))));
  }
  chart.append(svg('line', { x1: pad.l, x2: W - pad.r, y1: H - pad.b, y2: H - pad.b, class: 'axis' }));
}

/** A round axis maximum at or above v (1, 2, 2.5, 5 × 10^k). */
export function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = 10 ** Math.floor(Math.log10(v));
  for (const m of [1, 2, 2.5, 5, 10]) if (m * p >= v) return m * p;
  return 10 * p;
}

export function usdShort(v) {
  if (v === 0) return '$0';
  if (v < 0.01) return `$${v.toFixed(4).replace(/0+$/, '')}`;
  if (v < 1) return `$${v.toFixed(3).replace(/0+$/, '').replace(/\.$/, '')}`;
  return `$${v.toFixed(v < 10 ? 2 : 0)}`;
}

export function renderLegend(series, group, colour) {
  $('#usage-legend').replaceChildren(...series.map((s) => {
    const swatch = h('span', { class: 'swatch', 'aria-hidden': 'true' });
    swatch.style.background = colour(s);
    return h('span', { class: 'legend-item' }, swatch, seriesLabel(group, s));
  }));
}

export function renderUsageTable(rows, group) {
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
export async function exportUsageCsv() {
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

export async function loadModels() {
  showError('#models-error', '');
  try {
    const [ups, pool] = await Promise.all([api('GET', '/admin/upstreams'), api('GET', '/admin/upstream-keys')]);
    renderUpstreams(ups.data.data || []);
    renderPool(pool.data.keys || []);
  } catch (e) {
    showError('#models-error', errorText(e));
  }
}

export function renderUpstreams(models) {
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

export function latencyList(entries) {
  const withData = entries.filter((l) => l.samples);
  if (!withData.length) return h('span', { class: 'muted' }, 'no samples yet');
  return h('ul', { class: 'plain' }, withData.map((l) => h('li', {},
    `${l.quality}: ${seconds(l.p50_s)} / ${seconds(l.p90_s)} / ${seconds(l.p99_s)}`,
    h('span', { class: 'muted small' }, ` (${l.samples})`))));
}

/** `price_usd` may be a single amount or a table (quality → amount, or nested): show what is there. */
export function priceText(price) {
  if (price === null || price === undefined) return '—';
  if (typeof price !== 'object') return usd(price);
  return h('ul', { class: 'plain small' }, Object.entries(price).map(([k, v]) =>
    h('li', {}, `${k}: `, typeof v === 'object' && v !== null ? priceText(v) : usd(v))));
}

export function renderPool(keys) {
  $('#upstream-keys-table tbody').replaceChildren(...keys.map((k) => h('tr', { dataset: { upstreamKey: k.id } },
    h('th', { scope: 'row' }, h('code', {}, k.id)),
    h('td', { class: `pool-${k.state}` }, k.state),
    h('td', { class: 'num' }, num(k.weight)),
    h('td', { class: 'num' }, num(k.calls)),
    h('td', { class: 'num' }, num(k.refusals)),
    h('td', {}, k.benched_for_secs ? `${Math.ceil(k.benched_for_secs)} s` : '—'),
    h('td', {}, orDash(k.reason)))));
}
