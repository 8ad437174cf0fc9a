// The dashboard shell: navigation between pages (the URL hash names the page, so a page can
// be bookmarked and reloaded), the JSON API client, the live refresh, and the operator token.
// What each page shows is in pages.js; the charts are in charts.js.

import { PAGES } from './pages.js';

const REFRESH_MS = 5000;
const TOKEN_KEY = 'recohost.admin_token';

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

// Calls the API; resolves to the parsed JSON body, rejects with an ApiError carrying the
// server's error code and message (or `network` when the server cannot be reached).
export async function api(path, { method = 'GET', body, operator = false } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  const token = operatorToken();
  if (operator && token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
  } catch (error) {
    throw new ApiError(0, 'network', `cannot reach the server (${error.message})`);
  }
  const text = await response.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { /* not JSON: reported below */ }
  if (!response.ok) {
    const error = data && data.error;
    throw new ApiError(response.status, error ? error.code : 'http_' + response.status,
      error ? error.message : `${response.status} ${response.statusText}`);
  }
  return data;
}

// The operator token lives in this tab's session storage only: it is sent with operator
// actions and forgotten when the tab closes.
export function operatorToken() {
  return sessionStorage.getItem(TOKEN_KEY) || '';
}

function setOperatorToken(token) {
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
}

// A DOM element: `h('td', {class: 'num'}, 'text', child, ...)`. Text is always set as text,
// never parsed as HTML.
export function h(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attributes || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith('on')) node.addEventListener(key.slice(2), value);
    else if (key === 'dataset') Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? '' : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    node.appendChild(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

const shell = {
  main: null,
  status: null,
  page: null,
  // What follows the page in the hash (`#explorer/123`: the user to explore).
  argument: null,
  timer: null,
  // Incremented on every navigation, so an answer for a page left meanwhile is dropped.
  generation: 0,
};

function setStatus(text, kind = 'ok') {
  shell.status.textContent = text;
  shell.status.className = 'status ' + kind;
}

async function renderPage(first) {
  const generation = shell.generation;
  const page = shell.page;
  try {
    const content = await page.render({ api, h, operatorToken, first, argument: shell.argument });
    if (generation !== shell.generation) return;
    shell.main.replaceChildren(content);
    shell.main.dataset.loaded = page.id;
    setStatus(page.live ? `Updated ${new Date().toLocaleTimeString()} · refreshes every ${REFRESH_MS / 1000} s` : 'Ready');
  } catch (error) {
    if (generation !== shell.generation) return;
    if (first) {
      shell.main.replaceChildren(h('section', { class: 'page' }, h('p', { class: 'empty' }, `This page could not load: ${error.message}`)));
      shell.main.dataset.loaded = page.id;
    }
    setStatus(`Last refresh failed: ${error.message}`, 'error');
  }
}

function navigate() {
  const [id, ...rest] = (location.hash || '#overview').slice(1).split('/');
  const page = PAGES.find((p) => p.id === id) || PAGES[0];
  shell.generation++;
  shell.page = page;
  shell.argument = rest.length ? decodeURIComponent(rest.join('/')) : null;
  clearInterval(shell.timer);
  document.querySelectorAll('nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === page.id));
  document.title = `${page.title} · recohost`;
  delete shell.main.dataset.loaded;
  shell.main.replaceChildren(h('p', { class: 'loading' }, 'Loading…'));
  renderPage(true);
  if (page.live) shell.timer = setInterval(() => renderPage(false), REFRESH_MS);
}

function tokenControl() {
  const input = h('input', { type: 'password', id: 'admin-token', name: 'token', placeholder: 'operator token', autocomplete: 'off', 'aria-label': 'Operator token' });
  input.value = operatorToken();
  // Kept on every keystroke, so a click on an operator button right after typing uses it.
  input.addEventListener('input', () => setOperatorToken(input.value.trim()));
  input.addEventListener('change', () => setStatus(input.value.trim() ? 'Operator token set for this tab' : 'Operator token cleared'));
  return h('form', { class: 'token', onsubmit: (event) => { event.preventDefault(); input.blur(); } },
    h('label', { for: 'admin-token' }, 'Token '), input);
}

function start() {
  shell.main = document.getElementById('page');
  shell.status = document.getElementById('status');
  const nav = document.getElementById('nav');
  for (const page of PAGES) {
    nav.appendChild(h('a', { href: '#' + page.id, dataset: { page: page.id } }, page.title));
  }
  document.getElementById('token-slot').appendChild(tokenControl());
  window.addEventListener('hashchange', navigate);
  // A page's own events (a button, a form) ask for a fresh render through this event.
  window.addEventListener('recohost:refresh', () => renderPage(false));
  navigate();
}

start();
