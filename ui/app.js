// imagegate console: sign-in, navigation and wiring; the views are in admin.js and member.js.
//
// The page is served under a strict Content-Security-Policy, so no file writes inline styles as
// attributes or inline handlers: listeners are attached here, and the only style set from script
// is element.style.<property> (bar widths, legend swatches).

import {
  KEY_STORAGE, ADMIN_VIEWS, MEMBER_VIEWS, VIEW_LABELS, session, $, h, showError, setStatus, api, errorText,
} from './core.js';
import {
  KEY_FIELDS, TEAM_FIELDS, buildFields, loadKeys, createKey, copySecret, dismissSecret, onKeyAction, saveKeyEdit, loadTeams, createTeam, onTeamAction, saveTeamEdit, loadSpend, loadUsage, exportUsageCsv, loadModels,
} from './admin.js';
import {
  loadMe, loadPlayground, resetPlayground, onImagesChosen, onMaskChosen, scheduleQuote, stopPolling, submitPlayground,
} from './member.js';

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
  resetPlayground();
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
