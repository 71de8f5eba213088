// The CORS page's script. Everything a user or the server wrote is put in
// the page as text (textContent, input values), never as HTML.
'use strict';

const standardMethods = ['GET', 'POST', 'DELETE'];
let etag = null; // the ETag of the rules shown: sent as If-Match on save

const $ = (id) => document.getElementById(id);

// el builds an element; children are elements or strings (as text).
function el(tag, attrs, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === 'text') e.textContent = v;
    else if (k === 'className') e.className = v;
    else e.setAttribute(k, v);
  }
  for (const c of children) e.append(c);
  return e;
}

function setStatus(text, kind) {
  const s = $('status');
  s.textContent = text;
  s.className = kind || '';
}

async function call(path, init) {
  const res = await fetch(path, Object.assign({credentials: 'same-origin', cache: 'no-store'}, init || {}));
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  return {res, body};
}

function methodBox(list, method, checked) {
  const box = el('input', {type: 'checkbox', value: method});
  box.checked = checked;
  list.append(el('label', {className: 'method'}, box, ' ' + method));
}

function addRow(rule) {
  const origin = el('input', {type: 'text', className: 'origin', placeholder: 'https://app.example.com',
    autocomplete: 'off', spellcheck: 'false', 'aria-label': 'Origin'});
  origin.value = rule.origin || '';
  const msg = el('div', {className: 'msg'});
  const list = el('span', {className: 'methods'});
  const methods = rule.methods || [];
  for (const m of standardMethods) methodBox(list, m, methods.includes(m));
  for (const m of methods) if (!standardMethods.includes(m)) methodBox(list, m, true);
  const more = el('input', {type: 'text', className: 'add-method', placeholder: 'PUT', 'aria-label': 'Other method'});
  const addMethod = el('button', {type: 'button', className: 'add-method-button', text: 'Add method'});
  addMethod.onclick = () => {
    const m = more.value.trim().toUpperCase();
    if (!m) return;
    const have = [...list.querySelectorAll('input[type=checkbox]')].find((b) => b.value === m);
    if (have) have.checked = true; else methodBox(list, m, true);
    more.value = '';
  };
  const remove = el('button', {type: 'button', className: 'remove', text: 'Remove'});
  const row = el('tr', {className: 'rule'},
    el('td', {}, origin, msg),
    el('td', {}, list, el('span', {className: 'more'}, more, addMethod)),
    el('td', {}, remove));
  remove.onclick = () => { row.remove(); updateEmpty(); };
  $('rule-rows').append(row);
  updateEmpty();
  return row;
}

function updateEmpty() {
  $('no-rules').hidden = $('rule-rows').children.length > 0;
}

function render(rules) {
  $('rule-rows').replaceChildren();
  for (const r of rules) addRow(r);
  updateEmpty();
}

function collect() {
  return [...$('rule-rows').querySelectorAll('tr.rule')].map((row) => ({
    origin: row.querySelector('input.origin').value.trim(),
    methods: [...row.querySelectorAll('input[type=checkbox]')].filter((b) => b.checked).map((b) => b.value),
  }));
}

function errorText(res, body) {
  return (body && body.error) ? body.error : 'status ' + res.status;
}

// setLoaded enables saving only while the page shows rules it read, with
// their ETag: a save always names the version it replaces, so a page
// that could not load the rules never replaces them with what it shows.
function setLoaded(tag) {
  etag = tag;
  $('save').disabled = !etag;
  $('add-rule').disabled = !etag;
}

async function load() {
  setLoaded(null);
  const {res, body} = await call('rules');
  if (!res.ok || !res.headers.get('ETag')) {
    $('rule-rows').replaceChildren();
    setStatus('Could not load the rules: ' + errorText(res, body) + '. Reload to try again.', 'error');
    return;
  }
  setLoaded(res.headers.get('ETag'));
  $('account').textContent = body.account;
  render(body.rules);
  setStatus('', '');
  await loadHistory();
}

async function save() {
  for (const m of document.querySelectorAll('.msg')) m.textContent = '';
  setStatus('Saving…', '');
  if (!etag) { setStatus('Not saved: the rules are not loaded. Reload to try again.', 'error'); return; }
  const headers = {'Content-Type': 'application/json', 'If-Match': etag};
  const {res, body} = await call('rules', {method: 'PUT', headers, body: JSON.stringify(collect())});
  if (res.ok) {
    setLoaded(res.headers.get('ETag'));
    render(body.rules);
    setStatus('Saved. Preflights from now on follow these rules; a browser may keep using a preflight it ' +
      'cached (up to the site\'s max age, 1 hour by default), and requests that need no preflight (a simple ' +
      'GET or POST) reach the API whatever the rules say: only their responses are hidden from the page.', 'ok');
    await loadHistory();
    return;
  }
  if (res.status === 412) {
    setStatus('Not saved: these rules were changed elsewhere (in another tab, or by another user) since this page ' +
      'loaded them. Nothing was overwritten. Reload to see the current rules, then make your change again.', 'error');
    return;
  }
  if (res.status === 400 && body && body.problems) {
    const rows = $('rule-rows').querySelectorAll('tr.rule');
    const general = [];
    for (const p of body.problems) {
      const row = p.rule > 0 ? rows[p.rule - 1] : null;
      if (row) {
        const m = row.querySelector('.msg');
        m.textContent = (m.textContent ? m.textContent + '\n' : '') + p.message;
      } else {
        general.push(p.message);
      }
    }
    setStatus('Not saved: ' + (general.length ? general.join('\n') : 'see the messages next to the rules.'), 'error');
    return;
  }
  setStatus('Not saved: ' + errorText(res, body), 'error');
}

async function check() {
  const out = $('check-result');
  const q = new URLSearchParams({origin: $('check-origin').value.trim(), method: $('check-method').value.trim()});
  const {res, body} = await call('check?' + q.toString());
  if (!res.ok) { out.className = 'error'; out.textContent = errorText(res, body); return; }
  out.className = body.allowed ? 'ok' : 'error';
  out.textContent = (body.allowed ? 'Allowed: ' : 'Blocked: ') + body.reason;
}

function summary(rules) {
  if (!rules.length) return 'no origin allowed';
  return rules.map((r) => r.origin + ' (' + (r.methods || []).join(', ') + ')').join('; ');
}

async function loadHistory() {
  const list = $('history');
  const {res, body} = await call('history');
  if (!res.ok) { list.replaceChildren(el('li', {text: 'History not available: ' + errorText(res, body)})); return; }
  if (!body.changes.length) { list.replaceChildren(el('li', {text: 'No change yet.'})); return; }
  list.replaceChildren(...body.changes.map((c) => el('li', {className: 'change'},
    el('span', {className: 'when', text: c.time}), ' by ', el('b', {className: 'by', text: c.by}), ': ',
    el('span', {className: 'rules', text: summary(c.rules)}))));
}

$('add-rule').onclick = () => addRow({origin: '', methods: ['GET']}).querySelector('input.origin').focus();
$('save').onclick = save;
$('reload').onclick = load;
$('check').onclick = check;
load();
