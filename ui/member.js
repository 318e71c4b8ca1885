// imagegate console: the member views — my key, the playground.

import {
  session, $, h, showError, setStatus, usd, num, orDash, limitsText, ApiError, api, errorText, spendBlock,
} from './core.js';

// ---------------------------------------------------------------------------------------------
// Member: my key

export async function loadMe() {
  showError('#me-error', '');
  try {
    const { data } = await api('GET', '/v1/me');
    renderMe(data);
  } catch (e) {
    showError('#me-error', errorText(e));
  }
}

export function facts(pairs) {
  return h('dl', { class: 'facts' }, pairs.flatMap(([k, v]) => [h('dt', {}, k), h('dd', {}, v)]));
}

export function renderMe(me) {
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

export function renderMeUsage(usage) {
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

/** Forgets the playground's loaded models and chosen files (a new session starts clean). */
export function resetPlayground() {
  modelsLoaded = false;
  uploads.images = [];
  uploads.mask = null;
}

export async function loadPlayground() {
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
export const uploads = { images: [], mask: null };

export function readAsDataUrl(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    reader.onload = () => resolve(reader.result);
    reader.onerror = () => reject(new Error(`Could not read ${file.name}.`));
    reader.readAsDataURL(file);
  });
}

export async function onImagesChosen() {
  uploads.images = await Promise.all([...$('#pg-images').files].map(readAsDataUrl));
  scheduleQuote();
}

export async function onMaskChosen() {
  const file = $('#pg-mask').files[0];
  uploads.mask = file ? await readAsDataUrl(file) : null;
  scheduleQuote();
}

/**
 * The request the form describes, as {path, body}: an edit (JSON, images as {image_url}) when
 * there are reference images, else a generation. The quote takes the same body.
 */
export function playgroundRequest() {
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
export let quoteTimer = null;
export let quoteAbort = null;

export function scheduleQuote() {
  clearTimeout(quoteTimer);
  quoteTimer = setTimeout(refreshQuote, 350);
}

export async function refreshQuote() {
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
export let pollTimer = null;
export let clockTimer = null;

export function stopPolling() {
  clearTimeout(pollTimer);
  clearInterval(clockTimer);
  pollTimer = null;
  clockTimer = null;
}

export async function submitPlayground(event) {
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
export function pollJob(job, elapsed) {
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
export function showResult(result, cost, served, secs) {
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
